// virtq_native: the system calls virtq/vhost-user and the tap frame backend need and Node does
// not offer. No protocol logic lives here; src/vhost-user/ and src/node/ hold all of it.
#include <node_version.h>
#include <v8-version.h>

#include <string>

#include "common.h"

namespace virtq {

// Bumped whenever a function's contract changes, so the TypeScript loader can refuse a stale
// build instead of calling it wrongly.
constexpr int kAbiVersion = 4;

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  Napi::Object constants = Napi::Object::New(env);
  InitSocket(env, exports, constants);
  InitMemory(env, exports, constants);
  InitEventfd(env, exports, constants);
  InitWatch(env, exports, constants);
  InitTun(env, exports, constants);
  constants.Freeze();
  exports.Set("constants", constants);
  exports.Set("abiVersion", Napi::Number::New(env, kAbiVersion));
  // mmap() uses V8's own API, which Node keeps stable within one NODE_MODULE_VERSION (one
  // Node major line): the loader compares this with process.versions.modules.
  exports.Set("nodeModuleVersion", Napi::Number::New(env, NODE_MODULE_VERSION));
  // For messages only.
  exports.Set("v8Version", Napi::String::New(env, std::to_string(V8_MAJOR_VERSION) + "." +
                                                      std::to_string(V8_MINOR_VERSION) + "." +
                                                      std::to_string(V8_BUILD_NUMBER) + "." +
                                                      std::to_string(V8_PATCH_LEVEL)));
  return exports;
}

}  // namespace virtq

static Napi::Object InitVirtqNative(Napi::Env env, Napi::Object exports) {
  return virtq::Init(env, exports);
}

NODE_API_MODULE(virtq_native, InitVirtqNative)
