// ggml as an oracle for our GGUF block decoders: quantizes floats and decodes blocks with ggml's own
// code, loaded at run time from a libggml-base.so (e.g. the one in the npm package
// @node-llama-cpp/linux-x64). Used by make-fixture.mjs; not part of the build or the tests.
//
//   oracle LIB quant TYPE COLS ROWS   < f32 rows  > blocks
//   oracle LIB dequant TYPE COLS ROWS < blocks    > f32 rows
//   oracle LIB info TYPE                          > "name block_elements block_bytes"
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*to_float_t)(const void* x, float* y, int64_t k);
// ggml.h's struct ggml_type_traits (ggml 0.5): checked below against the known block sizes.
struct traits {
  const char* type_name;
  int64_t blck_size;
  int64_t blck_size_interleave;
  size_t type_size;
  bool is_quantized;
  to_float_t to_float;
  void* from_float_ref;
};
typedef const struct traits* (*get_traits_t)(int type);
typedef size_t (*quantize_chunk_t)(int type, const float* src, void* dst, int64_t start, int64_t nrows, int64_t n_per_row, const float* imatrix);
typedef void (*quantize_init_t)(int type);

static void* read_all(size_t n) {
  char* p = malloc(n ? n : 1);
  if (fread(p, 1, n, stdin) != n) { fprintf(stderr, "short input\n"); exit(2); }
  return p;
}

int main(int argc, char** argv) {
  if (argc < 4) { fprintf(stderr, "usage: oracle LIB quant|dequant|info TYPE [COLS ROWS]\n"); return 2; }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 2; }
  get_traits_t get_traits = (get_traits_t)dlsym(lib, "ggml_get_type_traits");
  quantize_chunk_t quantize_chunk = (quantize_chunk_t)dlsym(lib, "ggml_quantize_chunk");
  quantize_init_t quantize_init = (quantize_init_t)dlsym(lib, "ggml_quantize_init");
  if (!get_traits || !quantize_chunk || !quantize_init) { fprintf(stderr, "missing ggml symbols\n"); return 2; }
  int type = atoi(argv[3]);
  const struct traits* t = get_traits(type);
  if (argv[2][0] == 'i') {
    printf("%s %lld %zu\n", t->type_name, (long long)t->blck_size, t->type_size);
    return 0;
  }
  if (argc < 6) return 2;
  int64_t cols = atoll(argv[4]), rows = atoll(argv[5]);
  size_t row_bytes = (size_t)(cols / t->blck_size) * t->type_size;
  if (argv[2][0] == 'q') {
    float* src = read_all((size_t)(cols * rows) * 4);
    void* dst = malloc(row_bytes * rows);
    quantize_init(type);
    size_t n = quantize_chunk(type, src, dst, 0, rows, cols, NULL);
    if (n != row_bytes * rows) { fprintf(stderr, "quantize wrote %zu, expected %zu\n", n, row_bytes * rows); return 2; }
    fwrite(dst, 1, n, stdout);
  } else {
    uint8_t* src = read_all(row_bytes * rows);
    float* dst = malloc((size_t)(cols * rows) * 4);
    for (int64_t r = 0; r < rows; ++r) t->to_float(src + row_bytes * r, dst + cols * r, cols);
    fwrite(dst, 4, (size_t)(cols * rows), stdout);
  }
  return 0;
}
