import { featureBit, VIRTIO_ID_NET } from '../../devices/device.js';
import {
  NET_CONFIG_MAC,
  NET_CONFIG_MTU,
  NET_CONFIG_STATUS,
  type NetHeader,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_SIZE,
  VIRTIO_NET_S_LINK_UP,
} from '../../devices/net/request.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { VIRTIO_F_VERSION_1 } from '../../queue/constants.js';
import { INT_CONFIG_CHANGE } from '../../transport/mmio.js';
import type { GuestAllocator } from '../allocator.js';
import { type MmioBus, MmioGuestDriver } from '../mmio.js';
import type { DriverQueue } from '../queue.js';
import { DeviceBehaviourError, type DriverBuffer } from '../split.js';
import { type InterruptWaiter, sameThread } from './waiter.js';

export interface NetDriverOptions {
  /** How to wait for the device (default {@link sameThread}). */
  waiter?: InterruptWaiter;
  /** Size of each queue (default: the device's maximum, at most 256). */
  queueSize?: number;
  /**
   * Bytes per receive buffer, virtio header included. Default: 1526 (a 1514-byte frame and
   * the header, §5.1.6.3) with MRG_RXBUF or without guest TSO, else 65601; raised to fit the
   * MTU when MTU is negotiated and MRG_RXBUF is not.
   */
  rxBufferSize?: number;
  /** Receive buffers allocated (default: the queue size, at most 16 buffers over 4 KiB). */
  rxBuffers?: number;
  /** Post every receive buffer at start (default true). */
  postRxBuffers?: boolean;
  /** Post a receive buffer again once its frame has been read (default true). */
  repostRx?: boolean;
  /** Descriptors each receive buffer is split into (default 1). */
  rxDescriptors?: number;
  /** Transmit buffers (default: the queue size, at most 64, at most 16 when over 4 KiB). */
  txSlots?: number;
  /** Bytes per transmit buffer, header included (default: 65601 with host TSO, else 1530). */
  txSlotSize?: number;
  /** Put the virtio header and the frame in two descriptors (default false: one). */
  txSeparateHeader?: boolean;
  /**
   * Start every receive and transmit buffer this many bytes (0 to 15) past a 16-byte boundary
   * (default 0), to reach a device's paths for buffers off a word boundary.
   */
  bufferMisalign?: number;
  /** Waits before {@link NetGuestDriver.receive} / {@link NetGuestDriver.send} give up (default 10000). */
  maxWaits?: number;
}

/** A frame the driver received. */
export interface ReceivedFrame {
  data: Uint8Array;
  header: NetHeader;
  /** `num_buffers`: how many receive buffers the frame was spread over. */
  buffers: number;
}

/**
 * A guest driver for virtio-net over virtio-mmio (VIRTIO 1.2 §5.1.5): negotiates the features
 * it is given, reads MAC, status and MTU, sets up receiveq1 and transmitq1 in the negotiated
 * ring format, keeps the receive queue filled, sends frames with a virtio header, and
 * reassembles frames spread over several receive buffers (VIRTIO_NET_F_MRG_RXBUF).
 */
export class NetGuestDriver {
  readonly mmio: MmioGuestDriver;
  readonly memory: GuestMemory;
  features = 0n;
  /** MAC address from the configuration space (VIRTIO_NET_F_MAC), else null. */
  mac: Uint8Array | null = null;
  /** MTU from the configuration space (VIRTIO_NET_F_MTU), else null. */
  mtu: number | null = null;
  /** `status` (VIRTIO_NET_F_STATUS), else VIRTIO_NET_S_LINK_UP (§5.1.4.2: assume the link is up). */
  status = VIRTIO_NET_S_LINK_UP;
  /** Configuration change interrupts seen. */
  configChanges = 0;
  /** Receive buffers the device returned with less than a header (unsupported buffers). */
  rxErrors = 0;

  private readonly options: NetDriverOptions;
  private readonly waiter: InterruptWaiter;
  private rx: DriverQueue | null = null;
  private tx: DriverQueue | null = null;
  private mergeable = false;
  private rxSize = 0;
  private rxDescs = 1;
  private rxAddr = new Float64Array(0);
  private rxFree: number[] = [];
  private rxOfId = new Int32Array(0);
  private txSize = 0;
  private txAddr = new Float64Array(0);
  private txFree: number[] = [];
  private txOfId = new Int32Array(0);
  /** Buffer sizes of the receive and transmit buffers allocated so far. */
  private readonly allocated = [0, 0];

