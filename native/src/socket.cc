// Unix domain sockets: listen/accept/connect, socketpair, and recvmsg/sendmsg carrying file
// descriptors as SCM_RIGHTS. Every socket this file creates is non-blocking and close-on-exec;
// every descriptor it receives is close-on-exec (MSG_CMSG_CLOEXEC).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "common.h"

namespace virtq {

namespace {

// The kernel's limit on descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
constexpr int kMaxFds = 253;

// Fills addr with path; false (errno ENAMETOOLONG) when it does not fit sun_path with its NUL.
bool UnixAddress(const std::string& path, sockaddr_un* addr, socklen_t* length) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (path.size() + 1 > sizeof addr->sun_path) {
    errno = ENAMETOOLONG;
    return false;
  }
  std::memcpy(addr->sun_path, path.c_str(), path.size() + 1);
  *length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

int NewSocket() { return socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); }

// close() that keeps the errno of the failure being reported.
void CloseQuietly(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

// listen(path, backlog) -> fd. Binds a new socket to path (which must not exist) and listens.
Napi::Value Listen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  int64_t backlog;
  if (!ArgString(info, 0, "path", &path)) return env.Undefined();
  if (!ArgInteger(info, 1, "backlog", 0, INT32_MAX, &backlog)) return env.Undefined();
  sockaddr_un addr;
  socklen_t addr_length;
  if (!UnixAddress(path, &addr, &addr_length)) return ThrowErrno(env, errno, "bind", path.c_str());
  int fd = NewSocket();
  if (fd < 0) return ThrowErrno(env, errno, "socket");
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_length) != 0) {
    CloseQuietly(fd);
    return ThrowErrno(env, errno, "bind", path.c_str());
  }
  if (listen(fd, static_cast<int>(backlog)) != 0) {
    CloseQuietly(fd);
    return ThrowErrno(env, errno, "listen", path.c_str());
  }
  return Napi::Number::New(env, fd);
}

// accept(fd) -> fd, or -1 when no connection is pending (EAGAIN).
Napi::Value Accept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  for (;;) {
    int conn = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn >= 0) return Napi::Number::New(env, conn);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "accept4");
  }
}

// connect(path) -> fd. A Unix stream connect completes at once or fails (EAGAIN when the
// listener's backlog is full, ECONNREFUSED when nobody listens, ENOENT when there is no file).
Napi::Value Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  if (!ArgString(info, 0, "path", &path)) return env.Undefined();
  sockaddr_un addr;
  socklen_t addr_length;
  if (!UnixAddress(path, &addr, &addr_length)) {
    return ThrowErrno(env, errno, "connect", path.c_str());
  }
  int fd = NewSocket();
  if (fd < 0) return ThrowErrno(env, errno, "socket");
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), addr_length) != 0) {
    CloseQuietly(fd);
    return ThrowErrno(env, errno, "connect", path.c_str());
  }
  return Napi::Number::New(env, fd);
}

// socketpair() -> [fd, fd]: two connected Unix stream sockets.
Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
    return ThrowErrno(env, errno, "socketpair");
  }
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(uint32_t{0}, Napi::Number::New(env, fds[0]));
  result.Set(uint32_t{1}, Napi::Number::New(env, fds[1]));
  return result;
}

// The first two arguments of recvmsg and sendmsg: a socket and a buffer that is not empty (an
// empty read would return 0, which means end of stream; descriptors travel with data, so an
// empty send would carry none).
bool ArgSocketAndBuffer(const Napi::CallbackInfo& info, int* fd, uint8_t** data,
                        size_t* length) {
  if (!ArgFd(info, 0, fd)) return false;
  if (!ArgBytes(info, 1, "buffer", data, length)) return false;
  if (*length == 0) {
    Napi::RangeError::New(info.Env(), "argument 2 (buffer) must not be empty")
        .ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

Napi::Object RecvResult(Napi::Env env, double bytes, Napi::Array fds, bool truncated) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", Napi::Number::New(env, bytes));
  result.Set("fds", fds);
  result.Set("controlTruncated", Napi::Boolean::New(env, truncated));
  return result;
}

// recvmsg(fd, buffer, maxFds) -> { bytes, fds, controlTruncated }.
// bytes is -1 when nothing is there to read (EAGAIN) and 0 at end of stream. fds are the
// descriptors that arrived as SCM_RIGHTS (close-on-exec); controlTruncated is true when the
// sender passed more descriptors than maxFds (the kernel closed the ones that did not fit).
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* data;
  size_t length;
  int64_t max_fds;
  if (!ArgSocketAndBuffer(info, &fd, &data, &length)) return env.Undefined();
  if (!ArgInteger(info, 2, "maxFds", 0, kMaxFds, &max_fds)) return env.Undefined();

  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{data, length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (max_fds > 0) {
    msg.msg_control = control;
    // CMSG_LEN, not CMSG_SPACE: the kernel fits as many descriptors as the length allows, and the
    // padding of CMSG_SPACE would let one more than maxFds through.
    msg.msg_controllen = CMSG_LEN(sizeof(int) * static_cast<size_t>(max_fds));
  }
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);

  Napi::Array fds = Napi::Array::New(env);
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) return ThrowErrno(env, errno, "recvmsg");
    return RecvResult(env, -1, fds, false);
  }
  uint32_t count = 0;
  if (max_fds > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t bytes = c->cmsg_len - CMSG_LEN(0);
      const unsigned char* p = CMSG_DATA(c);
      for (size_t k = 0; k + sizeof(int) <= bytes; k += sizeof(int)) {
        int received;
        std::memcpy(&received, p + k, sizeof received);
        fds.Set(count++, Napi::Number::New(env, received));
      }
    }
  }
  return RecvResult(env, static_cast<double>(n), fds, (msg.msg_flags & MSG_CTRUNC) != 0);
}

