/**
 * The native addon behind `virtq/vhost-user`: the Linux system calls that vhost-user needs and
 * Node does not offer (Unix sockets carrying file descriptors, mmap of a received descriptor,
 * eventfds, waiting for a descriptor on the event loop), and opening a tap interface for the
 * tap frame backend of `virtq/node`. It holds no logic: every rule of the
 * protocol lives in TypeScript, on top of these calls.
 *
 * The package ships the addon prebuilt for linux-x64 (`prebuilds/`, one file per Node ABI, made
 * by `native/prebuild.mjs`), so installing virtq compiles nothing. The core library never loads
 * it; {@link loadNative} does, on first use, picking the file for the running Node with
 * node-gyp-build, and throws a {@link NativeAddonUnavailableError} that says what to do when
 * there is none. `VIRTQ_PREBUILD=DIR` loads from DIR's `prebuilds/` instead (an addon you built
 * yourself from a checkout of virtq, for a platform the package has no prebuild for).
 *
 * Conventions shared by every function:
 * - A failed system call throws an `Error` shaped like Node's own: `code` (`'EAGAIN'`,
 *   `'ENOENT'`, ...), `errno` (negative), `syscall`, and `path` where one was given.
 * - "Would block" (EAGAIN) is not an error on the calls a caller retries: those return `-1`
 *   (or `false`) instead, so a drained socket or eventfd costs no exception.
 * - An argument that could never be valid is a `TypeError` or `RangeError`.
 * - Every descriptor the addon creates or receives is close-on-exec, and every socket it creates
 *   is non-blocking.
 */
import { readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { getSystemErrorMap, getSystemErrorName } from 'node:util';

/** The addon's interface version this module was written for (`abiVersion` in `addon.cc`). */
export const NATIVE_ABI_VERSION = 4;

/** The package's root (the same from `src/vhost-user/` and `dist/vhost-user/`). */
const packageRoot = fileURLToPath(new URL('../..', import.meta.url));

/** Where prebuilt addons are looked for (node-gyp-build's layout: `<platform>-<arch>/`). */
export const nativePrebuildsDir: string = join(packageRoot, 'prebuilds');

/**
 * The addon file for the running Node, as node-gyp-build picks it, or a
 * {@link NativeAddonUnavailableError} saying which platform and Node ABI found none.
 */
export function nativeAddonPath(): string {
  const require = createRequire(import.meta.url);
  const gypBuild = require('node-gyp-build') as { resolve(dir: string): string };
  try {
    return gypBuild.resolve(packageRoot);
  } catch (cause) {
    const where = `${process.platform}-${process.arch}, Node ${process.versions.node} (ABI ${process.versions.modules})`;
    throw new NativeAddonUnavailableError(
      process.env.VIRTQ_PREBUILD ?? nativePrebuildsDir,
      `no prebuilt addon for ${where}; this package has ${listPrebuilds()}`,
      { cause },
    );
  }
}

function listPrebuilds(): string {
  const dir = join(process.env.VIRTQ_PREBUILD ?? packageRoot, 'prebuilds');
  const found: string[] = [];
  try {
    for (const platform of readdirSync(dir)) {
      for (const file of readdirSync(join(dir, platform))) found.push(`${platform}/${file}`);
    }
  } catch {}
  return found.length > 0 ? found.join(', ') : 'none';
}

/** What {@link VhostUserNative.recvmsg} read. */
export interface RecvResult {
  /** Bytes read into the buffer; `0` at end of stream; `-1` when nothing was there (EAGAIN). */
  readonly bytes: number;
  /**
   * Descriptors that arrived with these bytes (SCM_RIGHTS), in the sender's order. They are
   * the caller's to close, including when the message is rejected.
   */
  readonly fds: number[];
  /**
   * The sender passed more descriptors than `maxFds`: the kernel closed the ones that did not
   * fit (MSG_CTRUNC). `fds` still holds the ones that did.
   */
  readonly controlTruncated: boolean;
}

/** Mappings made by {@link VhostUserNative.mmap} that are still mapped. */
export interface MappingStats {
  readonly count: number;
  readonly bytes: number;
}

/**
 * Called on the event loop each time a watched descriptor is ready. `events` holds the
 * `POLL_*` bits that are ready; `error` is set (and `events` may be 0) when polling failed.
 * A listener that throws raises an uncaught exception, as a socket's `'data'` listener would.
 */
export type WatchCallback = (
  this: FdWatcher,
  error: NodeJS.ErrnoException | null,
  events: number,
) => void;

/** A descriptor waited for by a libuv poll handle (see {@link VhostUserNative.watch}). */
export interface FdWatcher {
  /** False once stopped. */
  readonly active: boolean;
  /**
   * Stops watching and releases the poll handle; the callback is never called again. Call it
   * before closing the descriptor. Calling it twice does nothing.
   */
  stop(): void;
  /** Waits for another set of `POLL_*` events from now on. Throws once stopped. */
  update(events: number): void;
  /** Lets the active watcher keep the event loop (the process or worker) alive; the default. */
  ref(): FdWatcher;
  /** Stops the active watcher from keeping the event loop alive. */
  unref(): FdWatcher;
}

/** Constants to pass to the addon's functions (Linux values of this machine). */
export interface NativeConstants {
  /** {@link VhostUserNative.mmap} `prot` bits. */
  readonly PROT_READ: number;
  readonly PROT_WRITE: number;
  /** {@link VhostUserNative.eventfd} flags. */
  readonly EFD_NONBLOCK: number;
  readonly EFD_SEMAPHORE: number;
  /** {@link VhostUserNative.memfdCreate} flag. */
  readonly MFD_ALLOW_SEALING: number;
  /** Seals ({@link VhostUserNative.getSeals}, {@link VhostUserNative.addSeals}). */
  readonly F_SEAL_SEAL: number;
  readonly F_SEAL_SHRINK: number;
  readonly F_SEAL_GROW: number;
  readonly F_SEAL_WRITE: number;
  /** {@link VhostUserNative.fallocate} modes. */
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  /** {@link VhostUserNative.shutdown} `how`. */
  readonly SHUT_RD: number;
  readonly SHUT_WR: number;
  readonly SHUT_RDWR: number;
  /** {@link VhostUserNative.watch} events (libuv's). */
  readonly POLL_READABLE: number;
  readonly POLL_WRITABLE: number;
  readonly POLL_DISCONNECT: number;
  readonly POLL_PRIORITIZED: number;
  /** The kernel's limit on descriptors in one message (SCM_MAX_FD). */
  readonly MAX_FDS_PER_MESSAGE: number;
  /** The page size; mmap offsets are multiples of it. */
  readonly PAGE_SIZE: number;
  /** {@link VhostUserNative.tunOpen} flags (`IFF_*`). */
  readonly IFF_TAP: number;
  readonly IFF_NO_PI: number;
  readonly IFF_VNET_HDR: number;
  /** Bytes of an interface name, its NUL included. */
  readonly IFNAMSIZ: number;
  /** {@link VhostUserNative.tunSetOffload} flags (`TUN_F_*`). */
  readonly TUN_F_CSUM: number;
  readonly TUN_F_TSO4: number;
  readonly TUN_F_TSO6: number;
  readonly TUN_F_TSO_ECN: number;
}

/** What {@link VhostUserNative.tunOpen} opened. */
export interface TunInterface {
  /** The queue's descriptor (non-blocking, close-on-exec). */
  readonly fd: number;
  /** The interface's name, as the kernel has it. */
  readonly name: string;
}

/** The functions of the native addon. Each is one system call (or one libuv call). */
export interface VhostUserNative {
  readonly constants: NativeConstants;

  // Unix domain sockets

  /**
   * A new socket bound to `path` and listening. `path` must not exist (removing a stale socket
   * file is the caller's decision) and must fit `sun_path` (107 bytes), else ENAMETOOLONG.
   */
  listen(path: string, backlog: number): number;
  /** The next pending connection, or `-1` when there is none (EAGAIN). */
  accept(fd: number): number;
  /**
   * A socket connected to `path`. A Unix connect completes at once or fails: ENOENT (no file),
   * ECONNREFUSED (nobody listens), EAGAIN (the listener's backlog is full: retry).
   */
  connect(path: string): number;
  /** Two connected sockets. */
  socketpair(): [number, number];
  /**
   * Reads at most `buffer.byteLength` bytes (not 0), and at most `maxFds` descriptors (0 to
   * `MAX_FDS_PER_MESSAGE`) that came with them. A stream socket never returns bytes of two
   * messages that carried descriptors in one call.
   */
  recvmsg(fd: number, buffer: ArrayBufferView, maxFds: number): RecvResult;
  /**
   * Sends the bytes of `buffer` (not empty) with `fds` attached, and returns how many bytes went (possibly
   * fewer: the descriptors went with the first one), or `-1` when the socket buffer is full
   * (EAGAIN; nothing was sent). Never raises SIGPIPE: a closed peer is EPIPE.
   */
  sendmsg(fd: number, buffer: ArrayBufferView, fds: readonly number[]): number;
  /** close(2); stop any watcher of `fd` first. */
  close(fd: number): void;
  /** shutdown(2) with `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`. */
  shutdown(fd: number, how: number): void;
  /** Sets or clears O_NONBLOCK. */
  setNonBlocking(fd: number, on: boolean): void;

  // Shared memory

  /**
   * Maps `[offset, offset + length)` of `fd` (MAP_SHARED) and returns it as a SharedArrayBuffer.
   * `prot` is `PROT_READ` or `PROT_READ | PROT_WRITE`; `offset` a multiple of `PAGE_SIZE`.
   * The range is unmapped when the last SharedArrayBuffer over it (in any thread) is garbage
   * collected; there is no explicit unmap, so no view can outlive its memory.
   *
   * The caller must make sure the whole range is backed (`fstat` size >= offset + length):
   * touching a page past the end of the file, or writing to a `PROT_READ` mapping, kills the
   * process with SIGBUS or SIGSEGV.
   */
  mmap(fd: number, length: number, offset: number, prot: number): SharedArrayBuffer;
  /** Mappings made by {@link mmap} and not yet unmapped (for tests and leak checks). */
  mappingStats(): MappingStats;
  /** An anonymous memory file (memfd_create(2)); `flags` may be `MFD_ALLOW_SEALING`. */
  memfdCreate(name: string, flags: number): number;
  /** ftruncate(2). */
  ftruncate(fd: number, length: number): void;
  /** fallocate(2); `mode` of FALLOC_FL_* bits (`PUNCH_HOLE | KEEP_SIZE` releases a range). */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** The `F_SEAL_*` bits set on a memfd. */
  getSeals(fd: number): number;
  /** Adds `F_SEAL_*` bits to a memfd created with `MFD_ALLOW_SEALING`. */
  addSeals(fd: number, seals: number): void;

  // eventfd

  /** eventfd(2); `flags` may hold `EFD_NONBLOCK` and `EFD_SEMAPHORE`. */
  eventfd(initval: number, flags: number): number;
  /**
   * Reads and resets the counter (or takes 1 with `EFD_SEMAPHORE`). Returns `-1` when it is 0
   * on a non-blocking eventfd (EAGAIN); a counter above 2^53 - 1 comes back as a bigint. On a
   * blocking eventfd this blocks the thread: watch it instead.
   */
  eventfdRead(fd: number): number | bigint;
  /**
   * Adds `value` (at most 2^64 - 2) to the counter. Returns `false` when that would overflow on
   * a non-blocking eventfd (EAGAIN).
   */
  eventfdWrite(fd: number, value: number | bigint): boolean;

  // Waiting

  /**
   * Calls `callback` on this thread's event loop each time `fd` is ready for one of `events`
   * (`POLL_*` bits). The wait is a libuv poll handle in the loop's epoll set: it takes no
   * threadpool thread, however many descriptors are watched. Polling is level-triggered: the
   * callback must drain the descriptor (read the eventfd, recvmsg until -1) or it is called
   * again. The active watcher keeps itself alive and is closed for you when its thread ends.
   */
  watch(fd: number, events: number, callback: WatchCallback): FdWatcher;

  // TUN/TAP

  /**
   * Opens `/dev/net/tun` (non-blocking, close-on-exec) and attaches it to the interface `name`
   * with `flags` (`IFF_*`), creating the interface when there is none (TUNSETIFF). An empty
   * name lets the kernel pick one. Throws ENOENT (no `/dev/net/tun`), EPERM (creating or
   * attaching needs CAP_NET_ADMIN, or the interface belongs to another user), EBUSY (another
   * process holds the interface) or EINVAL (`name` is not a tap interface).
   */
  tunOpen(name: string, flags: number): TunInterface;
  /** TUNSETVNETHDRSZ: bytes of virtio header before each frame read or written. */
  tunSetVnetHdrSize(fd: number, size: number): void;
  /** TUNSETOFFLOAD: the `TUN_F_*` offloads the kernel may use in frames it hands over. */
  tunSetOffload(fd: number, flags: number): void;
}

/** The addon as it is loaded: `watch` reports a negative errno, turned into an Error here. */
interface RawAddon extends Omit<VhostUserNative, 'watch'> {
  readonly abiVersion: number;
  readonly nodeModuleVersion: number;
  readonly v8Version: string;
  watch(
    fd: number,
    events: number,
    callback: (this: FdWatcher, status: number, events: number) => void,
  ): FdWatcher;
}

/** The addon could not be loaded: not built, built for another Node, or not this platform. */
export class NativeAddonUnavailableError extends Error {
  readonly code = 'NATIVE_ADDON_UNAVAILABLE' as const;
  /** Where the addon was looked for or loaded from. */
  readonly path: string;

  constructor(path: string, reason: string, options?: { cause?: unknown }) {
    super(
      `virtq native addon not available (${reason}): ${path}. virtq/vhost-user needs it. The ` +
        'package ships it prebuilt for linux-x64 (glibc) on Node 20, 22 and 24. Elsewhere on ' +
        'Linux, build it in a checkout of virtq (`npm ci` builds it for the Node that runs npm; ' +
        'needs python3, make, a C++ compiler and the Node headers) and point VIRTQ_PREBUILD at ' +
        'that checkout. vhost-user is a Linux protocol: there is no addon for other systems',
      options,
    );
    this.name = 'NativeAddonUnavailableError';
    this.path = path;
  }
}

/** An Error like Node's for a negative errno `status` (libuv's convention). */
function errnoException(status: number, syscall: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(status);
  const description = getSystemErrorMap().get(status)?.[1] ?? 'unknown error';
  const error: NodeJS.ErrnoException = new Error(`${code}: ${description}, ${syscall}`);
  error.errno = status;
  error.code = code;
  error.syscall = syscall;
  return error;
}

function wrap(raw: RawAddon): VhostUserNative {
  return {
    constants: raw.constants,
    listen: raw.listen,
    accept: raw.accept,
    connect: raw.connect,
    socketpair: raw.socketpair,
    recvmsg: raw.recvmsg,
    sendmsg: raw.sendmsg,
    close: raw.close,
    shutdown: raw.shutdown,
    setNonBlocking: raw.setNonBlocking,
    mmap: raw.mmap,
    mappingStats: raw.mappingStats,
    memfdCreate: raw.memfdCreate,
    ftruncate: raw.ftruncate,
    fallocate: raw.fallocate,
    getSeals: raw.getSeals,
    addSeals: raw.addSeals,
    eventfd: raw.eventfd,
    eventfdRead: raw.eventfdRead,
    eventfdWrite: raw.eventfdWrite,
    tunOpen: raw.tunOpen,
    tunSetVnetHdrSize: raw.tunSetVnetHdrSize,
    tunSetOffload: raw.tunSetOffload,
    watch(fd, events, callback) {
      if (typeof callback !== 'function') {
        throw new TypeError('argument 3 (callback) must be a function');
      }
      return raw.watch(fd, events, function (this: FdWatcher, status, ready) {
        callback.call(this, status === 0 ? null : errnoException(status, 'uv_poll'), ready);
      });
    },
  };
}

let loaded: VhostUserNative | undefined;

/**
 * Loads the addon (once per thread) and returns its functions. Throws a
 * {@link NativeAddonUnavailableError} when it is missing, stale or built for another Node.
 */
export function loadNative(): VhostUserNative {
  if (loaded !== undefined) return loaded;
  if (process.platform !== 'linux') {
    throw new NativeAddonUnavailableError(
      nativePrebuildsDir,
      `Linux only, this is ${process.platform}`,
    );
  }
  const path = nativeAddonPath();
  let raw: RawAddon;
  try {
    raw = createRequire(import.meta.url)(path) as RawAddon;
  } catch (cause) {
    throw new NativeAddonUnavailableError(path, `failed to load: ${(cause as Error).message}`, {
      cause,
    });
  }
  if (raw.abiVersion !== NATIVE_ABI_VERSION) {
    throw new NativeAddonUnavailableError(
      path,
      `stale build: interface ${raw.abiVersion}, expected ${NATIVE_ABI_VERSION}`,
    );
  }
  // mmap uses V8's C++ API, which Node keeps stable within one module version (one major line).
  if (raw.nodeModuleVersion !== Number(process.versions.modules)) {
    throw new NativeAddonUnavailableError(
      path,
      `built for Node ABI ${raw.nodeModuleVersion} (V8 ${raw.v8Version}), this Node is ABI ` +
        `${process.versions.modules} (V8 ${process.versions.v8})`,
    );
  }
  loaded = wrap(raw);
  return loaded;
}

/** True when {@link loadNative} would succeed. */
export function isNativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch (e) {
    if (e instanceof NativeAddonUnavailableError) return false;
    throw e;
  }
}
