// eventfd: create, read the counter, add to the counter. vhost-user carries every kick and
// call as an eventfd the frontend sends.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "common.h"

namespace virtq {

namespace {

constexpr uint64_t kMaxSafeInteger = (uint64_t{1} << 53) - 1;

// eventfd(initval, flags) -> fd. EFD_CLOEXEC is always set; flags may add EFD_NONBLOCK and
// EFD_SEMAPHORE.
Napi::Value Eventfd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t initval;
  int64_t flags;
  if (!ArgInteger(info, 0, "initval", 0, UINT32_MAX, &initval)) return env.Undefined();
  if (!ArgInteger(info, 1, "flags", 0, INT32_MAX, &flags)) return env.Undefined();
  if ((flags & ~(EFD_NONBLOCK | EFD_SEMAPHORE | EFD_CLOEXEC)) != 0) {
    Napi::RangeError::New(env, "argument 2 (flags) may only hold EFD_NONBLOCK and EFD_SEMAPHORE")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = eventfd(static_cast<unsigned>(initval), static_cast<int>(flags) | EFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, errno, "eventfd");
  return Napi::Number::New(env, fd);
}

// eventfdRead(fd) -> the counter (then reset to 0, or decremented by 1 with EFD_SEMAPHORE), or
// -1 when it is 0 on a non-blocking eventfd (EAGAIN). A counter above 2^53 - 1 comes back as a
// bigint. On a blocking eventfd this call blocks the thread: use a watcher instead.
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  uint64_t value;
  ssize_t n;
  do {
    n = read(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "read");
  }
  if (n != sizeof value) return ThrowErrno(env, EIO, "read");
  if (value > kMaxSafeInteger) return Napi::BigInt::New(env, value);
  return Napi::Number::New(env, static_cast<double>(value));
}

// eventfdWrite(fd, value) -> true, or false when the counter would overflow on a non-blocking
// eventfd (EAGAIN). value is a number (a safe integer) or a bigint, at most 2^64 - 2.
Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  uint64_t value;
  if (info[1].IsBigInt()) {
    bool lossless = false;
    value = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless || value == UINT64_MAX) {
      Napi::RangeError::New(env, "argument 2 (value) must be in [0, 2^64 - 2]")
          .ThrowAsJavaScriptException();
      return env.Undefined();
    }
  } else {
    int64_t n;
    if (!ArgInteger(info, 1, "value", 0, static_cast<int64_t>(kMaxSafeInteger), &n)) {
      return env.Undefined();
    }
    value = static_cast<uint64_t>(n);
  }
  ssize_t n;
  do {
    n = write(fd, &value, sizeof value);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    return ThrowErrno(env, errno, "write");
  }
  if (n != sizeof value) return ThrowErrno(env, EIO, "write");
  return Napi::Boolean::New(env, true);
}

}  // namespace

void InitEventfd(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("eventfd", Napi::Function::New(env, Eventfd, "eventfd"));
  exports.Set("eventfdRead", Napi::Function::New(env, EventfdRead, "eventfdRead"));
  exports.Set("eventfdWrite", Napi::Function::New(env, EventfdWrite, "eventfdWrite"));
  constants.Set("EFD_NONBLOCK", Napi::Number::New(env, EFD_NONBLOCK));
  constants.Set("EFD_SEMAPHORE", Napi::Number::New(env, EFD_SEMAPHORE));
}

}  // namespace virtq
