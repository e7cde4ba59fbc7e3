// node-addon-api glue: model info, async load (progress, cancellation), sequences, the async
// forward step, typed errors. No C++ exception ever crosses into JS unconverted, and a model
// disposed while a step runs stays alive until that step ends.
#include <fcntl.h>
#include <napi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <memory>
#include <new>

#include "../common/error.h"
#include "../engine/engine.h"
#include "../engine/cpu/cpu_ops.h"
#include "../engine/cuda_plan.h"
#include "../engine/op_bench.h"
#include "../model/export.h"

namespace {

using l2::Engine;

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// Runs fn, converting any C++ exception into a typed JS exception.
template <typename F>
auto guarded(Napi::Env env, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const l2::Error& e) {
    throw make_error(env, e.code, e.what());
  } catch (const std::bad_alloc&) {
    throw make_error(env, l2::code::kOutOfMemory, "out of host memory");
  } catch (const std::exception& e) {
    throw make_error(env, l2::code::kInternal, e.what());
  }
}

// For functions that return a promise: a typed error becomes a rejected promise, not a synchronous throw.
template <typename F>
Napi::Value promise_guarded(Napi::Env env, F&& fn) {
  try {
    return guarded(env, fn);
  } catch (const Napi::Error& e) {
    Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
}

struct Failure {
  std::string code, message;
};

template <typename F>
bool capture(Failure& f, F&& fn) {
  try {
    fn();
    return true;
  } catch (const l2::Error& e) {
    f = {e.code, e.what()};
  } catch (const std::bad_alloc&) {
    f = {l2::code::kOutOfMemory, "out of host memory"};
  } catch (const std::exception& e) {
    f = {l2::code::kInternal, e.what()};
  }
  return false;
}

std::string str_arg(const Napi::Value& v, const char* field) {
  if (!v.IsString()) throw make_error(v.Env(), l2::code::kInvalidArgument, std::string(field) + ": expected a string");
  return v.As<Napi::String>().Utf8Value();
}

int32_t int_arg(const Napi::Value& v, const char* field) {
  if (!v.IsNumber()) throw make_error(v.Env(), l2::code::kInvalidArgument, std::string(field) + ": expected an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  // Range first: casting a double outside int32 (1e10, Infinity, NaN) to int32_t is undefined behaviour
  // (UBSan float-cast-overflow; x86 happens to give INT32_MIN). NaN fails both comparisons.
  if (!(d >= -2147483648.0 && d <= 2147483647.0) || d != (double)(int32_t)d) throw make_error(v.Env(), l2::code::kInvalidArgument, std::string(field) + ": expected an integer, got " + std::to_string(d));
  return (int32_t)d;
}

// [{ path, scale }] -> the adapters to merge (checked in TypeScript too: lib/model-changes.ts).
std::vector<l2::LoraSpec> lora_arg(const Napi::Array& arr) {
  Napi::Env env = arr.Env();
  std::vector<l2::LoraSpec> out;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    if (!arr.Get(i).IsObject()) throw make_error(env, l2::code::kInvalidArgument, "lora[" + std::to_string(i) + "]: expected { path, scale }");
    Napi::Object a = arr.Get(i).As<Napi::Object>();
    l2::LoraSpec spec;
    spec.path = str_arg(a.Get("path"), "lora.path");
    if (a.Has("scale") && !a.Get("scale").IsUndefined()) {
      if (!a.Get("scale").IsNumber()) throw make_error(env, l2::code::kInvalidArgument, "lora[" + std::to_string(i) + "].scale: expected a number");
      const double sc = a.Get("scale").As<Napi::Number>().DoubleValue();
      if (!(std::fabs(sc) <= 1000)) throw make_error(env, l2::code::kInvalidArgument, "lora[" + std::to_string(i) + "].scale: out of range [-1000, 1000]");
      spec.scale = (float)sc;
    }
    out.push_back(spec);
  }
  return out;
}

// { type, factor, originalContextLength } -> the rotary scaling that replaces the file's (checked in TypeScript too).
l2::RopeScalingConfig rope_scaling_arg(const Napi::Object& r) {
  Napi::Env env = r.Env();
  auto num = [&](const char* k, double def) {
    if (!r.Has(k) || r.Get(k).IsUndefined()) return def;
    if (!r.Get(k).IsNumber()) throw make_error(env, l2::code::kInvalidArgument, std::string("ropeScaling.") + k + ": expected a number");
    return r.Get(k).As<Napi::Number>().DoubleValue();
  };
  l2::RopeScalingConfig rs;
  const std::string type = str_arg(r.Get("type"), "ropeScaling.type");
  if (!l2::parse_rope_scaling(type, &rs.type))
    throw make_error(env, l2::code::kInvalidArgument, "ropeScaling.type: expected 'none', 'linear' or 'yarn', got '" + type + "'");
  const double factor = num("factor", 1.0), orig = num("originalContextLength", 0.0);
  if (!(factor > 0 && factor <= 1024)) throw make_error(env, l2::code::kInvalidArgument, "ropeScaling.factor: out of range (0..1024]");
  if (!(orig >= 0 && orig <= (1 << 22) && orig == std::floor(orig)))
    throw make_error(env, l2::code::kInvalidArgument, "ropeScaling.originalContextLength: expected an integer in 0..4194304");
  rs.factor = (float)factor;
  rs.original_ctx = (int)orig;
  return rs;
}

// The options that change the model (lora, ropeScaling), read alike by loadModel and openExport.
template <class Options>
void model_change_args(const Napi::Object& opts, Options& o) {
  if (opts.Has("lora") && opts.Get("lora").IsArray()) o.lora = lora_arg(opts.Get("lora").As<Napi::Array>());
  if (opts.Has("ropeScaling") && opts.Get("ropeScaling").IsObject()) {
    o.rope_override = true;
    o.rope_scaling = rope_scaling_arg(opts.Get("ropeScaling").As<Napi::Object>());
  }
}

// Refuses option keys this addon does not know (a newer library over an older binary must not have an
// option silently ignored: the model would load without what was asked, a LoRA adapter or a rotary scaling).
template <size_t N>
void check_known_keys(const Napi::Object& opts, const char* (&known)[N], const char* what) {
  Napi::Array keys = opts.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string k = keys.Get(i).ToString().Utf8Value();
    if (std::none_of(std::begin(known), std::end(known), [&](const char* n) { return k == n; }))
      throw make_error(opts.Env(), l2::code::kInvalidArgument, std::string(what) + ": option '" + k + "' is not known to this addon (a binary older than the library?)");
  }
}