// sendmsg(fd, buffer, fds) -> bytes sent, or -1 when the socket buffer is full (EAGAIN).
// The descriptors travel with the first byte; a partial send has sent all of them.
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  uint8_t* data;
  size_t length;
  if (!ArgSocketAndBuffer(info, &fd, &data, &length)) return env.Undefined();
  if (!info[2].IsArray()) {
    Napi::TypeError::New(env, "argument 3 (fds) must be an array of file descriptors")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Array list = info[2].As<Napi::Array>();
  uint32_t count = list.Length();
  if (count > static_cast<uint32_t>(kMaxFds)) {
    Napi::RangeError::New(env, "at most " + std::to_string(kMaxFds) +
                                   " file descriptors fit in one message")
        .ThrowAsJavaScriptException();
    return env.Undefined();
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
  iovec iov{data, length};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (count > 0) {
    std::memset(control, 0, sizeof control);
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * count);
    unsigned char* p = CMSG_DATA(c);
    for (uint32_t k = 0; k < count; k++) {
      Napi::Value item = list.Get(k);
      if (env.IsExceptionPending()) return env.Undefined();
      double v = item.IsNumber() ? item.As<Napi::Number>().DoubleValue() : -1;
      if (!(v >= 0 && v <= INT32_MAX && v == static_cast<int>(v))) {
        Napi::TypeError::New(env, "fds[" + std::to_string(k) + "] is not a file descriptor")
            .ThrowAsJavaScriptException();
        return env.Undefined();
      }
      int passed = static_cast<int>(v);
      std::memcpy(p + k * sizeof(int), &passed, sizeof passed);
    }
  }
  ssize_t n;
  do {
    n = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(n));
}

// close(fd). On Linux a close interrupted by a signal has still released the descriptor.
Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (close(fd) != 0 && errno != EINTR) return ThrowErrno(env, errno, "close");
  return env.Undefined();
}

// shutdown(fd, how) with how one of SHUT_RD, SHUT_WR, SHUT_RDWR.
Napi::Value Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t how;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!ArgInteger(info, 1, "how", SHUT_RD, SHUT_RDWR, &how)) return env.Undefined();
  if (shutdown(fd, static_cast<int>(how)) != 0) return ThrowErrno(env, errno, "shutdown");
  return env.Undefined();
}

// setNonBlocking(fd, on): sets or clears O_NONBLOCK.
Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  if (!info[1].IsBoolean()) {
    Napi::TypeError::New(env, "argument 2 (on) must be a boolean").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  bool on = info[1].As<Napi::Boolean>().Value();
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return ThrowErrno(env, errno, "fcntl");
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && fcntl(fd, F_SETFL, wanted) != 0) return ThrowErrno(env, errno, "fcntl");
  return env.Undefined();
}

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  exports.Set("listen", Napi::Function::New(env, Listen, "listen"));
  exports.Set("accept", Napi::Function::New(env, Accept, "accept"));
  exports.Set("connect", Napi::Function::New(env, Connect, "connect"));
  exports.Set("socketpair", Napi::Function::New(env, SocketPair, "socketpair"));
  exports.Set("recvmsg", Napi::Function::New(env, RecvMsg, "recvmsg"));
  exports.Set("sendmsg", Napi::Function::New(env, SendMsg, "sendmsg"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("shutdown", Napi::Function::New(env, Shutdown, "shutdown"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));
  constants.Set("SHUT_RD", Napi::Number::New(env, SHUT_RD));
  constants.Set("SHUT_WR", Napi::Number::New(env, SHUT_WR));
  constants.Set("SHUT_RDWR", Napi::Number::New(env, SHUT_RDWR));
  constants.Set("MAX_FDS_PER_MESSAGE", Napi::Number::New(env, kMaxFds));
}

}  // namespace virtq
