// Shared memory: memfd_create, ftruncate, file seals, and mmap of a descriptor exposed to
// JavaScript as a SharedArrayBuffer whose backing store unmaps the range when V8 frees it.
//
// Node-API has no SharedArrayBuffer over external memory, so mmap() builds one with the V8 API
// (Node 20 ships its headers) and hands it back as a napi_value.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <unistd.h>
#include <v8.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>

#include "common.h"

namespace virtq {

namespace {

constexpr int64_t kMaxSafeInteger = (int64_t{1} << 53) - 1;

// Live mappings made by mmap() and not yet unmapped by their deleter, for tests and leak checks.
std::atomic<int64_t> live_mappings{0};
std::atomic<int64_t> live_bytes{0};

// The BackingStore deleter. V8 runs it when the last SharedArrayBuffer over the mapping (in any
// thread or worker) has been collected; possibly on a V8 background thread, so it touches only
// the mapping and the atomic counters.
void Unmap(void* data, size_t length, void* /* deleter_data */) {
  munmap(data, length);
  live_mappings.fetch_sub(1, std::memory_order_relaxed);
  live_bytes.fetch_sub(static_cast<int64_t>(length), std::memory_order_relaxed);
}

// Node-API values are V8 local handles under another name: Node converts between the two by
// reinterpreting the handle's single pointer (v8impl::JsValueFromV8LocalValue). Do the same.
napi_value ToNapi(v8::Local<v8::Value> local) {
  static_assert(sizeof(local) == sizeof(napi_value), "a v8::Local is one pointer");
  napi_value value;
  std::memcpy(&value, &local, sizeof value);
  return value;
}

// mmap(fd, length, offset, prot) -> SharedArrayBuffer of length bytes mapping [offset,
// offset + length) of fd, MAP_SHARED. prot is PROT_READ or PROT_READ | PROT_WRITE; offset must be
// a multiple of the page size. The mapping lives until the buffer is garbage collected.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t length;
  int64_t offset;
  int64_t prot;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "length", 1, kMaxSafeInteger, &length)) return env.Undefined();
  if (!ArgInteger(info, 2, "offset", 0, kMaxSafeInteger, &offset)) return env.Undefined();
  if (!ArgInteger(info, 3, "prot", 0, PROT_READ | PROT_WRITE, &prot)) return env.Undefined();
  // A mapping JavaScript cannot read would crash the process at the first access.
  if ((prot & PROT_READ) == 0) {
    Napi::RangeError::New(env, "argument 4 (prot) must include PROT_READ")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  void* data = mmap(nullptr, static_cast<size_t>(length), static_cast<int>(prot), MAP_SHARED, fd,
                    static_cast<off_t>(offset));
  if (data == MAP_FAILED) return ThrowErrno(env, errno, "mmap");
  live_mappings.fetch_add(1, std::memory_order_relaxed);
  live_bytes.fetch_add(length, std::memory_order_relaxed);

  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  std::shared_ptr<v8::BackingStore> store = v8::SharedArrayBuffer::NewBackingStore(
      data, static_cast<size_t>(length), Unmap, nullptr);
  v8::Local<v8::SharedArrayBuffer> buffer = v8::SharedArrayBuffer::New(isolate, std::move(store));
  return Napi::Value(env, ToNapi(buffer));
}

// mappingStats() -> { count, bytes } of mmap() mappings not yet unmapped.
Napi::Value MappingStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
  result.Set("count", Napi::Number::New(
                          env, static_cast<double>(live_mappings.load(std::memory_order_relaxed))));
  result.Set("bytes", Napi::Number::New(
                          env, static_cast<double>(live_bytes.load(std::memory_order_relaxed))));
  return result;
}

// memfdCreate(name, flags) -> fd. MFD_CLOEXEC is always set; flags may add MFD_ALLOW_SEALING.
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  int64_t flags;
  if (!ArgString(info, 0, "name", &name)) return env.Undefined();
  if (!ArgInteger(info, 1, "flags", 0, MFD_ALLOW_SEALING, &flags)) return env.Undefined();
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | static_cast<unsigned>(flags));
  if (fd < 0) return ThrowErrno(env, errno, "memfd_create");
  return Napi::Number::New(env, fd);
}

// ftruncate(fd, length).
Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t length;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "length", 0, kMaxSafeInteger, &length)) return env.Undefined();
  int r;
  do {
    r = ftruncate(fd, static_cast<off_t>(length));
  } while (r != 0 && errno == EINTR);
  if (r != 0) return ThrowErrno(env, errno, "ftruncate");
  return env.Undefined();
}

// fallocate(fd, mode, offset, length): allocates, or with FALLOC_FL_PUNCH_HOLE |
// FALLOC_FL_KEEP_SIZE releases, a byte range of a file (a disk image's discard).
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t mode;
  int64_t offset;
  int64_t length;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "mode", 0, INT32_MAX, &mode)) return env.Undefined();
  if (!ArgInteger(info, 2, "offset", 0, kMaxSafeInteger, &offset)) return env.Undefined();
  if (!ArgInteger(info, 3, "length", 1, kMaxSafeInteger, &length)) return env.Undefined();
  int r;
  do {
    r = fallocate(fd, static_cast<int>(mode), static_cast<off_t>(offset),
                  static_cast<off_t>(length));
  } while (r != 0 && errno == EINTR);
  if (r != 0) return ThrowErrno(env, errno, "fallocate");
  return env.Undefined();
}

// getSeals(fd) -> the F_SEAL_* bits set on a memfd.
Napi::Value GetSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return ThrowErrno(env, errno, "fcntl");
  return Napi::Number::New(env, seals);
}

// addSeals(fd, seals): adds F_SEAL_* bits to a memfd made with MFD_ALLOW_SEALING.
Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t seals;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "seals", 0, INT32_MAX, &seals)) return env.Undefined();
  if (fcntl(fd, F_ADD_SEALS, static_cast<int>(seals)) != 0) return ThrowErrno(env, errno, "fcntl");
  return env.Undefined();
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("mappingStats", Napi::Function::New(env, MappingStats, "mappingStats"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("getSeals", Napi::Function::New(env, GetSeals, "getSeals"));
  exports.Set("addSeals", Napi::Function::New(env, AddSeals, "addSeals"));
  constants.Set("PROT_READ", Napi::Number::New(env, PROT_READ));
  constants.Set("PROT_WRITE", Napi::Number::New(env, PROT_WRITE));
  constants.Set("MFD_ALLOW_SEALING", Napi::Number::New(env, MFD_ALLOW_SEALING));
  constants.Set("F_SEAL_SEAL", Napi::Number::New(env, F_SEAL_SEAL));
  constants.Set("F_SEAL_SHRINK", Napi::Number::New(env, F_SEAL_SHRINK));
  constants.Set("FALLOC_FL_KEEP_SIZE", Napi::Number::New(env, FALLOC_FL_KEEP_SIZE));
  constants.Set("FALLOC_FL_PUNCH_HOLE", Napi::Number::New(env, FALLOC_FL_PUNCH_HOLE));
  constants.Set("F_SEAL_GROW", Napi::Number::New(env, F_SEAL_GROW));
  constants.Set("F_SEAL_WRITE", Napi::Number::New(env, F_SEAL_WRITE));
  constants.Set("PAGE_SIZE", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
}

}  // namespace virtq
