// TUN/TAP: open a tap interface and set the two per-descriptor options virtq's tap frame
// backend needs. Which flags and offloads to ask for is decided in TypeScript
// (src/node/net-tap.ts); these are the bare ioctls.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common.h"

namespace virtq {

namespace {

constexpr const char* kTunPath = "/dev/net/tun";

// tunOpen(name, flags) -> { fd, name }: open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC)
// and TUNSETIFF with `flags` (IFF_* bits) and `name` (an empty name lets the kernel pick one).
// The returned name is the one the kernel gave the interface.
Napi::Value TunOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  int64_t flags;
  if (!ArgString(info, 0, "name", &name)) return env.Undefined();
  if (!ArgInteger(info, 1, "flags", 0, 0xffff, &flags)) return env.Undefined();
  if (name.size() >= IFNAMSIZ) {
    Napi::RangeError::New(env, "argument 1 (name) must be shorter than IFNAMSIZ (16) bytes")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = open(kTunPath, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, errno, "open", kTunPath);
  struct ifreq ifr;
  std::memset(&ifr, 0, sizeof ifr);
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = static_cast<short>(flags);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, "ioctl(TUNSETIFF)", name.c_str());
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("name", Napi::String::New(env, ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ)));
  return result;
}

// tunSetVnetHdrSize(fd, size): TUNSETVNETHDRSZ, the bytes of virtio header before each frame.
Napi::Value TunSetVnetHdrSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t size;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "size", 0, INT32_MAX, &size)) return env.Undefined();
  int value = static_cast<int>(size);
  if (ioctl(fd, TUNSETVNETHDRSZ, &value) < 0) {
    return ThrowErrno(env, errno, "ioctl(TUNSETVNETHDRSZ)");
  }
  return env.Undefined();
}

// tunSetOffload(fd, flags): TUNSETOFFLOAD, the TUN_F_* offloads the kernel may hand us.
Napi::Value TunSetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t flags;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "flags", 0, UINT32_MAX, &flags)) return env.Undefined();
  if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags)) < 0) {
    return ThrowErrno(env, errno, "ioctl(TUNSETOFFLOAD)");
  }
  return env.Undefined();
}

}  // namespace

void InitTun(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("tunOpen", Napi::Function::New(env, TunOpen, "tunOpen"));
  exports.Set("tunSetVnetHdrSize", Napi::Function::New(env, TunSetVnetHdrSize, "tunSetVnetHdrSize"));
  exports.Set("tunSetOffload", Napi::Function::New(env, TunSetOffload, "tunSetOffload"));
  constants.Set("IFF_TAP", Napi::Number::New(env, IFF_TAP));
  constants.Set("IFF_NO_PI", Napi::Number::New(env, IFF_NO_PI));
  constants.Set("IFF_VNET_HDR", Napi::Number::New(env, IFF_VNET_HDR));
  constants.Set("IFNAMSIZ", Napi::Number::New(env, IFNAMSIZ));
  constants.Set("TUN_F_CSUM", Napi::Number::New(env, TUN_F_CSUM));
  constants.Set("TUN_F_TSO4", Napi::Number::New(env, TUN_F_TSO4));
  constants.Set("TUN_F_TSO6", Napi::Number::New(env, TUN_F_TSO6));
  constants.Set("TUN_F_TSO_ECN", Napi::Number::New(env, TUN_F_TSO_ECN));
}

}  // namespace virtq
