import { ChainReader } from '../../iovec/reader.js';
import { ChainWriter } from '../../iovec/writer.js';
import { DescriptorChain } from '../../queue/chain.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../queue/constants.js';
import type { Queue } from '../../queue/queue.js';
import { checkBudget, type DeviceBudgetOptions } from '../budget.js';
import { featureBit, hasFeature, VIRTIO_ID_CONSOLE, VirtioDeviceBase } from '../device.js';
import { type ConsoleBackend, ConsolePipe, type ConsolePort } from './backend.js';
import { ByteQueue } from './byte-queue.js';
import {
  CONSOLE_CONFIG_COLS,
  CONSOLE_CONFIG_EMERG_WR,
  CONSOLE_CONFIG_SIZE,
  type ConsoleRxBuffer,
  type ConsoleTxOutput,
  type ConsoleTxUnsupportedReason,
  parseConsoleRx,
  parseConsoleTx,
  VIRTIO_CONSOLE_F_EMERG_WRITE,
  VIRTIO_CONSOLE_F_SIZE,
} from './request.js';
import {
  bytesToLatin1,
  type ConsoleState,
  type ConsoleStats,
  emptyConsoleStats,
  readConsoleState,
} from './state.js';

/** Queue indices of port 0 (§5.3.2). */
export const CONSOLE_RX_QUEUE = 0;
export const CONSOLE_TX_QUEUE = 1;

export interface ConsoleOptions extends DeviceBudgetOptions {
  /** Where the bytes go and come from (default: a new {@link ConsolePipe}). */
  backend?: ConsoleBackend;
  /** Console size; offers VIRTIO_CONSOLE_F_SIZE when given. */
  size?: { cols: number; rows: number };
  /** Offer VIRTIO_CONSOLE_F_EMERG_WRITE (default true). */
  emergencyWrite?: boolean;
  /** Size of each queue (default 128). */
  queueSize?: number;
  /** Input bytes held before the backend is asked to slow down (default 64 KiB). */
  inputHighWater?: number;
  /**
   * Most bytes of one transmit chain handed to the backend (default
   * {@link CONSOLE_DEFAULT_MAX_BYTES_PER_TRANSMIT}); the rest of a longer chain is dropped
   * and counted in {@link ConsoleDevice.txBytesDropped}.
   */
  maxBytesPerTransmit?: number;
}

/**
 * Default cap on the bytes taken from one transmit chain: 64 KiB. Linux never puts more in
 * one buffer (a page from the hvc console, at most 32 KiB from a port's write), so only a
 * hostile chain (gigabytes of aliased buffers) is cut.
 */
export const CONSOLE_DEFAULT_MAX_BYTES_PER_TRANSMIT = 64 * 1024;

/** Bytes read from a transmit chain per call to the backend. */
const OUTPUT_CHUNK = 4096;

/**
 * virtio-console (device id 3, VIRTIO 1.2 §5.3), port 0 only (no MULTIPORT): a receiveq and a
 * transmitq carrying a byte stream to and from a pluggable {@link ConsoleBackend}.
 *
 * Input waits inside the device until the driver posts receive buffers and is never dropped;
 * above a high-water mark the backend is asked to slow down. Output is read chain by chain
 * and handed to the backend, which may pause it. The optional console size is reported in the
 * configuration space ({@link resize} raises a configuration change interrupt), and emergency
 * writes to `emerg_wr` go straight to the backend, on a configured device or not (§5.3.5.1).
 */