Napi::Object config_object(Napi::Env env, const l2::ModelConfig& c) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("dim", c.dim);
  o.Set("nLayers", c.n_layers);
  o.Set("nHeads", c.n_heads);
  o.Set("nKvHeads", c.n_kv_heads);
  o.Set("headDim", c.head_dim);
  o.Set("ffnDim", c.ffn_dim);
  o.Set("vocabSize", c.vocab_size);
  o.Set("rmsEps", c.rms_eps);
  o.Set("ropeTheta", c.rope_theta);
  o.Set("trainedContextLength", c.max_seq_len);
  o.Set("ropeLayout", c.rope_layout == l2::RopeLayout::Interleaved ? "interleaved" : "halves");
  o.Set("tiedEmbeddings", c.tied_output);
  const l2::RopeScalingConfig& rs = c.rope_scaling;
  if (rs.type == l2::RopeScaling::None) {
    o.Set("ropeScaling", env.Null());
  } else {
    Napi::Object r = Napi::Object::New(env);
    r.Set("type", l2::rope_scaling_name(rs.type));
    r.Set("factor", rs.factor);
    if (rs.type == l2::RopeScaling::Yarn) {
      r.Set("originalContextLength", c.rope_original_ctx());
      r.Set("betaFast", rs.beta_fast);
      r.Set("betaSlow", rs.beta_slow);
    }
    r.Set("attentionFactor", c.rope_attention_factor());
    o.Set("ropeScaling", r);
  }
  return o;
}

Napi::Object source_object(Napi::Env env, const l2::ModelSource& s, bool with_tensors, bool with_tokenizer = true) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("format", s.format);
  o.Set("path", s.path);
  o.Set("name", s.name);
  o.Set("config", config_object(env, s.config));
  o.Set("fileBytes", (double)s.file_bytes);
  const l2::TensorView* wq = s.find("layers.0.wq");
  o.Set("fileDtype", wq ? l2::dtype_name(wq->dtype) : "?");
  // The matrices' types (what planCudaMemory needs for files that mix them, Q4_K_M): the embedding, the
  // classifier (the embedding's when tied), then per layer wq wk wv wo w1 w2 w3.
  {
    const l2::TensorView* emb = s.find("tok_embeddings");
    const l2::TensorView* out = s.config.tied_output ? emb : s.find("output");
    Napi::Array a = Napi::Array::New(env);
    uint32_t n = 0;
    bool all = emb && out;
    if (all) {
      a.Set(n++, l2::dtype_name(emb->dtype));
      a.Set(n++, l2::dtype_name(out->dtype));
    }
    for (int l = 0; all && l < s.config.n_layers; ++l)
      for (const char* m : {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}) {
        const l2::TensorView* t = s.find("layers." + std::to_string(l) + "." + m);
        if (!t) {
          all = false;
          break;
        }
        a.Set(n++, l2::dtype_name(t->dtype));
      }
    if (all) o.Set("matrixDtypes", a);
  }
  if (!s.tokenizer_path.empty()) o.Set("tokenizerPath", s.tokenizer_path);
  if (s.tokenizer && with_tokenizer) {
    const l2::TokenizerData& t = *s.tokenizer;
    Napi::Object to = Napi::Object::New(env);
    to.Set("model", t.model);
    Napi::Array toks = Napi::Array::New(env, t.tokens.size());
    for (size_t i = 0; i < t.tokens.size(); ++i) toks.Set((uint32_t)i, Napi::String::New(env, t.tokens[i]));
    to.Set("tokens", toks);
    auto scores = Napi::Float32Array::New(env, t.scores.size());
    std::copy(t.scores.begin(), t.scores.end(), scores.Data());
    to.Set("scores", scores);
    auto types = Napi::Int32Array::New(env, t.types.size());
    std::copy(t.types.begin(), t.types.end(), types.Data());
    to.Set("types", types);
    to.Set("bosId", t.bos_id);
    to.Set("eosId", t.eos_id);
    to.Set("unkId", t.unk_id);
    to.Set("padId", t.pad_id);
    to.Set("addBos", t.add_bos);
    to.Set("addSpacePrefix", t.add_space_prefix);
    if (!t.chat_template.empty()) to.Set("chatTemplate", t.chat_template);
    o.Set("tokenizer", to);
  }
  if (with_tensors) {
    Napi::Array arr = Napi::Array::New(env);
    uint32_t i = 0;
    for (auto& [name, t] : s.tensors) {
      Napi::Object to = Napi::Object::New(env);
      to.Set("name", name);
      to.Set("fileName", t.file_name);
      to.Set("dtype", l2::dtype_name(t.dtype));
      Napi::Array shape = Napi::Array::New(env, t.shape.size());
      for (size_t d = 0; d < t.shape.size(); ++d) shape.Set((uint32_t)d, (double)t.shape[d]);
      to.Set("shape", shape);
      to.Set("bytes", (double)t.nbytes);
      arr.Set(i++, to);
    }
    o.Set("tensors", arr);
  }
  return o;
}

