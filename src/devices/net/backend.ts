import { NET_OFFLOAD_FEATURES, type NetHeader } from './request.js';

/**
 * The device end of a link, as a frame backend sees it. A {@link NetDevice} hands one to its
 * backend in {@link NetBackend.attach}.
 */
export interface NetPort {
  /**
   * Offers the frame `frame[0, length)` with its virtio header fields (`null`: a plain,
   * fully checksummed frame) to the device, which copies it before returning. Returns false
   * when the device has no room for it now: the backend keeps the frame (or stops producing)
   * and offers it again after the device calls {@link NetBackend.resumeRx}. Nothing is lost.
   */
  receive(frame: Uint8Array, length: number, header: NetHeader | null): boolean;
  /**
   * Runs `run`, in which the backend offers several frames: the device takes each as
   * {@link receive} says and publishes them after `run` returns, in one receive pass per
   * queue (one used-index publication, at most one interrupt) instead of one per frame.
   * Inside a burst the device may write a frame straight into the driver's receive buffer
   * (no copy in between), and refuses one the driver has no buffer for yet: the backend keeps
   * it until {@link NetBackend.resumeRx}, as it does when the device is full.
   * A backend that reads frames in batches offers each batch in a burst. Bursts may nest.
   */
  burst(run: () => void): void;
  /** True when {@link receive} would take a frame of `length` bytes now. */
  canReceive(length: number): boolean;
  /** The backend can take frames again after {@link NetBackend.send} returned false. */
  resumeTx(): void;
}

/**
 * Where a network device's frames go and come from. Implementations: {@link createNetPair} (two
 * devices cable-connected), {@link NetSwitch} (N ports), and the Node-only datagram socket
 * backend in `virtq/node`.
 */
export interface NetBackend {
  /**
   * Offload features (a VIRTIO_NET_F_* mask, within {@link NET_OFFLOAD_FEATURES}) this
   * backend carries end to end: the header's checksum and segmentation fields reach the
   * receiving device intact. A device offers no offload its backend cannot carry.
   */
  readonly offloads: bigint;
  /**
   * True when {@link send} only reads the frame, and only until it returns: it neither changes
   * it nor keeps it, nor hands it to anything that reads it later. The device may then pass a
   * frame that lies in one guest buffer as a view of that buffer, with no copy into its
   * scratch (a small frame when its buffer brings one of the same length again). The guest may
   * change those bytes at any moment, so such a backend must not check a frame and then rely on
   * what it checked (one that delivers into another device does, and leaves this false).
   * Absent or false: the frame is always the device's scratch.
   */
  readonly readsFramesOnly?: boolean;
  /** The device `port` is now this backend's device end. */
  attach(port: NetPort): void;
  /** The device goes away. */
  detach(port: NetPort): void;
  /**
   * Sends `frame[0, length)` with its header. The buffer is the device's scratch and is
   * reused as soon as this returns: copy what you keep. The backend may change it in place
   * before then (the device never reads it back: a refused frame is copied out of guest memory
   * again), unless it declares {@link readsFramesOnly}: then it may be guest memory. Returns
   * false when the backend cannot take it now; the device keeps the frame and tries again after
   * {@link NetPort.resumeTx}.
   */
  send(frame: Uint8Array, length: number, header: NetHeader): boolean;
  /** The device has room for received frames again (after a `receive` that returned false). */
  resumeRx(): void;
}

/**
 * One end of an in-process cable between two devices (see {@link createNetPair}). A frame sent
 * by one device is offered synchronously to the other; when the other device's queue of
 * waiting frames is full, the sender is told to wait and is resumed when room appears, so no
 * frame is ever dropped on the cable. A frame sent while the other end has no device attached
 * goes nowhere and is counted in {@link unplugged}.
 *
 * The cable carries the whole virtio header, so both devices may offer every offload virtq
 * implements; a receiving device whose driver did not negotiate an offload completes it in
 * software.
 */
export class NetPairEndpoint implements NetBackend {
  readonly offloads = NET_OFFLOAD_FEATURES;
  /** The other end. */
  peer!: NetPairEndpoint;
  /** Frames that found no device at the other end. */
  unplugged = 0;
  private port: NetPort | null = null;
  /** This end's last send was refused; wake it when the other end has room. */
  private waiting = false;

  attach(port: NetPort): void {
    this.port = port;
  }

  detach(port: NetPort): void {
    if (this.port === port) this.port = null;
    this.waiting = false;
  }

  send(frame: Uint8Array, length: number, header: NetHeader): boolean {
    const dst = this.peer.port;
    if (dst === null) {
      this.unplugged++;
      return true;
    }
    if (dst.receive(frame, length, header)) return true;
    this.waiting = true;
    return false;
  }

  resumeRx(): void {
    const peer = this.peer;
    if (!peer.waiting) return;
    peer.waiting = false;
    peer.port?.resumeTx();
  }
}