  constructor(
    bus: MmioBus,
    memory: GuestMemory,
    alloc: GuestAllocator,
    options: NetDriverOptions = {},
  ) {
    this.mmio = new MmioGuestDriver(bus, memory, alloc);
    this.memory = memory;
    this.options = options;
    this.waiter = options.waiter ?? sameThread;
  }

  /** True when the link is up (status bit, or assumed without VIRTIO_NET_F_STATUS). */
  get linkUp(): boolean {
    return (this.status & VIRTIO_NET_S_LINK_UP) !== 0;
  }

  /** Receive buffers posted to the device and not yet returned. */
  get rxPosted(): number {
    return this.rxAddr.length - this.rxFree.length;
  }

  /** Transmitted frames the device has not completed yet. */
  get txPending(): number {
    return this.txAddr.length - this.txFree.length;
  }

  private has(bit: number): boolean {
    return (this.features & (1n << BigInt(bit))) !== 0n;
  }

  /**
   * Initialises the device (§3.1.1, §5.1.5): reset, negotiation of `wanted & offered` (or
   * exactly `force`), configuration, queues, buffers, DRIVER_OK, receive buffers posted.
   * Throws FeaturesRefusedError when the device refuses the features. Returns the features.
   */
  init(wanted: bigint, force?: bigint): bigint {
    const m = this.mmio;
    if (m.probe() !== VIRTIO_ID_NET) throw new Error('not a network device');
    // §6.1: a driver accepts VIRTIO_F_VERSION_1 when it is offered (`force` is taken as given).
    this.features = m.negotiate(wanted | featureBit(VIRTIO_F_VERSION_1), force);
    this.mergeable = this.has(VIRTIO_NET_F_MRG_RXBUF);
    this.readConfig();
    const o = this.options;
    const qsize = Math.min(o.queueSize ?? 256, m.queueMaxSize(0), m.queueMaxSize(1));
    this.rx = m.setupQueue(0, qsize);
    this.tx = m.setupQueue(1, qsize);
    const guestTso = this.has(VIRTIO_NET_F_GUEST_TSO4) || this.has(VIRTIO_NET_F_GUEST_TSO6);
    const mtuBuf = this.mtu !== null ? VIRTIO_NET_HDR_SIZE + this.mtu + 18 : 0;
    const rxDefault = this.mergeable ? 1526 : guestTso ? 65601 : Math.max(1526, mtuBuf);
    this.rxSize = o.rxBufferSize ?? rxDefault;
    this.rxDescs = o.rxDescriptors ?? 1;
    if (!(this.rxDescs >= 1 && this.rxSize >= this.rxDescs))
      throw new RangeError('bad receive buffer layout');
    const nRx = o.rxBuffers ?? (this.rxSize > 4096 ? Math.min(16, this.rx.size) : this.rx.size);
    this.rxAddr = this.buffers(this.rxAddr, nRx, this.rxSize);
    this.rxFree = Array.from({ length: nRx }, (_, i) => nRx - 1 - i);
    this.rxOfId = new Int32Array(this.rx.size).fill(-1);
    const hostTso = this.has(VIRTIO_NET_F_HOST_TSO4) || this.has(VIRTIO_NET_F_HOST_TSO6);
    this.txSize = o.txSlotSize ?? (hostTso ? 65601 : Math.max(1530, mtuBuf));
    const nTx = o.txSlots ?? Math.min(this.tx.size, this.txSize > 4096 ? 16 : 64);
    this.txAddr = this.buffers(this.txAddr, nTx, this.txSize);
    this.txFree = Array.from({ length: nTx }, (_, i) => nTx - 1 - i);
    this.txOfId = new Int32Array(this.tx.size).fill(-1);
    m.start();
    if (o.postRxBuffers ?? true) this.postRx();
    return this.features;
  }

  /**
   * `count` buffers of `size` bytes: those of the previous initialisation when they are as
   * many and large enough (so re-initialising does not exhaust the allocator), else new ones.
   */
  private buffers(
    prev: Float64Array<ArrayBuffer>,
    count: number,
    size: number,
  ): Float64Array<ArrayBuffer> {
    const sizes = this.allocated;
    const key = prev === this.rxAddr ? 0 : 1;
    if (prev.length === count && sizes[key]! >= size) return prev;
    sizes[key] = size;
    const skew = this.options.bufferMisalign ?? 0;
    if (!(Number.isInteger(skew) && skew >= 0 && skew < 16))
      throw new RangeError(`bufferMisalign ${skew} is not an integer in 0..15`);
    return Float64Array.from(
      { length: count },
      () => this.mmio.alloc.alloc(size + skew, 16) + skew,
    );
  }