// ModelInfo.lora: the adapters merged, in order.
Napi::Array lora_info_array(Napi::Env env, const std::vector<l2::LoraInfo>& infos) {
  Napi::Array adapters = Napi::Array::New(env, infos.size());
  for (size_t i = 0; i < infos.size(); ++i) {
    const l2::LoraInfo& l = infos[i];
    Napi::Object a = Napi::Object::New(env);
    a.Set("path", l.path);
    a.Set("rank", l.rank);
    a.Set("alpha", l.alpha);
    a.Set("scale", l.scale);
    Napi::Array mods = Napi::Array::New(env, l.modules.size());
    for (size_t k = 0; k < l.modules.size(); ++k) mods.Set((uint32_t)k, l.modules[k]);
    a.Set("modules", mods);
    a.Set("matrices", l.matrices);
    adapters.Set((uint32_t)i, a);
  }
  return adapters;
}

// readModelInfo(path, withTensors?) -> { format, path, name, config, fileBytes, tokenizer?, tokenizerPath?, tensors? }
Napi::Value ReadModelInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string path = str_arg(info[0], "path");
    bool with_tensors = info.Length() > 1 && info[1].ToBoolean();
    auto src = l2::open_model(path);
    if (src->config.dim > 0) src->config.validate(path);
    return source_object(env, *src, with_tensors);
  });
}

// ---- the model object ----

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::FunctionReference ctor;
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("info", &NativeModel::Info), InstanceMethod("createSequence", &NativeModel::CreateSequence),
                        InstanceMethod("freeSequence", &NativeModel::FreeSequence), InstanceMethod("forkSequence", &NativeModel::ForkSequence),
                        InstanceMethod("truncateSequence", &NativeModel::TruncateSequence),
                        InstanceMethod("sequenceLength", &NativeModel::SequenceLength), InstanceMethod("kvState", &NativeModel::KvState),
                        InstanceMethod("beginRestore", &NativeModel::BeginRestore),
                        InstanceMethod("finishRestore", &NativeModel::FinishRestore),
                        InstanceMethod("readSequenceBlocks", &NativeModel::ReadSequenceBlocks),
                        InstanceMethod("writeSequenceBlocks", &NativeModel::WriteSequenceBlocks),
                        InstanceMethod("forward", &NativeModel::Forward), InstanceMethod("dispose", &NativeModel::Dispose)});
  }
  NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}
  std::shared_ptr<Engine> engine;

 private:
  Engine& live(Napi::Env env) {
    if (!engine) throw make_error(env, l2::code::kDisposed, "the model has been disposed");
    return *engine;
  }
  Napi::Value Info(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    return guarded(env, [&]() -> Napi::Value {
      Engine& e = live(env);
      // The vocabulary (tens of thousands of strings) only when asked: info() is also polled.
      const bool with_tokenizer = info.Length() > 0 && info[0].ToBoolean();
      Napi::Object o = source_object(env, e.source(), false, with_tokenizer);
      l2::BackendInfo b = e.backend_info();
      o.Set("device", b.device);
      o.Set("deviceName", b.name);
      o.Set("dtype", b.dtype);
      o.Set("kvCacheType", b.kv_dtype);
      o.Set("weightBytes", (double)b.weight_bytes);
      o.Set("kvCacheBytes", (double)b.kv_bytes);
      o.Set("deviceMemoryUsed", (double)b.device_memory_used);
      o.Set("deviceMemoryTotal", (double)b.device_memory_total);
      o.Set("contextLength", e.context_length());
      o.Set("maxSequences", e.max_sequences());
      o.Set("maxStepSequences", e.max_step_sequences());
      o.Set("kvBlockSize", l2::kKvBlockSize);
      o.Set("kvBlocks", e.total_blocks());
      o.Set("kvBlockBytes", (double)e.kv_block_bytes());
      o.Set("lora", lora_info_array(env, e.lora()));
      return o;
    });
  }
  Napi::Value CreateSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), live(info.Env()).create_sequence()); });
  }
  Napi::Value FreeSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      live(info.Env()).free_sequence(int_arg(info[0], "seq"));
      return info.Env().Undefined();
    });
  }
  Napi::Value ForkSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), live(info.Env()).fork_sequence(int_arg(info[0], "seq"))); });
  }
  Napi::Value TruncateSequence(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      live(info.Env()).truncate_sequence(int_arg(info[0], "seq"), int_arg(info[1], "length"));
      return info.Env().Undefined();
    });
  }
  Napi::Value SequenceLength(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), live(info.Env()).sequence_length(int_arg(info[0], "seq"))); });
  }
  Napi::Value KvState(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      Engine& e = live(info.Env());
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("freeBlocks", e.free_blocks());
      o.Set("totalBlocks", e.total_blocks());
      o.Set("blockSize", l2::kKvBlockSize);
      return o;
    });
  }
  Napi::Value BeginRestore(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      live(info.Env()).begin_restore(int_arg(info[0], "seq"), int_arg(info[1], "length"));
      return info.Env().Undefined();
    });
  }
  Napi::Value FinishRestore(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      live(info.Env()).finish_restore(int_arg(info[0], "seq"));
      return info.Env().Undefined();
    });
  }
  // (seq, first, count, Uint8Array) -> Promise<void>: blocks of a sequence to / from the buffer (saved sessions).
  Napi::Value ReadSequenceBlocks(const Napi::CallbackInfo& info) { return MoveBlocks(info, true); }
  Napi::Value WriteSequenceBlocks(const Napi::CallbackInfo& info) { return MoveBlocks(info, false); }
  Napi::Value MoveBlocks(const Napi::CallbackInfo& info, bool read);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    engine.reset();  // a running step keeps its own reference
    return info.Env().Undefined();
  }
};
Napi::FunctionReference NativeModel::ctor;

