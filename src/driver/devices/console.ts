import {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_EMERG_WR,
  CONSOLE_CONFIG_ROWS,
  VIRTIO_CONSOLE_F_SIZE,
} from '../../devices/console/request.js';
import { featureBit, VIRTIO_ID_CONSOLE } from '../../devices/device.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { VIRTIO_F_VERSION_1 } from '../../queue/constants.js';
import { INT_CONFIG_CHANGE } from '../../transport/mmio.js';
import type { GuestAllocator } from '../allocator.js';
import { type MmioBus, MmioGuestDriver } from '../mmio.js';
import type { DriverQueue } from '../queue.js';
import { DeviceBehaviourError } from '../split.js';
import { type InterruptWaiter, sameThread } from './waiter.js';

export interface ConsoleDriverOptions {
  /** How to wait for the device (default {@link sameThread}). */
  waiter?: InterruptWaiter;
  /** Size of each queue (default: the device's maximum, at most 64). */
  queueSize?: number;
  /** Receive buffers and their size (default: the queue size, 256 bytes each). */
  rxBuffers?: number;
  rxBufferSize?: number;
  /** Post every receive buffer at start (default true). */
  postRxBuffers?: boolean;
  /** Transmit buffers and their size (default 16 of 1024 bytes). */
  txSlots?: number;
  txSlotSize?: number;
  /** Waits before the async calls give up (default 10000). */
  maxWaits?: number;
}

/**
 * A guest driver for virtio-console port 0 over virtio-mmio (VIRTIO 1.2 §5.3.5): negotiates,
 * reads the console size (VIRTIO_CONSOLE_F_SIZE), keeps the receiveq filled and writes bytes
 * through the transmitq; also the emergency write register.
 */
export class ConsoleGuestDriver {
  readonly mmio: MmioGuestDriver;
  readonly memory: GuestMemory;
  features = 0n;
  cols = 0;
  rows = 0;
  configChanges = 0;
  private readonly options: ConsoleDriverOptions;
  private readonly waiter: InterruptWaiter;
  private rx: DriverQueue | null = null;
  private tx: DriverQueue | null = null;
  private rxSize = 0;
  private rxAddr = new Float64Array(0);
  private rxFree: number[] = [];
  private rxOfId = new Int32Array(0);
  private txSize = 0;
  private txAddr = new Float64Array(0);
  private txFree: number[] = [];
  private txOfId = new Int32Array(0);

  constructor(
    bus: MmioBus,
    memory: GuestMemory,
    alloc: GuestAllocator,
    options: ConsoleDriverOptions = {},
  ) {
    this.mmio = new MmioGuestDriver(bus, memory, alloc);
    this.memory = memory;
    this.options = options;
    this.waiter = options.waiter ?? sameThread;
  }

  /** Initialises the device with `wanted & offered` features (or exactly `force`). */
  init(wanted: bigint, force?: bigint): bigint {
    const m = this.mmio;
    if (m.probe() !== VIRTIO_ID_CONSOLE) throw new Error('not a console device');
    // §6.1: a driver accepts VIRTIO_F_VERSION_1 when it is offered (`force` is taken as given).
    this.features = m.negotiate(wanted | featureBit(VIRTIO_F_VERSION_1), force);
    this.readSize();
    const o = this.options;
    const qsize = Math.min(o.queueSize ?? 64, m.queueMaxSize(0), m.queueMaxSize(1));
    this.rx = m.setupQueue(0, qsize);
    this.tx = m.setupQueue(1, qsize);
    this.rxSize = o.rxBufferSize ?? 256;
    const nRx = o.rxBuffers ?? this.rx.size;
    this.rxAddr = Float64Array.from({ length: nRx }, () => m.alloc.alloc(this.rxSize, 16));
    this.rxFree = Array.from({ length: nRx }, (_, i) => nRx - 1 - i);
    this.rxOfId = new Int32Array(this.rx.size).fill(-1);
    this.txSize = o.txSlotSize ?? 1024;
    const nTx = o.txSlots ?? Math.min(16, this.tx.size);
    this.txAddr = Float64Array.from({ length: nTx }, () => m.alloc.alloc(this.txSize, 16));
    this.txFree = Array.from({ length: nTx }, (_, i) => nTx - 1 - i);
    this.txOfId = new Int32Array(this.tx.size).fill(-1);
    m.start();
    if (o.postRxBuffers ?? true) this.postRx();
    return this.features;
  }

  /** Reads cols and rows (only meaningful with VIRTIO_CONSOLE_F_SIZE, §5.3.4). */
  readSize(): void {
    if ((this.features & (1n << BigInt(VIRTIO_CONSOLE_F_SIZE))) === 0n) return;
    this.cols = this.mmio.readConfig(CONSOLE_CONFIG_COLS, 2);
    this.rows = this.mmio.readConfig(CONSOLE_CONFIG_ROWS, 2);
  }