  /** Reads MAC, status and MTU from the configuration space (§5.1.4). */
  readConfig(): void {
    const m = this.mmio;
    if (this.has(VIRTIO_NET_F_MAC)) {
      const mac = new Uint8Array(6);
      for (let i = 0; i < 6; i++) mac[i] = m.readConfig(NET_CONFIG_MAC + i, 1);
      this.mac = mac;
    }
    this.status = this.has(VIRTIO_NET_F_STATUS)
      ? m.readConfig(NET_CONFIG_STATUS, 2)
      : VIRTIO_NET_S_LINK_UP;
    this.mtu = this.has(VIRTIO_NET_F_MTU) ? m.readConfig(NET_CONFIG_MTU, 2) : null;
  }

  /** Acknowledges the interrupt; on a configuration change, reads the status again. */
  handleInterrupt(): number {
    const bits = this.mmio.ackInterrupt();
    if ((bits & INT_CONFIG_CHANGE) !== 0) {
      this.configChanges++;
      if (this.has(VIRTIO_NET_F_STATUS)) this.status = this.mmio.readConfig(NET_CONFIG_STATUS, 2);
    }
    return bits;
  }

  private queues(): [DriverQueue, DriverQueue] {
    if (this.rx === null || this.tx === null) throw new Error('the driver is not initialised');
    return [this.rx, this.tx];
  }

  /** Posts up to `count` free receive buffers (default: all) and notifies. Returns how many. */
  postRx(count = Number.POSITIVE_INFINITY): number {
    const [rx] = this.queues();
    let n = 0;
    const per = Math.floor(this.rxSize / this.rxDescs);
    while (n < count && this.rxFree.length > 0 && rx.numFree >= this.rxDescs) {
      const b = this.rxFree.pop()!;
      const base = this.rxAddr[b]!;
      const bufs: DriverBuffer[] = [];
      for (let d = 0; d < this.rxDescs; d++) {
        const len = d + 1 < this.rxDescs ? per : this.rxSize - per * (this.rxDescs - 1);
        bufs.push({ addr: base + d * per, len });
      }
      const id = rx.add([], bufs);
      this.rxOfId[id] = b;
      n++;
    }
    if (n > 0) this.mmio.kick(0);
    return n;
  }

  /** Collects completed transmissions; returns how many. */
  reapTx(): number {
    const [, tx] = this.queues();
    let n = 0;
    for (let id = tx.popUsed(); id >= 0; id = tx.popUsed()) {
      const slot = this.txOfId[id]!;
      if (slot < 0) throw new DeviceBehaviourError(`transmit id ${id} is not in flight`);
      this.txOfId[id] = -1;
      this.txFree.push(slot);
      n++;
    }
    return n;
  }

  /**
   * Queues `frame` for transmission with the given header fields (default: a plain frame) and
   * notifies the device. False when no transmit buffer is free.
   */
  trySend(frame: Uint8Array, header: Partial<NetHeader> = {}): boolean {
    const [, tx] = this.queues();
    this.handleInterrupt();
    this.reapTx();
    if (VIRTIO_NET_HDR_SIZE + frame.length > this.txSize) {
      throw new RangeError(
        `a frame of ${frame.length} bytes does not fit a ${this.txSize}-byte transmit buffer`,
      );
    }
    // §5.1.4.1: with VIRTIO_NET_F_MTU, no frame above mtu (plus the Ethernet header) unless it
    // is to be segmented.
    const gso = (header.gsoType ?? VIRTIO_NET_HDR_GSO_NONE) & ~VIRTIO_NET_HDR_GSO_ECN;
    if (this.mtu !== null && gso === VIRTIO_NET_HDR_GSO_NONE && frame.length > this.mtu + 14) {
      throw new RangeError(
        `a frame of ${frame.length} bytes exceeds the negotiated MTU ${this.mtu} (plus 14)`,
      );
    }
    const descs = this.options.txSeparateHeader === true ? 2 : 1;
    if (this.txFree.length === 0 || tx.numFree < descs) return false;
    const slot = this.txFree.pop()!;
    const addr = this.txAddr[slot]!;
    const mem = this.memory;
    mem.writeU8(addr, header.flags ?? 0);
    mem.writeU8(addr + 1, header.gsoType ?? 0);
    mem.writeU16(addr + 2, header.hdrLen ?? 0);
    mem.writeU16(addr + 4, header.gsoSize ?? 0);
    mem.writeU16(addr + 6, header.csumStart ?? 0);
    mem.writeU16(addr + 8, header.csumOffset ?? 0);
    mem.writeU16(addr + 10, 0); // §5.1.6.2.1: num_buffers is zero on transmit
    mem.write(addr + VIRTIO_NET_HDR_SIZE, frame);
    const id =
      descs === 2
        ? tx.add([
            { addr, len: VIRTIO_NET_HDR_SIZE },
            { addr: addr + VIRTIO_NET_HDR_SIZE, len: frame.length },
          ])
        : tx.add([{ addr, len: VIRTIO_NET_HDR_SIZE + frame.length }]);
    this.txOfId[id] = slot;
    this.mmio.kick(1);
    return true;
  }