class ForwardWorker : public Napi::AsyncWorker {
 public:
  ForwardWorker(Napi::Env env, std::shared_ptr<Engine> e, std::vector<l2::SeqRequest> reqs)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), engine_(std::move(e)), reqs_(std::move(reqs)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    if (!capture(failure_, [&] { out_ = engine_->forward(reqs_); })) SetError(failure_.message);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Array arr = Napi::Array::New(env, out_.size());
    for (size_t i = 0; i < out_.size(); ++i) {
      const l2::SeqOutput& o = out_[i];
      if (reqs_[i].output == -3) {
        auto f = Napi::Float32Array::New(env, o.hidden.size());
        std::copy(o.hidden.begin(), o.hidden.end(), f.Data());
        arr.Set((uint32_t)i, f);
      } else if (reqs_[i].output < 0) {
        auto f = Napi::Float32Array::New(env, o.logits.size());
        std::copy(o.logits.begin(), o.logits.end(), f.Data());
        arr.Set((uint32_t)i, f);
      } else if (reqs_[i].output > 0) {
        Napi::Object c = Napi::Object::New(env);
        auto ids = Napi::Int32Array::New(env, o.ids.size());
        std::copy(o.ids.begin(), o.ids.end(), ids.Data());
        auto vals = Napi::Float32Array::New(env, o.vals.size());
        std::copy(o.vals.begin(), o.vals.end(), vals.Data());
        c.Set("ids", ids);
        c.Set("logits", vals);
        arr.Set((uint32_t)i, c);
      } else {
        arr.Set((uint32_t)i, env.Null());
      }
    }
    engine_.reset();
    deferred_.Resolve(arr);
  }
  void OnError(const Napi::Error&) override {
    engine_.reset();
    deferred_.Reject(make_error(Env(), failure_.code, failure_.message).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Engine> engine_;
  std::vector<l2::SeqRequest> reqs_;
  std::vector<l2::SeqOutput> out_;
  Failure failure_;
};

// forward([{ seq, tokens: Int32Array | number[], output: 0 | -1 | -2 | -3 | k, every?: boolean }])
//   -> Promise<(null | Float32Array | {ids, logits})[]>
// (-2: the logits of every token, [tokens][vocab]; -3: the final hidden state, [dim]; every: output -1, -3
// or k for every token, rows in token order)
Napi::Value NativeModel::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    Engine& e = live(env);
    (void)e;
    if (!info[0].IsArray()) throw make_error(env, l2::code::kInvalidArgument, "forward: expected an array of requests");
    Napi::Array arr = info[0].As<Napi::Array>();
    std::vector<l2::SeqRequest> reqs(arr.Length());
    for (uint32_t i = 0; i < arr.Length(); ++i) {
      Napi::Value v = arr.Get(i);
      if (!v.IsObject()) throw make_error(env, l2::code::kInvalidArgument, "forward: request " + std::to_string(i) + " is not an object");
      Napi::Object r = v.As<Napi::Object>();
      reqs[i].seq = int_arg(r.Get("seq"), "seq");
      reqs[i].output = r.Has("output") ? int_arg(r.Get("output"), "output") : 0;
      if (r.Has("every")) {
        Napi::Value ev = r.Get("every");
        if (!ev.IsBoolean() && !ev.IsUndefined()) throw make_error(env, l2::code::kInvalidArgument, "forward: every must be a boolean");
        reqs[i].every = ev.IsBoolean() && ev.As<Napi::Boolean>().Value();
      }
      Napi::Value toks = r.Get("tokens");
      if (toks.IsTypedArray() && toks.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
        Napi::Int32Array ta = toks.As<Napi::Int32Array>();
        reqs[i].tokens.assign(ta.Data(), ta.Data() + ta.ElementLength());
      } else if (toks.IsArray()) {
        Napi::Array ta = toks.As<Napi::Array>();
        reqs[i].tokens.resize(ta.Length());
        for (uint32_t j = 0; j < ta.Length(); ++j) reqs[i].tokens[j] = int_arg(ta.Get(j), "tokens[]");
      } else {
        throw make_error(env, l2::code::kInvalidArgument, "forward: tokens must be an Int32Array or an array of integers");
      }
    }
    auto* w = new ForwardWorker(env, engine, std::move(reqs));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// ---- loading ----

struct ProgressMsg {
  std::string phase;
  double bytes, total;
  int tensors, total_tensors;
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, std::string path, l2::EngineOptions o, Napi::Function progress, Napi::Int32Array cancel)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), path_(std::move(path)), opts_(std::move(o)) {
    if (!progress.IsEmpty()) {
      tsfn_ = Napi::ThreadSafeFunction::New(env, progress, "llama2-load-progress", 0, 1);
      has_tsfn_ = true;
    }
    if (!cancel.IsEmpty() && cancel.ElementLength() >= 1) {
      cancel_ref_ = Napi::Persistent(cancel);
      cancel_flag_ = cancel.Data();
    }
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    auto progress = [this](const l2::LoadProgress& p) {
      if (cancel_flag_ && __atomic_load_n(cancel_flag_, __ATOMIC_RELAXED)) l2::fail("ERR_ABORTED", "loading was aborted");
      if (!has_tsfn_) return;
      auto* m = new ProgressMsg{p.phase, (double)p.bytes, (double)p.total_bytes, p.tensors, p.total_tensors};
      napi_status st = tsfn_.NonBlockingCall(m, [](Napi::Env env, Napi::Function fn, ProgressMsg* msg) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("phase", msg->phase);
        o.Set("bytes", msg->bytes);
        o.Set("totalBytes", msg->total);
        o.Set("tensors", msg->tensors);
        o.Set("totalTensors", msg->total_tensors);
        delete msg;
        fn.Call({o});  // an exception in the callback is reported by Node, not fatal here
      });
      if (st != napi_ok) delete m;
    };
    if (!capture(failure_, [&] { engine_ = Engine::load(path_, opts_, progress); })) SetError(failure_.message);
  }
  void OnOK() override {
    finish();
    Napi::Object obj = NativeModel::ctor.New({});
    NativeModel::Unwrap(obj)->engine = std::shared_ptr<Engine>(std::move(engine_));
    deferred_.Resolve(obj);
  }
  void OnError(const Napi::Error&) override {
    finish();
    deferred_.Reject(make_error(Env(), failure_.code, failure_.message).Value());
  }

 private:
  void finish() {
    if (has_tsfn_) tsfn_.Release();
    has_tsfn_ = false;
  }
  Napi::Promise::Deferred deferred_;
  std::string path_;
  l2::EngineOptions opts_;
  Napi::ThreadSafeFunction tsfn_;
  bool has_tsfn_ = false;
  Napi::Reference<Napi::Int32Array> cancel_ref_;
  int32_t* cancel_flag_ = nullptr;
  std::unique_ptr<Engine> engine_;
  Failure failure_;
};

