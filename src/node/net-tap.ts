import { readSync, writevSync } from 'node:fs';
import { featureBit, hasFeature } from '../devices/device.js';
import type { NetBackend, NetPort } from '../devices/net/backend.js';
import { decodeNetHeader, encodeNetHeader } from '../devices/net/header.js';
import {
  ETH_HLEN,
  NET_MAX_FRAME,
  NET_OFFLOAD_FEATURES,
  type NetHeader,
  plainHeader,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_SIZE,
} from '../devices/net/request.js';
import { type FdWatcher, loadNative, type VhostUserNative } from '../vhost-user/native.js';

export interface TapNetOptions {
  /**
   * The interface to create or attach to (default `virtq%d`: the kernel replaces `%d` with the
   * first free number). See {@link tapNameProblem} for what a name may hold.
   */
  name?: string;
  /**
   * Offloads to carry (a subset of {@link NET_OFFLOAD_FEATURES}; default all of them). `0n`
   * makes the tap exchange plain, fully checksummed frames only.
   */
  offloads?: bigint;
  /** Frames read from the tap per readiness callback before the event loop runs (default 64). */
  framesPerTurn?: number;
}

/** Why a tap interface could not be opened. */
export type TapUnavailableReason =
  /** No `/dev/net/tun` (the tun module is not loaded, or a container was not given it). */
  | 'no-tun-device'
  /** Creating or attaching needs CAP_NET_ADMIN, or the interface belongs to another user. */
  | 'permission'
  /** Another process holds the interface. */
  | 'busy'
  /** An interface of that name exists and is not a tap interface virtq can attach to. */
  | 'not-a-tap'
  /** Anything else the kernel refused (see `cause`). */
  | 'failed';

/** A tap interface could not be opened: what the host lacks, said in one sentence. */
export class TapUnavailableError extends Error {
  readonly code = 'TAP_UNAVAILABLE' as const;
  readonly reason: TapUnavailableReason;
  /** The interface name that was asked for. */
  readonly interfaceName: string;

  constructor(
    reason: TapUnavailableReason,
    interfaceName: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TapUnavailableError';
    this.reason = reason;
    this.interfaceName = interfaceName;
  }
}

/** Bytes of an interface name without its NUL (IFNAMSIZ - 1). */
export const TAP_NAME_MAX_BYTES = 15;

/**
 * What is wrong with `name` as a tap interface name, or null when it is fine: 1 to 15 bytes of
 * letters, digits, `_`, `.` and `-`, not `.` or `..`, with at most one `%d` (the kernel puts
 * the first free number there).
 */
export function tapNameProblem(name: string): string | null {
  if (name.length === 0) return 'an interface name cannot be empty';
  if (Buffer.byteLength(name) > TAP_NAME_MAX_BYTES)
    return `an interface name has at most ${TAP_NAME_MAX_BYTES} bytes`;
  if (name === '.' || name === '..') return `"${name}" cannot name an interface`;
  const bare = name.replace('%d', '');
  if (!/^[A-Za-z0-9_.-]*$/.test(bare))
    return 'an interface name holds only letters, digits, "_", "." and "-" (and one "%d")';
  return null;
}

const POLL_NONE = 0;

/**
 * A frame backend on a Linux tap interface (Node only): the device's frames become the
 * interface's frames in the host kernel, so a guest on it is on the host's network as far as
 * the host routes, bridges or namespaces that interface. Needs the native addon and
 * CAP_NET_ADMIN (or an interface created beforehand for this user with
 * `ip tuntap add dev NAME mode tap user USER vnet_hdr`).
 *
 * Each frame on the descriptor carries the 12-byte virtio header (IFF_VNET_HDR with
 * TUNSETVNETHDRSZ 12), so checksum and TCP segmentation offloads cross in both directions: the
 * kernel completes or segments what the guest left partial, and hands the device partial
 * checksums and up-to-64 KiB TCP frames, which the device completes or segments in software
 * for a driver that did not negotiate them.
 *
 * Flow control, both ways lossless on our side: when the device has no room for a frame read
 * from the tap, the backend keeps it and stops reading (the kernel queues, then drops, as on
 * any full interface) until the device calls {@link resumeRx}; when a write would block,
 * {@link send} returns false and the device is resumed once the descriptor is writable. At most
 * `framesPerTurn` frames are read per readiness callback; polling is level-triggered, so the
 * rest is read on the event loop's next turn, after everything else that was waiting.
 */
export class TapNetBackend implements NetBackend {
  readonly offloads: bigint;
  /** A frame is written to the tap (the kernel copies it) before {@link send} returns. */
  readonly readsFramesOnly = true;
  /** The interface's name, as the kernel has it. */
  readonly name: string;
  /** Frames written to and read from the tap; frames read while no device was attached. */
  sent = 0;
  received = 0;
  dropped = 0;
  /** Frames the kernel refused (interface down, a header it rejected); each is lost. */
  sendErrors = 0;
  /** Reads that failed other than "nothing to read", and frames shorter than the header. */
  receiveErrors = 0;