  /** Sends `frame`, waiting for a free transmit buffer. */
  async send(frame: Uint8Array, header: Partial<NetHeader> = {}): Promise<void> {
    const max = this.options.maxWaits ?? 10000;
    for (let i = 0; ; i++) {
      if (this.trySend(frame, header)) return;
      if (i >= max) throw new Error(`no transmit buffer after ${max} waits`);
      await this.waiter.wait();
    }
  }

  /** The next received frame, or null. Reposts the buffers it used (unless repostRx is false). */
  tryReceive(): ReceivedFrame | null {
    const [rx] = this.queues();
    this.handleInterrupt();
    for (;;) {
      const id = rx.popUsed();
      if (id < 0) return null;
      const first = this.takeRx(id);
      const len = rx.lastUsedLen;
      if (len < VIRTIO_NET_HDR_SIZE) {
        this.rxErrors++;
        this.releaseRx(first);
        continue;
      }
      const mem = this.memory;
      const addr = this.rxAddr[first]!;
      const header: NetHeader = {
        flags: mem.readU8(addr),
        gsoType: mem.readU8(addr + 1),
        hdrLen: mem.readU16(addr + 2),
        gsoSize: mem.readU16(addr + 4),
        csumStart: mem.readU16(addr + 6),
        csumOffset: mem.readU16(addr + 8),
      };
      const numBuffers = mem.readU16(addr + 10);
      // §5.1.6.4.1: num_buffers is 1 without MRG_RXBUF, at least 1 with it.
      if (numBuffers < 1 || (!this.mergeable && numBuffers !== 1)) {
        throw new DeviceBehaviourError(
          `num_buffers ${numBuffers} with MRG_RXBUF ${this.mergeable ? 'on' : 'off'}`,
        );
      }
      const pieces: Uint8Array[] = [
        mem.slice(addr + VIRTIO_NET_HDR_SIZE, len - VIRTIO_NET_HDR_SIZE),
      ];
      const used = [first];
      for (let k = 1; k < numBuffers; k++) {
        const next = rx.popUsed();
        // §5.1.6.4.1: the device uses all buffers of a frame together.
        if (next < 0)
          throw new DeviceBehaviourError(`frame over ${numBuffers} buffers, only ${k} used`);
        const b = this.takeRx(next);
        used.push(b);
        pieces.push(mem.slice(this.rxAddr[b]!, rx.lastUsedLen));
      }
      const total = pieces.reduce((n, p) => n + p.length, 0);
      const data = new Uint8Array(total);
      let at = 0;
      for (const p of pieces) {
        data.set(p, at);
        at += p.length;
      }
      for (const b of used) this.releaseRx(b);
      if (this.options.repostRx ?? true) this.postRx();
      return { data, header, buffers: numBuffers };
    }
  }

  private takeRx(id: number): number {
    const b = this.rxOfId[id] ?? -1;
    if (b < 0) throw new DeviceBehaviourError(`receive id ${id} is not in flight`);
    this.rxOfId[id] = -1;
    return b;
  }

  private releaseRx(b: number): void {
    this.rxFree.push(b);
  }

  /** Waits for the next frame. */
  async receive(): Promise<ReceivedFrame> {
    const max = this.options.maxWaits ?? 10000;
    for (let i = 0; ; i++) {
      const f = this.tryReceive();
      if (f !== null) return f;
      if (i >= max) throw new Error(`no frame after ${max} waits`);
      await this.waiter.wait();
    }
  }

  /** Every frame available now. */
  receiveAll(): ReceivedFrame[] {
    const out: ReceivedFrame[] = [];
    for (let f = this.tryReceive(); f !== null; f = this.tryReceive()) out.push(f);
    return out;
  }

  /** Resets the device (status 0); {@link init} starts over. */
  reset(): void {
    this.mmio.reset();
    this.rx = null;
    this.tx = null;
  }
}