// loadModel(path, { device, deviceIndex, dtype, kvCacheType, contextLength, maxSequences, threads, cpuActivations }, onProgress?,
//           cancelFlag?: Int32Array)
Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string path = str_arg(info[0], "path");
    l2::EngineOptions o;
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Object opts = info[1].As<Napi::Object>();
      static const char* kKnown[] = {"device", "dtype", "kvCacheType", "deviceIndex", "contextLength", "maxSequences",
                                     "threads", "cpuActivations", "lora", "ropeScaling"};
      check_known_keys(opts, kKnown, "loadModel");
      auto get = [&](const char* k) { return opts.Has(k) ? opts.Get(k) : env.Undefined(); };
      if (!get("device").IsUndefined()) o.device = str_arg(get("device"), "device");
      if (!get("dtype").IsUndefined()) o.dtype = str_arg(get("dtype"), "dtype");
      if (!get("kvCacheType").IsUndefined()) o.kv_cache_type = str_arg(get("kvCacheType"), "kvCacheType");
      if (!get("deviceIndex").IsUndefined()) o.device_index = int_arg(get("deviceIndex"), "deviceIndex");
      if (!get("contextLength").IsUndefined()) o.context_length = int_arg(get("contextLength"), "contextLength");
      if (!get("maxSequences").IsUndefined()) o.max_sequences = int_arg(get("maxSequences"), "maxSequences");
      if (!get("threads").IsUndefined()) o.threads = int_arg(get("threads"), "threads");
      if (!get("cpuActivations").IsUndefined()) o.cpu_activations = str_arg(get("cpuActivations"), "cpuActivations");
      model_change_args(opts, o);
    }
    Napi::Function progress;
    if (info.Length() > 2 && info[2].IsFunction()) progress = info[2].As<Napi::Function>();
    Napi::Int32Array cancel;
    if (info.Length() > 3 && info[3].IsTypedArray() && info[3].As<Napi::TypedArray>().TypedArrayType() == napi_int32_array)
      cancel = info[3].As<Napi::Int32Array>();
    auto* w = new LoadWorker(env, path, o, progress, cancel);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// Runs `work` on the libuv pool and settles a promise: `done(env)`'s value, or the typed error `work` threw.
