#include "common.h"

#include <uv.h>

#include <cmath>
#include <cstring>
#include <string>

namespace virtq {

namespace {

constexpr int64_t kMaxSafeInteger = (int64_t{1} << 53) - 1;

std::string Ordinal(size_t i) { return "argument " + std::to_string(i + 1); }

}  // namespace

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const char* path) {
  char name[64];
  char description[256];
  // libuv's error numbers are the negated errno values on Unix; its tables give the names
  // ("EAGAIN") and texts that Node's own errors use.
  uv_err_name_r(-err, name, sizeof name);
  uv_strerror_r(-err, description, sizeof description);
  std::string message = std::string(name) + ": " + description + ", " + syscall;
  if (path != nullptr) message += std::string(" '") + path + "'";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("code", Napi::String::New(env, name));
  error.Set("syscall", Napi::String::New(env, syscall));
  if (path != nullptr) error.Set("path", Napi::String::New(env, path));
  return error;
}

Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* path) {
  ErrnoError(env, err, syscall, path).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min,
                int64_t max, int64_t* out) {
  Napi::Env env = info.Env();
  if (!info[i].IsNumber()) {
    Napi::TypeError::New(env, Ordinal(i) + " (" + name + ") must be a number")
        .ThrowAsJavaScriptException();
    return false;
  }
  double value = info[i].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(value) || std::trunc(value) != value || value < -double(kMaxSafeInteger) ||
      value > double(kMaxSafeInteger)) {
    Napi::RangeError::New(env, Ordinal(i) + " (" + name + ") must be a safe integer")
        .ThrowAsJavaScriptException();
    return false;
  }
  int64_t n = static_cast<int64_t>(value);
  if (n < min || n > max) {
    Napi::RangeError::New(env, Ordinal(i) + " (" + name + ") must be in [" + std::to_string(min) +
                                   ", " + std::to_string(max) + "], got " + std::to_string(n))
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = n;
  return true;
}

bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* out) {
  int64_t fd;
  if (!ArgInteger(info, i, "fd", 0, INT32_MAX, &fd)) return false;
  *out = static_cast<int>(fd);
  return true;
}

bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out) {
  Napi::Env env = info.Env();
  if (!info[i].IsString()) {
    Napi::TypeError::New(env, Ordinal(i) + " (" + name + ") must be a string")
        .ThrowAsJavaScriptException();
    return false;
  }
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) {
    Napi::TypeError::New(env, Ordinal(i) + " (" + name + ") must not contain NUL bytes")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = std::move(s);
  return true;
}

bool ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name, uint8_t** data,
              size_t* length) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  if (v.IsTypedArray()) {
    Napi::TypedArray array = v.As<Napi::TypedArray>();
    void* base = nullptr;
    size_t element_count = 0;
    napi_typedarray_type type;
    napi_status status =
        napi_get_typedarray_info(env, array, &type, &element_count, &base, nullptr, nullptr);
    if (status != napi_ok) return false;
    // base already points at the view's first byte.
    *data = static_cast<uint8_t*>(base);
    *length = array.ByteLength();
    return true;
  }
  if (v.IsDataView()) {
    void* base = nullptr;
    size_t byte_length = 0;
    napi_status status =
        napi_get_dataview_info(env, v, &byte_length, &base, nullptr, nullptr);
    if (status != napi_ok) return false;
    *data = static_cast<uint8_t*>(base);
    *length = byte_length;
    return true;
  }
  Napi::TypeError::New(env, Ordinal(i) + " (" + name +
                                ") must be a Buffer, typed array or DataView")
      .ThrowAsJavaScriptException();
  return false;
}

bool ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name, Napi::Function* out) {
  if (!info[i].IsFunction()) {
    Napi::TypeError::New(info.Env(), Ordinal(i) + " (" + name + ") must be a function")
        .ThrowAsJavaScriptException();
    return false;
  }
  *out = info[i].As<Napi::Function>();
  return true;
}

}  // namespace virtq
