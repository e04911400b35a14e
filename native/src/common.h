// Shared helpers of the virtq native addon: argument checks and errno errors.
//
// The addon is a thin layer of system calls. Every helper here either reads one argument
// (throwing a TypeError or RangeError for a value that could never be valid) or turns an
// errno into a JavaScript Error shaped like Node's own (code 'EAGAIN', errno -11, syscall).
#ifndef VIRTQ_NATIVE_COMMON_H_
#define VIRTQ_NATIVE_COMMON_H_

#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace virtq {

// An Error like the ones Node's fs and net throw: message "CODE: description, syscall 'path'",
// with code, errno (negative, as in Node) and syscall (and path when given).
Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const char* path = nullptr);

// Throws ErrnoError as a pending JavaScript exception and returns undefined.
Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* path = nullptr);

// Each Arg* helper reads info[i]. On a bad value it leaves a TypeError or RangeError pending
// and returns false; the caller then returns at once.

// A file descriptor: an integer in [0, 2^31).
bool ArgFd(const Napi::CallbackInfo& info, size_t i, int* out);

// An integer number in [min, max] (max at most 2^53 - 1).
bool ArgInteger(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min,
                int64_t max, int64_t* out);

// A string without NUL bytes.
bool ArgString(const Napi::CallbackInfo& info, size_t i, const char* name, std::string* out);

// The bytes of an ArrayBufferView (Buffer, any typed array or DataView), over an ArrayBuffer
// or a SharedArrayBuffer.
bool ArgBytes(const Napi::CallbackInfo& info, size_t i, const char* name, uint8_t** data,
              size_t* length);

// A function.
bool ArgFunction(const Napi::CallbackInfo& info, size_t i, const char* name, Napi::Function* out);

// Module parts: each adds its functions and constants to exports.
void InitSocket(Napi::Env env, Napi::Object exports, Napi::Object constants);
void InitMemory(Napi::Env env, Napi::Object exports, Napi::Object constants);
void InitEventfd(Napi::Env env, Napi::Object exports, Napi::Object constants);
void InitWatch(Napi::Env env, Napi::Object exports, Napi::Object constants);
void InitTun(Napi::Env env, Napi::Object exports, Napi::Object constants);

}  // namespace virtq

#endif  // VIRTQ_NATIVE_COMMON_H_