class TaskWorker : public Napi::AsyncWorker {
 public:
  TaskWorker(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)), done_(std::move(done)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    if (!capture(failure_, work_)) SetError(failure_.message);
  }
  void OnOK() override {
    Napi::Value v;
    if (!capture(failure_, [&] { v = done_(Env()); })) return deferred_.Reject(make_error(Env(), failure_.code, failure_.message).Value());
    deferred_.Resolve(v);
  }
  void OnError(const Napi::Error&) override { deferred_.Reject(make_error(Env(), failure_.code, failure_.message).Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
  Failure failure_;
};

Napi::Value NativeModel::MoveBlocks(const Napi::CallbackInfo& info, bool read) {
  return promise_guarded(info.Env(), [&]() -> Napi::Value {
    live(info.Env());
    std::shared_ptr<Engine> e = engine;
    const int32_t seq = int_arg(info[0], "seq"), first = int_arg(info[1], "first"), count = int_arg(info[2], "count");
    if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      l2::fail(l2::code::kInvalidArgument, "buffer: expected a Uint8Array");
    Napi::Uint8Array buf = info[3].As<Napi::Uint8Array>();
    if (count < 0 || (double)buf.ByteLength() < (double)count * (double)e->kv_block_bytes())
      l2::fail(l2::code::kInvalidArgument, "buffer: too small for " + std::to_string(count) + " KV blocks");
    auto ref = std::make_shared<Napi::Reference<Napi::Uint8Array>>(Napi::Persistent(buf));  // kept alive while in use
    uint8_t* data = buf.Data();
    auto* w = new TaskWorker(
        info.Env(),
        [e, seq, first, count, data, read] {
          if (read) e->read_sequence_blocks(seq, first, count, data);
          else e->write_sequence_blocks(seq, first, count, data);
        },
        [ref](Napi::Env env) -> Napi::Value { return env.Undefined(); });
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

// openExport(path, { dtype, lora, ropeScaling, threads }) -> Promise<{ info, lora, tensors: [{ name, type, rows, cols,
// rowBytes }], read(index, row0, rows, buffer) -> Promise<void>, close() }>: a model opened to be written as GGUF
// (model/export.h; lib/convert.ts writes the file).
Napi::Value OpenExport(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return promise_guarded(env, [&]() -> Napi::Value {
    const std::string path = str_arg(info[0], "path");
    l2::ExportOptions o;
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Object opts = info[1].As<Napi::Object>();
      static const char* kKnown[] = {"dtype", "lora", "ropeScaling", "threads"};
      check_known_keys(opts, kKnown, "openExport");
      auto get = [&](const char* k) { return opts.Has(k) ? opts.Get(k) : env.Undefined(); };
      if (!get("dtype").IsUndefined()) o.dtype = str_arg(get("dtype"), "dtype");
      if (!get("threads").IsUndefined()) o.threads = int_arg(get("threads"), "threads");
      model_change_args(opts, o);
    }
    auto holder = std::make_shared<std::shared_ptr<l2::ModelExport>>();
    auto* w = new TaskWorker(
        env, [holder, path, o] { *holder = std::shared_ptr<l2::ModelExport>(l2::ModelExport::open(path, o)); },
        [holder](Napi::Env env) -> Napi::Value {
          l2::ModelExport& x = **holder;
          Napi::Object r = Napi::Object::New(env);
          r.Set("info", source_object(env, x.source(), false));
          r.Set("lora", lora_info_array(env, x.lora()));
          Napi::Array ts = Napi::Array::New(env, x.tensors().size());
          for (size_t i = 0; i < x.tensors().size(); ++i) {
            const l2::ExportTensor& t = x.tensors()[i];
            Napi::Object to = Napi::Object::New(env);
            to.Set("name", t.name);
            to.Set("type", l2::dtype_name(t.dtype));
            to.Set("rows", (double)t.rows);
            to.Set("cols", (double)t.cols);
            to.Set("rowBytes", (double)l2::row_bytes(t.dtype, t.cols));
            ts.Set((uint32_t)i, to);
          }
          r.Set("tensors", ts);
          r.Set("read", Napi::Function::New(env, [holder](const Napi::CallbackInfo& ci) -> Napi::Value {
                  return promise_guarded(ci.Env(), [&]() -> Napi::Value {
                    std::shared_ptr<l2::ModelExport> x = *holder;
                    if (!x) l2::fail(l2::code::kDisposed, "this export was closed");
                    const int32_t index = int_arg(ci[0], "index"), row0 = int_arg(ci[1], "row0"), rows = int_arg(ci[2], "rows");
                    if (index < 0 || (size_t)index >= x->tensors().size()) l2::fail(l2::code::kInvalidArgument, "index: out of range");
                    const l2::ExportTensor& t = x->tensors()[(size_t)index];
                    if (!ci[3].IsTypedArray() || ci[3].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
                      l2::fail(l2::code::kInvalidArgument, "buffer: expected a Uint8Array");
                    Napi::Uint8Array buf = ci[3].As<Napi::Uint8Array>();
                    if (rows < 0 || (double)buf.ByteLength() < (double)rows * (double)l2::row_bytes(t.dtype, t.cols))
                      l2::fail(l2::code::kInvalidArgument, "buffer: too small for " + std::to_string(rows) + " rows of " + t.name);
                    auto ref = std::make_shared<Napi::Reference<Napi::Uint8Array>>(Napi::Persistent(buf));  // kept alive while read
                    uint8_t* out = buf.Data();
                    auto* rw = new TaskWorker(
                        ci.Env(), [x, index, row0, rows, out] { x->read((size_t)index, row0, rows, out); },
                        [ref](Napi::Env env) -> Napi::Value { return env.Undefined(); });
                    Napi::Promise p = rw->promise();
                    rw->Queue();
                    return p;
                  });
                }));
          r.Set("close", Napi::Function::New(env, [holder](const Napi::CallbackInfo& ci) -> Napi::Value {
                  holder->reset();  // a read in flight keeps its own reference
                  return ci.Env().Undefined();
                }));
          return r;
        });
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  });
}

Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    auto devs = l2::cuda_devices();
    Napi::Array arr = Napi::Array::New(env, devs.size());
    for (size_t i = 0; i < devs.size(); ++i) {
      const auto& d = devs[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("index", d.index);
      o.Set("name", d.name);
      o.Set("computeCapability", std::to_string(d.cc_major) + "." + std::to_string(d.cc_minor));
      o.Set("memoryTotal", (double)d.memory_total);
      o.Set("memoryFree", (double)d.memory_free);
      o.Set("smCount", d.sm_count);
      o.Set("driverVersion", d.driver_version);
      o.Set("runtimeVersion", d.runtime_version);
      arr.Set((uint32_t)i, o);
    }
    return arr;
  });
}

// dropPageCache(path): asks the kernel to drop the file's cached pages (for cold-load timing).
// Needs no privileges; pages still mapped by a loaded model stay.
Napi::Value DropPageCache(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    std::string path = str_arg(info[0], "path");
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) l2::fail(l2::code::kFileNotFound, "cannot open " + path);
    int rc = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    return Napi::Boolean::New(env, rc == 0);
  });
}

// cudaCopyBandwidth(deviceIndex, bytes) -> GB/s (read + write), 0 without CUDA.
Napi::Value CudaCopyBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    int dev = int_arg(info[0], "deviceIndex");
    double bytes = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : (double)(1u << 30);
    if (!(bytes >= 1 << 20 && bytes <= 16.0 * (1ull << 30))) l2::fail(l2::code::kInvalidArgument, "bytes: out of range");
    return Napi::Number::New(env, l2::cuda_copy_bandwidth(dev, (size_t)bytes));
  });
}

