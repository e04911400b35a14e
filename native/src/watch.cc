// watch(fd, events, callback): a libuv poll handle on the event loop of the calling thread.
// Waiting costs no thread: the descriptor sits in the loop's epoll set, and the callback runs
// on the JavaScript thread when it becomes ready, like a socket's 'data' event. No libuv
// threadpool work is ever queued, so any number of watchers can wait forever without starving
// fs, dns or crypto.
//
// Lifetime: an active watcher keeps its JavaScript object alive (and, unless unref()'d, the
// event loop). stop() closes the handle. When the environment (main thread or worker) shuts down
// with watchers still active, an async cleanup hook closes them so the loop can close.
#include <uv.h>

#include <memory>

#include "common.h"

namespace virtq {

namespace {

constexpr int kAllEvents = UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED;

class Watcher;

// The libuv side of a watcher, owned by libuv from uv_poll_init until the close callback. It
// outlives the JavaScript object when that is collected first, and the other way round.
struct PollState {
  uv_poll_t handle;
  Watcher* owner = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
  bool closing = false;
};

void OnClose(uv_handle_t* handle) {
  PollState* state = static_cast<PollState*>(handle->data);
  // Lets an environment teardown that waits on this hook go on; before teardown it simply
  // unregisters the hook.
  if (state->hook != nullptr) napi_remove_async_cleanup_hook(state->hook);
  delete state;
}

class Watcher : public Napi::ObjectWrap<Watcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Watcher",
                       {
                           InstanceMethod<&Watcher::Stop>("stop"),
                           InstanceMethod<&Watcher::Update>("update"),
                           InstanceMethod<&Watcher::RefLoop>("ref"),
                           InstanceMethod<&Watcher::UnrefLoop>("unref"),
                           InstanceAccessor<&Watcher::Active>("active"),
                       });
  }

  // new Watcher(fd, events, callback); reached through watch().
  explicit Watcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Watcher>(info) {
    Napi::Env env = info.Env();
    int fd;
    int64_t events;
    Napi::Function callback;
    if (!ArgFd(info, 0, &fd)) return;
    if (!ArgInteger(info, 1, "events", 0, kAllEvents, &events)) return;
    if (!ArgFunction(info, 2, "callback", &callback)) return;
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
      Napi::Error::New(env, "no libuv event loop on this thread").ThrowAsJavaScriptException();
      return;
    }
    PollState* state = new PollState();
    int r = uv_poll_init(loop, &state->handle, fd);
    if (r != 0) {
      // A failed init leaves no handle to close.
      delete state;
      ThrowErrno(env, -r, "uv_poll_init");
      return;
    }
    state->handle.data = state;
    r = uv_poll_start(&state->handle, static_cast<int>(events), OnPoll);
    if (r != 0) {
      state->closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&state->handle), OnClose);
      ThrowErrno(env, -r, "uv_poll_start");
      return;
    }
    if (napi_add_async_cleanup_hook(env, OnEnvCleanup, state, &state->hook) != napi_ok) {
      state->hook = nullptr;
    }
    state->owner = this;
    poll_ = state;
    callback_ = Napi::Persistent(callback);
    context_ = std::make_unique<Napi::AsyncContext>(env, "virtq.watch",
                                                    info.This().As<Napi::Object>());
    Ref();  // stay alive while active, whether or not JavaScript keeps the handle
  }

  ~Watcher() override {
    // Only reachable once stopped (an active watcher holds a strong reference to itself), or
    // when the environment finalizes everything at teardown.
    if (poll_ != nullptr) {
      poll_->owner = nullptr;
      BeginClose(poll_);
      poll_ = nullptr;
    }
  }

 private:
  static void BeginClose(PollState* state) {
    if (state->closing) return;
    state->closing = true;
    if (state->owner != nullptr) state->owner->poll_ = nullptr;
    state->owner = nullptr;
    uv_poll_stop(&state->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&state->handle), OnClose);
  }

  // Drops what the active watcher held on the JavaScript side.
  void Release() {
    callback_.Reset();
    context_.reset();
    Unref();
  }

  static void OnEnvCleanup(napi_async_cleanup_hook_handle /* hook */, void* arg) {
    PollState* state = static_cast<PollState*>(arg);
    if (state->closing) return;  // OnClose is on its way and will remove the hook
    if (state->owner != nullptr) state->owner->Release();
    BeginClose(state);
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    PollState* state = static_cast<PollState*>(handle->data);
    Watcher* self = state->owner;
    if (self == nullptr || state->closing || self->callback_.IsEmpty()) return;
    napi_env env = self->Env();
    // Node runs the loop inside the main context, under a SealHandleScope. Only calls that
    // cannot throw are made here: while a worker is being terminated nothing may enter
    // JavaScript, and napi_make_callback then quietly declines.
    napi_handle_scope scope;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    napi_value argv[2];
    napi_create_int32(env, status, &argv[0]);
    napi_create_int32(env, events, &argv[1]);
    napi_value receiver = self->Value();
    napi_value callback = self->callback_.Value();
    napi_value result;
    if (napi_make_callback(env, *self->context_, receiver, callback, 2, argv, &result) != napi_ok) {
      // `self` may have been stopped by the callback; nothing here touches it.
      bool pending = false;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending) {
        napi_value thrown;
        napi_get_and_clear_last_exception(env, &thrown);
        // The same path as an exception thrown by a socket's 'data' listener.
        napi_fatal_exception(env, thrown);
      }
    }
    napi_close_handle_scope(env, scope);
  }

  // stop(): closes the handle; the callback is never called again. Idempotent.
  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) {
      PollState* state = poll_;
      Release();
      BeginClose(state);
    }
    return info.Env().Undefined();
  }

  // update(events): waits for another set of events (UV_READABLE | UV_WRITABLE ...).
  Napi::Value Update(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t events;
    if (!ArgInteger(info, 0, "events", 0, kAllEvents, &events)) return env.Undefined();
    if (poll_ == nullptr) {
      Napi::Error::New(env, "the watcher is stopped").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int r = uv_poll_start(&poll_->handle, static_cast<int>(events), OnPoll);
    if (r != 0) return ThrowErrno(env, -r, "uv_poll_start");
    return env.Undefined();
  }

  // ref() / unref(): whether an active watcher keeps the event loop (the process) alive.
  Napi::Value RefLoop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&poll_->handle));
    return info.This();
  }

  Napi::Value UnrefLoop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&poll_->handle));
    return info.This();
  }

  Napi::Value Active(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), poll_ != nullptr);
  }

  PollState* poll_ = nullptr;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

// watch(fd, events, callback) -> Watcher. callback(status, events) runs on the event loop each
// time fd is ready for one of events; status is 0, or a negative errno (libuv's convention) that
// the TypeScript wrapper turns into an Error.
Napi::Value Watch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::FunctionReference* constructor = env.GetInstanceData<Napi::FunctionReference>();
  return constructor->New({info[0], info[1], info[2]});
}

}  // namespace

void InitWatch(Napi::Env env, Napi::Object exports, Napi::Object constants) {
  Napi::Function watcher = Watcher::Define(env);
  env.SetInstanceData<Napi::FunctionReference>(new Napi::FunctionReference(
      Napi::Persistent(watcher)));
  exports.Set("watch", Napi::Function::New(env, Watch, "watch"));
  constants.Set("POLL_READABLE", Napi::Number::New(env, UV_READABLE));
  constants.Set("POLL_WRITABLE", Napi::Number::New(env, UV_WRITABLE));
  constants.Set("POLL_DISCONNECT", Napi::Number::New(env, UV_DISCONNECT));
  constants.Set("POLL_PRIORITIZED", Napi::Number::New(env, UV_PRIORITIZED));
}

}  // namespace virtq