  private readonly native: VhostUserNative;
  private fd: number;
  private readonly watcher: FdWatcher;
  private readonly framesPerTurn: number;
  private port: NetPort | null = null;
  /** Frame buffer for reads: the header, then the frame. */
  private readonly rxBuf = new Uint8Array(VIRTIO_NET_HDR_SIZE + NET_MAX_FRAME);
  private readonly rxFrame = this.rxBuf.subarray(VIRTIO_NET_HDR_SIZE);
  private readonly rxHeader: NetHeader = plainHeader();
  /** Length of a frame in `rxBuf` the device refused, or -1. */
  private heldLength = -1;
  private readonly txHeader = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  private readonly txParts: Uint8Array[] = [this.txHeader, this.txHeader];
  private txWaiting = false;
  private events = POLL_NONE;

  private constructor(native: VhostUserNative, fd: number, name: string, options: TapNetOptions) {
    this.native = native;
    this.fd = fd;
    this.name = name;
    this.offloads = options.offloads ?? NET_OFFLOAD_FEATURES;
    this.framesPerTurn = options.framesPerTurn ?? 64;
    this.watcher = native.watch(fd, POLL_NONE, (error, ready) => this.onReady(error, ready));
    this.setEvents();
  }

  /**
   * Creates the interface (or attaches to an existing tap of that name) and returns the
   * backend. Throws {@link TapUnavailableError} when the host does not allow it, a RangeError
   * for a bad name or offload mask, and the native addon's NativeAddonUnavailableError when
   * the addon is missing.
   */
  static open(options: TapNetOptions = {}): TapNetBackend {
    const name = options.name ?? 'virtq%d';
    const problem = tapNameProblem(name);
    if (problem !== null) throw new RangeError(`${JSON.stringify(name)}: ${problem}`);
    const offloads = options.offloads ?? NET_OFFLOAD_FEATURES;
    if ((offloads & ~NET_OFFLOAD_FEATURES) !== 0n)
      throw new RangeError('offloads must be a subset of NET_OFFLOAD_FEATURES');
    const perTurn = options.framesPerTurn ?? 64;
    if (!Number.isInteger(perTurn) || perTurn < 1)
      throw new RangeError('framesPerTurn must be a positive integer');
    const native = loadNative();
    const c = native.constants;
    let tun: { fd: number; name: string };
    try {
      tun = native.tunOpen(name, c.IFF_TAP | c.IFF_NO_PI | c.IFF_VNET_HDR);
    } catch (e) {
      throw tapOpenError(name, e);
    }
    try {
      native.tunSetVnetHdrSize(tun.fd, VIRTIO_NET_HDR_SIZE);
      native.tunSetOffload(tun.fd, tunOffloadFlags(native, offloads));
      return new TapNetBackend(native, tun.fd, tun.name, { ...options, offloads });
    } catch (e) {
      native.close(tun.fd);
      throw new TapUnavailableError(
        'failed',
        tun.name,
        `tap interface ${tun.name}: ${(e as Error).message}`,
        { cause: e },
      );
    }
  }

  /** True until {@link close}. */
  get isOpen(): boolean {
    return this.fd >= 0;
  }

  attach(port: NetPort): void {
    this.port = port;
    this.setEvents();
  }

  detach(port: NetPort): void {
    if (this.port !== port) return;
    this.port = null;
    this.txWaiting = false;
    this.setEvents();
  }