// createOpBench({op, device, dtype, rows, cols, context, heads, kvHeads, headDim, batch, threads,
// deviceIndex, cpuActivations}) -> {description, bytes, flops, run(iters) -> seconds, dispose()}: one native op at a
// real shape for micro-benchmarks (lib/bench/micro-ops.ts). run() is synchronous: it blocks this thread.
Napi::Value CreateOpBench(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (!info[0].IsObject()) l2::fail(l2::code::kInvalidArgument, "spec: expected an object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto opt_int = [&](const char* key, int def) { return o.Has(key) && !o.Get(key).IsUndefined() ? int_arg(o.Get(key), key) : def; };
    auto opt_str = [&](const char* key, const char* def) { return o.Has(key) && !o.Get(key).IsUndefined() ? str_arg(o.Get(key), key) : std::string(def); };
    l2::OpBenchSpec spec;
    spec.op = opt_str("op", "");
    spec.device = opt_str("device", "cpu");
    spec.dtype = opt_str("dtype", "f16");
    spec.rows = opt_int("rows", 0);
    spec.cols = opt_int("cols", 0);
    spec.context = opt_int("context", 0);
    spec.heads = opt_int("heads", 0);
    spec.kv_heads = opt_int("kvHeads", spec.heads);
    spec.head_dim = opt_int("headDim", 0);
    spec.batch = opt_int("batch", 1);
    spec.threads = opt_int("threads", 0);
    spec.device_index = opt_int("deviceIndex", 0);
    spec.cpu_activations = opt_str("cpuActivations", "f32");
    std::shared_ptr<l2::OpBench> bench = l2::make_op_bench(spec);
    Napi::Object r = Napi::Object::New(env);
    r.Set("description", bench->description);
    r.Set("bytes", (double)bench->bytes);
    r.Set("flops", bench->flops);
    auto holder = std::make_shared<std::shared_ptr<l2::OpBench>>(bench);
    r.Set("run", Napi::Function::New(env, [holder](const Napi::CallbackInfo& ci) -> Napi::Value {
            return guarded(ci.Env(), [&]() -> Napi::Value {
              if (!*holder) l2::fail(l2::code::kDisposed, "this op bench was disposed");
              int iters = ci[0].IsUndefined() ? 1 : int_arg(ci[0], "iters");
              if (iters < 1 || iters > 1000000) l2::fail(l2::code::kInvalidArgument, "iters: expected 1..1000000");
              return Napi::Number::New(ci.Env(), (*holder)->run(iters));
            });
          }));
    // output() -> Float32Array: the last run's result (the CPU matvec's [batch][rows]; empty otherwise), so
    // tests can compare code paths (the scalar against the AVX2 one) on the same inputs.
    r.Set("output", Napi::Function::New(env, [holder](const Napi::CallbackInfo& ci) -> Napi::Value {
            return guarded(ci.Env(), [&]() -> Napi::Value {
              if (!*holder) l2::fail(l2::code::kDisposed, "this op bench was disposed");
              const std::vector<float> out = (*holder)->output();
              Napi::Float32Array a = Napi::Float32Array::New(ci.Env(), out.size());
              if (!out.empty()) std::memcpy(a.Data(), out.data(), out.size() * sizeof(float));
              return a;
            });
          }));
    r.Set("dispose", Napi::Function::New(env, [holder](const Napi::CallbackInfo& ci) -> Napi::Value {
            holder->reset();
            return ci.Env().Undefined();
          }));
    return r;
  });
}

// cudaMemoryPlan(config, { int8Weights, kvCacheType, contextLength, maxSequences }): the CUDA backend's
// device buffers for a model shape (engine/cuda_plan.h), computed without a GPU.
// A CUDA memory plan (CudaPlan or F32Plan) as the JS object planCudaMemory() returns; `buffers` itemizes it.
template <class Plan>
Napi::Object plan_object(Napi::Env env, const Plan& p, int n_blocks, std::initializer_list<std::pair<const char*, uint64_t>> buffers) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("weightBytes", (double)p.weights);
  r.Set("kvCacheBytes", (double)p.kv_cache);
  r.Set("bufferBytes", (double)p.buffers());
  r.Set("totalBytes", (double)p.total());
  r.Set("kvBlocks", n_blocks);
  Napi::Object b = Napi::Object::New(env);
  for (auto& [k, v] : buffers) b.Set(k, (double)v);
  r.Set("buffers", b);
  return r;
}