/** Two cable-connected endpoints: give one to each device. */
export function createNetPair(): [NetPairEndpoint, NetPairEndpoint] {
  const a = new NetPairEndpoint();
  const b = new NetPairEndpoint();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

export interface NetSwitchOptions {
  /** Most ports the switch has (default 16). */
  ports?: number;
  /**
   * 'learning' (default): remember on which port each source MAC was seen and send unicast
   * frames there, flooding only broadcast, multicast and unknown destinations. 'hub': flood
   * every frame to every other port.
   */
  mode?: 'learning' | 'hub';
  /** Most MAC addresses remembered; the oldest is forgotten first (default 1024). */
  macTableSize?: number;
}

/** One port of a {@link NetSwitch}: give it to a device as its backend. */
export class NetSwitchPort implements NetBackend {
  readonly offloads = NET_OFFLOAD_FEATURES;
  /** @internal */ port: NetPort | null = null;
  /** @internal */ waiting = false;

  constructor(
    private readonly sw: NetSwitch,
    /** Index of the port on its switch. */
    readonly index: number,
  ) {}

  attach(port: NetPort): void {
    this.port = port;
  }

  detach(port: NetPort): void {
    if (this.port === port) this.port = null;
    this.waiting = false;
  }

  send(frame: Uint8Array, length: number, header: NetHeader): boolean {
    return this.sw.forward(this, frame, length, header);
  }

  resumeRx(): void {
    this.sw.wake();
  }
}

/**
 * An in-process Ethernet switch with up to N ports. Forwarding is lossless: a frame is
 * delivered only when every port it goes to has room for it; otherwise the sending port is
 * told to wait and is resumed when any port frees room (head-of-line blocking, the price of
 * never dropping). Frames whose destination is the port they came from are filtered.
 */
export class NetSwitch {
  readonly mode: 'learning' | 'hub';
  readonly maxPorts: number;
  private readonly macTableSize: number;
  private readonly ports: NetSwitchPort[] = [];
  /** MAC (48 bits as a number) -> port index. */
  private readonly fdb = new Map<number, number>();
  /** Frames forwarded to at least one port, flooded, and filtered (no destination). */
  forwarded = 0;
  flooded = 0;
  filtered = 0;

  constructor(options: NetSwitchOptions = {}) {
    this.maxPorts = options.ports ?? 16;
    this.mode = options.mode ?? 'learning';
    this.macTableSize = options.macTableSize ?? 1024;
    if (!Number.isInteger(this.maxPorts) || this.maxPorts < 1)
      throw new RangeError('a switch needs at least one port');
  }

  /** A new port. */
  port(): NetSwitchPort {
    if (this.ports.length >= this.maxPorts)
      throw new RangeError(`the switch has only ${this.maxPorts} ports`);
    const p = new NetSwitchPort(this, this.ports.length);
    this.ports.push(p);
    return p;
  }

  /** The port the switch has learned for `mac` (6 bytes or "aa:bb:..."), or -1. */
  lookup(mac: Uint8Array | string): number {
    const bytes = typeof mac === 'string' ? parseMac(mac) : mac;
    return this.fdb.get(macKey(bytes, 0)) ?? -1;
  }

  /** @internal Called by a port's send. */
  forward(from: NetSwitchPort, frame: Uint8Array, length: number, header: NetHeader): boolean {
    if (length < 12) {
      this.filtered++;
      return true;
    }
    const dst = macKey(frame, 0);
    const src = macKey(frame, 6);
    const flood = this.mode === 'hub' || (frame[0]! & 1) !== 0 || !this.fdb.has(dst);
    const target = flood ? -1 : this.fdb.get(dst)!;
    if (!flood && target === from.index) {
      this.learn(src, from.index);
      this.filtered++;
      return true;
    }
    // Lossless: every destination must have room before any gets the frame.
    for (const p of this.ports) {
      if (p === from || p.port === null) continue;
      if (!flood && p.index !== target) continue;
      if (!p.port.canReceive(length)) {
        from.waiting = true;
        return false;
      }
    }
    this.learn(src, from.index);
    let delivered = 0;
    for (const p of this.ports) {
      if (p === from || p.port === null) continue;
      if (!flood && p.index !== target) continue;
      if (p.port.receive(frame, length, header)) delivered++;
    }
    if (delivered === 0) this.filtered++;
    else if (flood) this.flooded++;
    else this.forwarded++;
    return true;
  }

  private learn(src: number, index: number): void {
    // Multicast source addresses are invalid; they are never learned.
    if (this.mode === 'hub' || isMulticastKey(src)) return;
    if (this.fdb.get(src) === index) return;
    this.fdb.delete(src);
    if (this.fdb.size >= this.macTableSize) {
      const oldest = this.fdb.keys().next();
      if (oldest.done !== true) this.fdb.delete(oldest.value);
    }
    this.fdb.set(src, index);
  }

  /** @internal A port has room again: resume every waiting sender (each retries). */
  wake(): void {
    for (const p of this.ports) {
      if (!p.waiting) continue;
      p.waiting = false;
      p.port?.resumeTx();
    }
  }
}

/** The 6 bytes at `buf[at]` as one number (first byte most significant). */
function macKey(buf: Uint8Array, at: number): number {
  return (
    buf[at]! * 2 ** 40 +
    buf[at + 1]! * 2 ** 32 +
    ((buf[at + 2]! << 24) >>> 0) +
    (buf[at + 3]! << 16) +
    (buf[at + 4]! << 8) +
    buf[at + 5]!
  );
}

/** The I/G bit of the first byte: set for group (multicast, broadcast) addresses. */
function isMulticastKey(key: number): boolean {
  return (Math.floor(key / 2 ** 40) & 1) !== 0;
}

/** Parses "52:54:00:12:34:56" (or with '-') into 6 bytes; RangeError otherwise. */
export function parseMac(text: string): Uint8Array {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) {
    throw new RangeError(`"${text}" is not a MAC address`);
  }
  return Uint8Array.from(parts, (p) => Number.parseInt(p, 16));
}

/** Formats 6 bytes as "52:54:00:12:34:56". */
export function formatMac(mac: Uint8Array): string {
  return Array.from(mac.subarray(0, 6), (b) => b.toString(16).padStart(2, '0')).join(':');
}
