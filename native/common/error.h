// Typed errors. Every failure caused by user input (files, options, requests) is an l2::Error with a
// stable code; the addon turns it into a JS Error with `.code`. Native code never aborts on user input.
#pragma once
#include <stdexcept>
#include <string>

namespace l2 {

struct Error : std::runtime_error {
  std::string code;
  Error(std::string c, const std::string& msg) : std::runtime_error(msg), code(std::move(c)) {}
};

[[noreturn]] inline void fail(const char* code, const std::string& msg) { throw Error(code, msg); }

// Stable codes shared with lib/errors.ts.
namespace code {
inline constexpr const char* kFileNotFound = "ERR_FILE_NOT_FOUND";
inline constexpr const char* kFileRead = "ERR_FILE_READ";
inline constexpr const char* kFormatUnsupported = "ERR_FORMAT_UNSUPPORTED";
inline constexpr const char* kFormatCorrupt = "ERR_MODEL_CORRUPT";
inline constexpr const char* kTensorMissing = "ERR_TENSOR_MISSING";
inline constexpr const char* kTensorShape = "ERR_TENSOR_SHAPE";
inline constexpr const char* kTensorDtype = "ERR_TENSOR_DTYPE";
inline constexpr const char* kConfig = "ERR_MODEL_CONFIG";
inline constexpr const char* kInvalidArgument = "ERR_INVALID_ARGUMENT";
inline constexpr const char* kContextOverflow = "ERR_CONTEXT_OVERFLOW";
inline constexpr const char* kKvCacheFull = "ERR_KV_CACHE_FULL";
inline constexpr const char* kOutOfMemory = "ERR_OUT_OF_MEMORY";
inline constexpr const char* kDeviceUnavailable = "ERR_DEVICE_UNAVAILABLE";
inline constexpr const char* kDriver = "ERR_CUDA_DRIVER";
inline constexpr const char* kCuda = "ERR_CUDA";
inline constexpr const char* kDisposed = "ERR_DISPOSED";
inline constexpr const char* kUnknownSequence = "ERR_UNKNOWN_SEQUENCE";
inline constexpr const char* kInternal = "ERR_INTERNAL";
}  // namespace code

}  // namespace l2