Napi::Value CudaMemoryPlan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guarded(env, [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject())
      throw make_error(env, l2::code::kInvalidArgument, "cudaMemoryPlan(config, options): expected two objects");
    Napi::Object co = info[0].As<Napi::Object>(), oo = info[1].As<Napi::Object>();
    auto pos_int = [&](Napi::Object o, const char* k, int max) {
      int32_t v = int_arg(o.Has(k) ? o.Get(k) : env.Undefined(), k);
      if (v < 1 || v > max) throw make_error(env, l2::code::kInvalidArgument, std::string(k) + ": " + std::to_string(v) + " is out of range (1.." + std::to_string(max) + ")");
      return v;
    };
    l2::ModelConfig c;
    c.dim = pos_int(co, "dim", 1 << 16);
    c.n_layers = pos_int(co, "nLayers", 1024);
    c.n_heads = pos_int(co, "nHeads", 1024);
    c.n_kv_heads = pos_int(co, "nKvHeads", 1024);
    c.head_dim = pos_int(co, "headDim", 1024);
    c.ffn_dim = pos_int(co, "ffnDim", 1 << 18);
    c.vocab_size = pos_int(co, "vocabSize", 1 << 20);
    c.tied_output = co.Has("tiedEmbeddings") && co.Get("tiedEmbeddings").ToBoolean();
    const int ctx = pos_int(oo, "contextLength", 1 << 20);
    const int seqs = pos_int(oo, "maxSequences", 4096);
    const bool int8 = oo.Has("int8Weights") && oo.Get("int8Weights").ToBoolean();
    const bool q4 = oo.Has("q4Weights") && oo.Get("q4Weights").ToBoolean();
    const std::string kv = oo.Has("kvCacheType") ? str_arg(oo.Get("kvCacheType"), "kvCacheType") : "auto";
    if (kv != "auto" && kv != "int8") throw make_error(env, l2::code::kInvalidArgument, "kvCacheType: expected 'auto' or 'int8', got '" + kv + "'");
    const int n_blocks = seqs * ((ctx + l2::kKvBlockSize - 1) / l2::kKvBlockSize);
    if (oo.Has("f32Weights") && oo.Get("f32Weights").ToBoolean()) {  // the fp32 path (engine/cuda_plan.h F32Plan)
      if (kv == "int8") throw make_error(env, l2::code::kInvalidArgument, "kvCacheType: 'int8' is not available with dtype 'f32' on CUDA");
      l2::F32Plan p = l2::plan_f32(c, ctx, n_blocks);
      return plan_object(env, p, n_blocks,
                         {{"residual", p.x}, {"normed", p.xb}, {"q", p.q}, {"attention", p.att}, {"k", p.k}, {"v", p.v}, {"gate", p.h1}, {"up", p.h3},
                          {"outputRows", p.xo}, {"logits", p.logits}, {"rope", p.rope}, {"stepInputs", p.inputs}});
    }
    // With the file's matrix types (readModelInfo's matrixDtypes) the backend's own rule decides each matrix's
    // format (4-bit files mix 4-bit and int8); without them every matrix is int8 or fp16 by int8Weights.
    l2::CudaMatrixKinds kinds = l2::cuda_matrix_kinds(c, q4 ? l2::CudaFmt::W4 : int8 ? l2::CudaFmt::W8 : l2::CudaFmt::F16);
    if (oo.Has("matrixDtypes") && !oo.Get("matrixDtypes").IsUndefined()) {
      const Napi::Value mv = oo.Get("matrixDtypes");
      const size_t want = 2 + 7 * (size_t)c.n_layers;
      if (!mv.IsArray() || mv.As<Napi::Array>().Length() != want)
        throw make_error(env, l2::code::kInvalidArgument, "matrixDtypes: expected an array of " + std::to_string(want) + " type names (embedding, classifier, 7 per layer)");
      Napi::Array arr = mv.As<Napi::Array>();
      auto type_at = [&](uint32_t i) {
        const std::string name = str_arg(arr.Get(i), "matrixDtypes");
        for (int t = 0; t <= (int)l2::DType::Q6_K; ++t)
          if (name == l2::dtype_name((l2::DType)t)) return (l2::DType)t;
        throw make_error(env, l2::code::kInvalidArgument, "matrixDtypes[" + std::to_string(i) + "]: unknown type '" + name + "'");
      };
      l2::FileMatrixTypes ft;
      ft.emb = type_at(0);
      ft.out = type_at(1);
      for (int l = 0; l < c.n_layers; ++l) {
        std::array<l2::DType, 7> m{};
        for (int j = 0; j < 7; ++j) m[(size_t)j] = type_at((uint32_t)(2 + 7 * l + j));
        ft.layers.push_back(m);
      }
      const std::string dt = oo.Has("dtype") ? str_arg(oo.Get("dtype"), "dtype") : "auto";
      if (dt != "auto" && dt != "f16" && dt != "int8" && dt != "q4")
        throw make_error(env, l2::code::kInvalidArgument, "dtype: expected 'auto', 'f16', 'int8' or 'q4', got '" + dt + "'");
      kinds = l2::cuda_matrix_kinds(c, ft, dt);
    }
    l2::CudaPlan p = l2::plan_cuda(c, kinds, kv == "int8", ctx, n_blocks);
    return plan_object(env, p, n_blocks,
                       {{"residual", p.x}, {"normed", p.xn}, {"q", p.q}, {"attention", p.att}, {"ffn", p.h}, {"kvStage", p.stage}, {"outputRows", p.xo},
                        {"logits", p.logits}, {"topK", p.topk}, {"decodeWorkspace", p.attn_ws}, {"gemmSplitK", p.gemm_ws}, {"rope", p.rope}, {"stepInputs", p.inputs}});
  });
}

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  std::string why;
  bool ok = l2::cuda_available(&why);
#ifdef LLAMA2_WITH_CUDA
  o.Set("cudaBuilt", true);
  o.Set("cudaArchitectures", LLAMA2_CUDA_ARCHS);
#else
  o.Set("cudaBuilt", false);
#endif
  o.Set("cudaAvailable", ok);
  if (!ok) o.Set("cudaUnavailableReason", why);
  o.Set("cpuSimd", l2::cpu::simd_name());
  const l2::CpuBudget cpu = l2::cpu_budget();
  o.Set("cpuThreads", cpu.threads);
  o.Set("cpuThreadsReason", cpu.describe());
  o.Set("kvBlockSize", l2::kKvBlockSize);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Function model = NativeModel::Init(env);
  NativeModel::ctor = Napi::Persistent(model);
  NativeModel::ctor.SuppressDestruct();
  exports.Set("NativeModel", model);
  exports.Set("readModelInfo", Napi::Function::New(env, ReadModelInfo));
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("openExport", Napi::Function::New(env, OpenExport));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
  exports.Set("buildInfo", Napi::Function::New(env, BuildInfo));
  exports.Set("dropPageCache", Napi::Function::New(env, DropPageCache));
  exports.Set("cudaCopyBandwidth", Napi::Function::New(env, CudaCopyBandwidth));
  exports.Set("createOpBench", Napi::Function::New(env, CreateOpBench));
  exports.Set("cudaMemoryPlan", Napi::Function::New(env, CudaMemoryPlan));
  return exports;
}

}  // namespace

NODE_API_MODULE(llama2_native, Init)