export class ConsoleDevice extends VirtioDeviceBase {
  readonly backend: ConsoleBackend;
  readonly stats: ConsoleStats = emptyConsoleStats();
  /** The reason of the last transmit chain dropped as unsupported. */
  lastTxUnsupported: ConsoleTxUnsupportedReason | null = null;
  private readonly highWater: number;
  private readonly input = new ByteQueue();
  private readonly port: ConsolePort;
  private readonly rxChain = new DescriptorChain();
  private readonly txChain = new DescriptorChain();
  private readonly writer = new ChainWriter();
  private readonly reader = new ChainReader();
  private readonly rxInfo: ConsoleRxBuffer = { kind: 'buffer', capacity: 0 };
  private readonly txInfo: ConsoleTxOutput = { kind: 'output', length: 0 };
  /** The device's scratch buffer for output. */
  private readonly scratch = new Uint8Array(OUTPUT_CHUNK);
  /** Bytes of transmit chains past {@link ConsoleOptions.maxBytesPerTransmit}, dropped. */
  txBytesDropped = 0;
  private readonly maxTransmit: number;
  private outputPaused = false;
  private inputRefused = false;
  private busy = 0;
  private again = 0;

  constructor(options: ConsoleOptions = {}) {
    let features =
      featureBit(VIRTIO_F_EVENT_IDX) |
      featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_RING_PACKED);
    if (options.size !== undefined) features |= featureBit(VIRTIO_CONSOLE_F_SIZE);
    if (options.emergencyWrite ?? true) features |= featureBit(VIRTIO_CONSOLE_F_EMERG_WRITE);
    const q = options.queueSize ?? 128;
    super(VIRTIO_ID_CONSOLE, [q, q], features, CONSOLE_CONFIG_SIZE, options);
    this.maxTransmit =
      checkBudget('maxBytesPerTransmit', options.maxBytesPerTransmit) ??
      CONSOLE_DEFAULT_MAX_BYTES_PER_TRANSMIT;
    this.highWater = options.inputHighWater ?? 64 * 1024;
    if (!(this.highWater >= 1)) throw new RangeError('inputHighWater must be at least 1');
    if (options.size !== undefined) this.setSize(options.size.cols, options.size.rows);
    this.backend = options.backend ?? new ConsolePipe();
    this.port = {
      input: (bytes) => this.takeInput(bytes),
      outputReady: () => {
        this.outputPaused = false;
        this.queueNotify(CONSOLE_TX_QUEUE);
      },
    };
    this.backend.attach(this.port);
  }

  /** Input bytes waiting for receive buffers. */
  get pendingInput(): number {
    return this.input.length;
  }

  get cols(): number {
    return this.config[0]! | (this.config[1]! << 8);
  }

  get rows(): number {
    return this.config[2]! | (this.config[3]! << 8);
  }

  private setSize(cols: number, rows: number): Uint8Array {
    if (
      !(
        Number.isInteger(cols) &&
        Number.isInteger(rows) &&
        cols >= 0 &&
        rows >= 0 &&
        cols <= 0xffff &&
        rows <= 0xffff
      )
    ) {
      throw new RangeError(`console size ${cols}x${rows} is not two u16`);
    }
    const b = Uint8Array.of(cols & 0xff, cols >> 8, rows & 0xff, rows >> 8);
    this.config.set(b, CONSOLE_CONFIG_COLS);
    return b;
  }

  /**
   * Changes the console size: a configuration change notification tells the driver to read
   * it again (§5.3.6, item 3). Only with VIRTIO_CONSOLE_F_SIZE offered.
   */
  resize(cols: number, rows: number): void {
    if (!hasFeature(this.offeredFeatures, VIRTIO_CONSOLE_F_SIZE))
      throw new TypeError('the console was built without a size');
    this.updateConfig(CONSOLE_CONFIG_COLS, this.setSize(cols, rows));
  }

  /** Processes both queues as if the driver had notified them (after a restore). */
  kick(): void {
    this.queueNotify(CONSOLE_TX_QUEUE);
    this.queueNotify(CONSOLE_RX_QUEUE);
  }

  /** Detaches the device from its backend. */
  detach(): void {
    this.backend.detach(this.port);
  }

  override writeConfig(offset: number, data: Uint8Array): void {
    // §5.3.5.1: emerg_wr may be written at any time, even on an unconfigured device; the
    // lower byte goes to the output. A write that covers it from an earlier offset (a
    // vhost-user SET_CONFIG of the whole space) writes it too; the other fields are read-only.
    const at = CONSOLE_CONFIG_EMERG_WR - offset;
    if (at < 0 || at >= data.length) return;
    if (!hasFeature(this.offeredFeatures, VIRTIO_CONSOLE_F_EMERG_WRITE)) return;
    this.stats.emergencyBytes++;
    this.backend.output(data.subarray(at, at + 1));
  }

  protected processQueue(index: number, queue: Queue): void {
    if (index !== CONSOLE_RX_QUEUE && index !== CONSOLE_TX_QUEUE) return;
    // A backend or interrupt callback may come back here while a pass runs: the running pass
    // goes round again instead of nesting.
    const bit = 1 << index;
    if ((this.busy & bit) !== 0) {
      this.again |= bit;
      return;
    }
    this.busy |= bit;
    try {
      do {
        this.again &= ~bit;
        if (index === CONSOLE_RX_QUEUE) this.deliverInput(queue);
        else this.readOutput(queue);
      } while ((this.again & bit) !== 0);
    } finally {
      this.busy &= ~bit;
    }
  }

  private takeInput(bytes: Uint8Array): boolean {
    this.input.push(bytes);
    this.queueNotify(CONSOLE_RX_QUEUE);
    if (this.input.length >= this.highWater) {
      this.inputRefused = true;
      return false;
    }
    return true;
  }

  private deliverInput(q: Queue): void {
    let any = false;
    while (this.input.length > 0 && this.withinBudget(CONSOLE_RX_QUEUE)) {
      const c = q.popOrEnableNotification(this.rxChain);
      if (c === null) break;
      const req = parseConsoleRx(c, this.rxInfo);
      let n = 0;
      if (req.kind === 'unsupported') {
        this.stats.rxBadBuffers++;
      } else {
        n = this.input.writeTo(this.writer.reset(c), req.capacity);
        this.stats.bytesIn += n;
        this.spend(n);
      }
      this.writer.reset();
      q.addUsed(c.head, n);
      any = true;
    }
    if (any) this.publish(CONSOLE_RX_QUEUE);
    if (this.inputRefused && this.input.length < this.highWater / 2) {
      this.inputRefused = false;
      this.backend.inputDrained();
    }
  }

  private readOutput(q: Queue): void {
    let any = false;
    while (!this.outputPaused && this.withinBudget(CONSOLE_TX_QUEUE)) {
      const c = q.popOrEnableNotification(this.txChain);
      if (c === null) break;
      const req = parseConsoleTx(c, this.txInfo);
      if (req.kind === 'unsupported') {
        this.stats.txUnsupported++;
        this.lastTxUnsupported = req.reason;
      } else {
        const r = this.reader.reset(c);
        // At most maxTransmit bytes of a chain (a hostile one may alias gigabytes); the
        // backend's back-pressure applies from the next chain on.
        const length = Math.min(req.length, this.maxTransmit);
        let left = length;
        while (left > 0) {
          const k = r.read(this.scratch, 0, Math.min(left, OUTPUT_CHUNK));
          if (k === 0) break;
          left -= k;
          if (!this.backend.output(this.scratch.subarray(0, k))) this.outputPaused = true;
        }
        this.stats.bytesOut += length;
        this.txBytesDropped += req.length - length;
        this.spend(length);
        r.reset();
      }
      q.addUsed(c.head, 0);
      any = true;
    }
    if (any) this.publish(CONSOLE_TX_QUEUE);
  }

  protected override saveDevice(): ConsoleState {
    return {
      pendingInput: bytesToLatin1(this.input.toBytes()),
      cols: this.cols,
      rows: this.rows,
      stats: { ...this.stats },
    };
  }

  /** Restores the pending input (replacing what the device holds), the size and the counters. */
  protected override prepareDevice(state: unknown): () => void {
    const s = readConsoleState(state);
    return () => {
      this.input.clear();
      this.input.push(s.pendingInput);
      this.config.set(
        Uint8Array.of(s.cols & 0xff, s.cols >> 8, s.rows & 0xff, s.rows >> 8),
        CONSOLE_CONFIG_COLS,
      );
      Object.assign(this.stats, s.stats);
    };
  }
}
