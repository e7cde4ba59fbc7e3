// llama.cpp as an oracle: the last-position logits of a token-id prompt, as raw f32 on stdout (for
// compare-llama-cpp.mjs; built against a llama.cpp checkout, see README.md here).
//   llama-logits MODEL.gguf id,id,id...
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>
#include "llama.h"

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  std::vector<llama_token> ids;
  for (char* p = argv[2]; *p;) { ids.push_back((llama_token)strtol(p, &p, 10)); if (*p == ',') ++p; }
  llama_backend_init();
  llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) { fprintf(stderr, "load failed\n"); return 1; }
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512;
  cp.n_batch = 512;
  cp.n_threads = 2;
  cp.n_threads_batch = 2;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) { fprintf(stderr, "context failed\n"); return 1; }
  llama_batch b = llama_batch_get_one(ids.data(), (int32_t)ids.size());
  if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
  const int n = llama_vocab_n_tokens(llama_model_get_vocab(model));
  const float* lg = llama_get_logits_ith(ctx, -1);
  fwrite(lg, 4, (size_t)n, stdout);
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}