  send(frame: Uint8Array, length: number, header: NetHeader): boolean {
    if (this.fd < 0) return true;
    encodeNetHeader(header, this.txHeader, 0, 0);
    // A frame lent out of guest memory is exactly `length` bytes: no view to make.
    this.txParts[1] = frame.length === length ? frame : frame.subarray(0, length);
    try {
      writevSync(this.fd, this.txParts);
      this.sent++;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') {
        this.txWaiting = true;
        this.setEvents();
        return false;
      }
      // The kernel refused this frame (the interface is down, say): lost, as on a wire.
      this.sendErrors++;
    } finally {
      this.txParts[1] = this.txHeader;
    }
    return true;
  }

  resumeRx(): void {
    const port = this.port;
    if (port === null || this.heldLength < 0) return;
    if (!port.receive(this.rxFrame, this.heldLength, this.rxHeader)) return;
    this.heldLength = -1;
    this.setEvents();
  }

  /** Stops reading and closes the descriptor; a non-persistent interface goes away with it. */
  close(): void {
    if (this.fd < 0) return;
    this.watcher.stop();
    this.native.close(this.fd);
    this.fd = -1;
    this.heldLength = -1;
    this.txWaiting = false;
  }

  /** Waits for what is needed now: readable while a device takes frames, writable while one waits. */
  private setEvents(): void {
    if (this.fd < 0) return;
    const c = this.native.constants;
    let events = POLL_NONE;
    if (this.port !== null && this.heldLength < 0) events |= c.POLL_READABLE;
    if (this.txWaiting) events |= c.POLL_WRITABLE;
    if (events === this.events) return;
    this.events = events;
    this.watcher.update(events);
  }

  private onReady(error: NodeJS.ErrnoException | null, ready: number): void {
    if (error !== null) {
      // The descriptor cannot be polled any more (it was closed under us): nothing to serve.
      this.receiveErrors++;
      this.close();
      return;
    }
    const c = this.native.constants;
    if ((ready & c.POLL_WRITABLE) !== 0 && this.txWaiting) {
      this.txWaiting = false;
      this.setEvents();
      this.port?.resumeTx();
    }
    if ((ready & c.POLL_READABLE) !== 0) this.port?.burst(this.readFrames);
  }

  /**
   * Reads up to `framesPerTurn` frames and offers each to the device, in one burst (the
   * device delivers them in one receive pass).
   */
  private readonly readFrames = (): void => {
    for (let i = 0; i < this.framesPerTurn; i++) {
      const port = this.port;
      if (this.fd < 0 || port === null || this.heldLength >= 0) return;
      let n: number;
      try {
        n = readSync(this.fd, this.rxBuf, 0, this.rxBuf.length, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') this.receiveErrors++;
        return;
      }
      if (n < VIRTIO_NET_HDR_SIZE + ETH_HLEN) {
        this.receiveErrors++;
        continue;
      }
      this.received++;
      const h = decodeNetHeader(this.rxBuf, 0, this.rxHeader);
      // DATA_VALID (the kernel checked the checksum) is advice the device does not pass on.
      h.flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM;
      const length = n - VIRTIO_NET_HDR_SIZE;
      if (!port.receive(this.rxFrame, length, h)) {
        // Kept in rxBuf, which is not read into again until the device takes it.
        this.heldLength = length;
        this.setEvents();
        return;
      }
    }
  };
}

/** TUN_F_* flags for the receive offloads in `offloads` (what the kernel may hand us). */
function tunOffloadFlags(native: VhostUserNative, offloads: bigint): number {
  const c = native.constants;
  if (!hasFeature(offloads, VIRTIO_NET_F_GUEST_CSUM)) return 0;
  let flags = c.TUN_F_CSUM;
  if (hasFeature(offloads, VIRTIO_NET_F_GUEST_TSO4)) flags |= c.TUN_F_TSO4;
  if (hasFeature(offloads, VIRTIO_NET_F_GUEST_TSO6)) flags |= c.TUN_F_TSO6;
  const tso = featureBit(VIRTIO_NET_F_GUEST_TSO4) | featureBit(VIRTIO_NET_F_GUEST_TSO6);
  if (hasFeature(offloads, VIRTIO_NET_F_GUEST_ECN) && (offloads & tso) !== 0n)
    flags |= c.TUN_F_TSO_ECN;
  return flags;
}

/** A TUNSETIFF or open failure as a {@link TapUnavailableError} that says what to do. */
function tapOpenError(name: string, e: unknown): Error {
  const code = (e as NodeJS.ErrnoException).code;
  const syscall = (e as NodeJS.ErrnoException).syscall;
  const opts = { cause: e };
  if (code === undefined) return e as Error;
  if (syscall === 'open' && (code === 'ENOENT' || code === 'ENODEV' || code === 'ENXIO')) {
    return new TapUnavailableError(
      'no-tun-device',
      name,
      '/dev/net/tun is missing: load the tun module (modprobe tun), or give the container the device',
      opts,
    );
  }
  if (code === 'EPERM' || code === 'EACCES') {
    return new TapUnavailableError(
      'permission',
      name,
      `no permission to open tap interface ${name}: run as root (CAP_NET_ADMIN), or create it ` +
        `for your user first: ip tuntap add dev ${name} mode tap user "$USER" vnet_hdr`,
      opts,
    );
  }
  if (code === 'EBUSY') {
    return new TapUnavailableError(
      'busy',
      name,
      `tap interface ${name} is in use by another process`,
      opts,
    );
  }
  if (code === 'EINVAL') {
    return new TapUnavailableError(
      'not-a-tap',
      name,
      `interface ${name} exists and is not a single-queue tap interface`,
      opts,
    );
  }
  return new TapUnavailableError(
    'failed',
    name,
    `cannot open tap interface ${name}: ${(e as Error).message}`,
    opts,
  );
}