  /** Acknowledges the interrupt; on a configuration change reads the size again (§5.3.6). */
  handleInterrupt(): number {
    const bits = this.mmio.ackInterrupt();
    if ((bits & INT_CONFIG_CHANGE) !== 0) {
      this.configChanges++;
      this.readSize();
    }
    return bits;
  }

  private queues(): [DriverQueue, DriverQueue] {
    if (this.rx === null || this.tx === null) throw new Error('the driver is not initialised');
    return [this.rx, this.tx];
  }

  /** Posts up to `count` free receive buffers (default all) and notifies; returns how many. */
  postRx(count = Number.POSITIVE_INFINITY): number {
    const [rx] = this.queues();
    let n = 0;
    while (n < count && this.rxFree.length > 0 && rx.numFree > 0) {
      const b = this.rxFree.pop()!;
      this.rxOfId[rx.add([], [{ addr: this.rxAddr[b]!, len: this.rxSize }])] = b;
      n++;
    }
    if (n > 0) this.mmio.kick(0);
    return n;
  }

  private reapTx(): void {
    const [, tx] = this.queues();
    for (let id = tx.popUsed(); id >= 0; id = tx.popUsed()) {
      const slot = this.txOfId[id] ?? -1;
      if (slot < 0) throw new DeviceBehaviourError(`transmit id ${id} is not in flight`);
      this.txOfId[id] = -1;
      this.txFree.push(slot);
    }
  }

  /** Transmitted buffers the device has not completed. */
  get txPending(): number {
    return this.txAddr.length - this.txFree.length;
  }

  /** Queues as many of `bytes` as free transmit buffers hold; returns how many. */
  tryWrite(bytes: Uint8Array): number {
    const [, tx] = this.queues();
    this.handleInterrupt();
    this.reapTx();
    let done = 0;
    while (done < bytes.length && this.txFree.length > 0 && tx.numFree > 0) {
      const slot = this.txFree.pop()!;
      const n = Math.min(this.txSize, bytes.length - done);
      const addr = this.txAddr[slot]!;
      this.memory.write(addr, bytes.subarray(done, done + n));
      this.txOfId[tx.add([{ addr, len: n }])] = slot;
      done += n;
    }
    if (done > 0) this.mmio.kick(1);
    return done;
  }

  /** Writes all of `bytes` (a string is UTF-8 encoded), waiting for transmit buffers. */
  async write(data: Uint8Array | string): Promise<void> {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    const max = this.options.maxWaits ?? 10000;
    let done = 0;
    for (let i = 0; done < bytes.length; i++) {
      done += this.tryWrite(bytes.subarray(done));
      if (done >= bytes.length) return;
      if (i >= max) throw new Error(`output stalled after ${max} waits`);
      await this.waiter.wait();
    }
  }

  /** Waits until the device has consumed every transmitted buffer. */
  async flush(): Promise<void> {
    const max = this.options.maxWaits ?? 10000;
    for (let i = 0; ; i++) {
      this.handleInterrupt();
      this.reapTx();
      if (this.txPending === 0) return;
      if (i >= max) throw new Error(`output not consumed after ${max} waits`);
      await this.waiter.wait();
    }
  }

  /** Every input byte available now (reposting the buffers), or null when there is none. */
  tryRead(): Uint8Array | null {
    const [rx] = this.queues();
    this.handleInterrupt();
    const pieces: Uint8Array[] = [];
    for (let id = rx.popUsed(); id >= 0; id = rx.popUsed()) {
      const b = this.rxOfId[id] ?? -1;
      if (b < 0) throw new DeviceBehaviourError(`receive id ${id} is not in flight`);
      this.rxOfId[id] = -1;
      if (rx.lastUsedLen > 0) pieces.push(this.memory.slice(this.rxAddr[b]!, rx.lastUsedLen));
      this.rxFree.push(b);
    }
    // The pieces are views of the buffers: copy them out before the buffers go back.
    const out = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of pieces) {
      out.set(p, at);
      at += p.length;
    }
    this.postRx();
    return pieces.length === 0 ? null : out;
  }

  /** Waits until input arrives and returns all of it. */
  async read(): Promise<Uint8Array> {
    const max = this.options.maxWaits ?? 10000;
    for (let i = 0; ; i++) {
      const b = this.tryRead();
      if (b !== null) return b;
      if (i >= max) throw new Error(`no input after ${max} waits`);
      await this.waiter.wait();
    }
  }

  /** Reads exactly `n` bytes. */
  async readExactly(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const b = await this.read();
      if (at + b.length > n) throw new Error(`read ${at + b.length} bytes, expected ${n}`);
      out.set(b, at);
      at += b.length;
    }
    return out;
  }

  /** Writes one byte through emerg_wr (VIRTIO_CONSOLE_F_EMERG_WRITE, §5.3.5). */
  emergencyWrite(byte: number): void {
    this.mmio.writeConfig(CONSOLE_CONFIG_EMERG_WR, 4, byte & 0xff);
  }

  reset(): void {
    this.mmio.reset();
    this.rx = null;
    this.tx = null;
  }
}
