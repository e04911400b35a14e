import {
  type DeviceContext,
  hasFeature,
  type InterruptSink,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
  type VirtioDevice,
} from '../devices/device.js';
import { QueueConfigError, SnapshotError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { joinU64 } from '../memory/guest-memory.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../queue/constants.js';
import { createQueue } from '../queue/factory.js';
import { consoleLogger, type Logger } from '../queue/logger.js';
import type { Queue } from '../queue/queue.js';
import { type MmioState, prepareMmioDevice, readMmioState } from './mmio-state.js';

export type { MmioState } from './mmio-state.js';

import {
  INT_CONFIG_CHANGE,
  INT_USED_BUFFER,
  MMIO,
  MMIO_MAGIC,
  MMIO_VERSION,
  VIRTQ_VENDOR_ID,
} from './mmio-registers.js';

export * from './mmio-registers.js';

export interface MmioOptions {
  /** Called when the interrupt line changes level (true: asserted). */
  onInterrupt?: (level: boolean) => void;
  /** Where odd driver behaviour is reported (default: console). */
  logger?: Logger;
}

/**
 * A virtio-mmio (version 2) register window in front of one {@link VirtioDevice}.
 *
 * `read` and `write` take any offset and width an emulated CPU can produce and never throw:
 * valid accesses get the behaviour VIRTIO 1.2 §4.2 prescribes, invalid ones (wrong width,
 * read-only or write-only register, a write in the wrong device status) are ignored and read
 * as zero. The status state machine follows §3.1.1; queue registers are writable only after
 * FEATURES_OK and before DRIVER_OK (as Firecracker's transport does).
 */
export class MmioTransport {
  readonly device: VirtioDevice;
  readonly memory: GuestMemory;
  private readonly logger: Logger;
  private readonly onInterrupt: ((level: boolean) => void) | undefined;

  private deviceStatus = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private driverFeatures = 0n;
  private queueSel = 0;
  private intStatus = 0;
  private packed = false;
  /** One queue per device queue; replaced by queues of the negotiated format at FEATURES_OK. */
  queues: Queue[];

  constructor(device: VirtioDevice, memory: GuestMemory, options: MmioOptions = {}) {
    this.device = device;
    this.memory = memory;
    this.logger = options.logger ?? consoleLogger;
    this.onInterrupt = options.onInterrupt;
    this.queues = this.makeQueues(false);
    this.addrHalves = new Uint32Array(6 * device.queueMaxSizes.length);
  }

  private makeQueues(packed: boolean): Queue[] {
    this.addrHalves = new Uint32Array(6 * this.device.queueMaxSizes.length);
    return this.device.queueMaxSizes.map((max) =>
      createQueue(packed ? 'packed' : 'split', max, { logger: this.logger }),
    );
  }

  /** The device status as the driver reads it (DEVICE_NEEDS_RESET included). */
  get status(): number {
    return this.deviceStatus | (this.device.needsReset ? STATUS_DEVICE_NEEDS_RESET : 0);
  }

  /** Pending interrupt bits (INT_USED_BUFFER, INT_CONFIG_CHANGE). */
  get interruptStatus(): number {
    return this.intStatus;
  }

  /** The interrupt sink given to the device. */
  private readonly sink: InterruptSink = {
    usedBuffer: () => this.raise(INT_USED_BUFFER),
    configChanged: () => this.raise(INT_CONFIG_CHANGE),
  };

  private raise(bits: number): void {
    const before = this.intStatus;
    this.intStatus |= bits;
    if (before === 0 && this.onInterrupt !== undefined) this.onInterrupt(true);
  }

  private get selectedQueue(): Queue | undefined {
    return this.queues[this.queueSel];
  }

  private has(bits: number): boolean {
    return (this.deviceStatus & bits) === bits;
  }

  /** Queue registers may change only between FEATURES_OK and DRIVER_OK (§4.2.3.2). */
  private queueWritable(): boolean {
    return (
      this.has(STATUS_FEATURES_OK) &&
      (this.deviceStatus & (STATUS_DRIVER_OK | STATUS_FAILED)) === 0 &&
      !this.device.needsReset
    );
  }

  /** Reads `size` (1, 2 or 4) bytes at `offset` of the window. Never throws. */
  read(offset: number, size: number): number {
    if (offset >= MMIO.CONFIG) return this.readConfig(offset - MMIO.CONFIG, size);
    // §4.2.2.2: control registers are read 32 bits wide and aligned.
    if (size !== 4 || (offset & 3) !== 0) return this.ignored('read', offset, size);
    switch (offset) {
      case MMIO.MAGIC_VALUE:
        return MMIO_MAGIC;
      case MMIO.VERSION:
        return MMIO_VERSION;
      case MMIO.DEVICE_ID:
        return this.device.deviceType;
      case MMIO.VENDOR_ID:
        return VIRTQ_VENDOR_ID;
      case MMIO.DEVICE_FEATURES:
        return this.deviceFeaturesSel > 1
          ? 0
          : Number(
              (this.device.offeredFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffffffffn,
            );
      case MMIO.QUEUE_NUM_MAX:
        return this.selectedQueue?.maxSize ?? 0;
      case MMIO.QUEUE_READY:
        return this.selectedQueue?.ready === true ? 1 : 0;
      case MMIO.INTERRUPT_STATUS:
        return this.intStatus;
      case MMIO.STATUS:
        return this.status;
      case MMIO.SHM_LEN_LOW:
      case MMIO.SHM_LEN_HIGH:
      case MMIO.SHM_BASE_LOW:
      case MMIO.SHM_BASE_HIGH:
        // §4.2.2: no shared memory regions; a missing region reads as length and base ~0.
        return 0xffffffff;
      case MMIO.QUEUE_RESET:
        return 0;
      case MMIO.CONFIG_GENERATION:
        return this.device.configGeneration >>> 0;
      default:
        return this.ignored('read', offset, size);
    }
  }

  /** Writes `size` (1, 2 or 4) bytes at `offset` of the window. Never throws. */
  write(offset: number, size: number, value: number): void {
    if (offset >= MMIO.CONFIG) {
      this.writeConfig(offset - MMIO.CONFIG, size, value);
      return;
    }
    if (size !== 4 || (offset & 3) !== 0) {
      this.ignored('write', offset, size);
      return;
    }
    const v = value >>> 0;
    switch (offset) {
      case MMIO.DEVICE_FEATURES_SEL:
        this.deviceFeaturesSel = v;
        return;
      case MMIO.DRIVER_FEATURES:
        this.writeDriverFeatures(v);
        return;
      case MMIO.DRIVER_FEATURES_SEL:
        this.driverFeaturesSel = v;
        return;
      case MMIO.QUEUE_SEL:
        this.queueSel = v;
        return;
      case MMIO.QUEUE_NOTIFY:
        this.notify(v & 0xffff);
        return;
      case MMIO.INTERRUPT_ACK:
        this.ackInterrupt(v);
        return;
      case MMIO.STATUS:
        this.writeStatus(v);
        return;
      case MMIO.SHM_SEL:
        // Every region reads as absent, whichever is selected.
        return;
      case MMIO.QUEUE_RESET:
        // VIRTIO_F_RING_RESET is not offered, so the register does nothing (§4.2.2).
        return;
      default:
        this.writeQueueRegister(offset, v);
    }
  }

  /**
   * §4.2.2.2: the driver stops using the selected queue by writing 0 to QueueReady (at any
   * step), and reads 0 back. A queue in use (after DRIVER_OK) is left alone by the device from
   * then on: it forgets the chains it holds from it (`queueStopped`; a device in a worker
   * resets its copy of the queue there), and the queue is reset, so notifications of it and
   * the device's own work find it inactive. Without VIRTIO_F_RING_RESET (not offered) it stays
   * stopped until the device is reset. Before DRIVER_OK only the ready bit clears.
   */
  private stopQueue(q: Queue): void {
    if (!q.isActive) {
      q.ready = false;
      return;
    }
    this.device.queueStopped?.(this.queueSel);
    q.reset();
    // The reset cleared the ring features too; they are still the negotiated ones.
    this.applyFeatures(q);
  }

  private writeDriverFeatures(v: number): void {
    // §3.1.1: features are written after DRIVER and before FEATURES_OK.
    if (!this.has(STATUS_DRIVER) || this.has(STATUS_FEATURES_OK)) {
      this.ignored('write', MMIO.DRIVER_FEATURES, 4);
      return;
    }
    if (this.driverFeaturesSel > 1) return;
    const shift = BigInt(32 * this.driverFeaturesSel);
    this.driverFeatures = (this.driverFeatures & ~(0xffffffffn << shift)) | (BigInt(v) << shift);
  }

  private writeQueueRegister(offset: number, v: number): void {
    const q = this.selectedQueue;
    if (offset === MMIO.QUEUE_READY && (v & 1) === 0 && q?.ready === true) {
      this.stopQueue(q);
      return;
    }
    if (q === undefined || !this.queueWritable()) {
      this.ignored('write', offset, 4);
      return;
    }
    // §4.2.2.2: the driver MUST NOT change a queue's registers while it is ready.
    if (q.ready && offset !== MMIO.QUEUE_READY) {
      this.ignored('write', offset, 4);
      return;
    }
    switch (offset) {
      case MMIO.QUEUE_NUM:
        q.size = v;
        return;
      case MMIO.QUEUE_READY:
        q.ready = (v & 1) === 1;
        return;
      case MMIO.QUEUE_DESC_LOW:
      case MMIO.QUEUE_DESC_HIGH:
      case MMIO.QUEUE_DRIVER_LOW:
      case MMIO.QUEUE_DRIVER_HIGH:
      case MMIO.QUEUE_DEVICE_LOW:
      case MMIO.QUEUE_DEVICE_HIGH: {
        // Keep the two halves as written; the queue sees the 64-bit value as a number
        // (>= 2^53 becomes U64_UNSAFE, which no region contains).
        const slot = (offset - MMIO.QUEUE_DESC_LOW) >> 3; // 0 desc, 2 driver, 4 device
        const half = (offset >> 2) & 1;
        const regs = this.addrHalves;
        regs[6 * this.queueSel + slot + half] = v;
        const lo = regs[6 * this.queueSel + slot]!;
        const hi = regs[6 * this.queueSel + slot + 1]!;
        const addr = joinU64(lo, hi);
        if (slot === 0) q.descTableAddress = addr;
        else if (slot === 2) q.availRingAddress = addr;
        else q.usedRingAddress = addr;
        return;
      }
      default:
        this.ignored('write', offset, 4);
    }
  }

  /** The low and high halves of the three ring addresses of every queue, as written. */
  private addrHalves: Uint32Array;

  private notify(index: number): void {
    // §2.1.2 / §3.1.1: only a live device processes its queues.
    if (!this.has(STATUS_DRIVER_OK) || (this.deviceStatus & STATUS_FAILED) !== 0) return;
    this.device.queueNotify(index);
  }

  private ackInterrupt(bits: number): void {
    const before = this.intStatus;
    this.intStatus &= ~bits;
    if (before !== 0 && this.intStatus === 0 && this.onInterrupt !== undefined)
      this.onInterrupt(false);
  }

  private writeStatus(v: number): void {
    if (v === 0) {
      this.reset();
      return;
    }
    const cur = this.deviceStatus;
    // FAILED may be set at any time (§2.1.1); the driver then gives up on the device.
    if ((v & STATUS_FAILED) !== 0) {
      this.deviceStatus = cur | STATUS_FAILED;
      return;
    }
    // §2.1.2: the driver MUST NOT clear a status bit (other than by writing 0).
    if ((v & cur) !== cur) {
      this.ignored('write', MMIO.STATUS, 4);
      return;
    }
    const added = v & ~cur & 0xff;
    // §3.1.1: bits are set one step at a time, in this order.
    if (added === STATUS_ACKNOWLEDGE && cur === 0) {
      this.deviceStatus = v;
    } else if (added === STATUS_DRIVER && cur === STATUS_ACKNOWLEDGE) {
      this.deviceStatus = v;
    } else if (added === STATUS_FEATURES_OK && cur === (STATUS_ACKNOWLEDGE | STATUS_DRIVER)) {
      this.featuresOk(v);
    } else if (
      added === STATUS_DRIVER_OK &&
      cur === (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
    ) {
      this.driverOk(v);
    } else if (added !== 0) {
      this.ignored('write', MMIO.STATUS, 4);
    }
  }

  private featuresOk(v: number): void {
    // §3.1.1 step 5-6: if the device does not accept the features, FEATURES_OK stays clear.
    if (!this.device.acceptFeatures(this.driverFeatures)) {
      this.logger.warn('driver features refused; FEATURES_OK stays clear', {
        features: this.driverFeatures.toString(16),
      });
      return;
    }
    const f = this.driverFeatures;
    this.packed = hasFeature(f, VIRTIO_F_RING_PACKED);
    this.queues = this.makeQueues(this.packed);
    for (const q of this.queues) this.applyFeatures(q);
    this.deviceStatus = v;
  }

  /** The ring features the driver negotiated, as queue `q`'s settings. */
  private applyFeatures(q: Queue): void {
    const f = this.driverFeatures;
    q.usesNotifSuppression = hasFeature(f, VIRTIO_F_EVENT_IDX);
    q.indirectDesc = hasFeature(f, VIRTIO_F_INDIRECT_DESC);
  }

  private driverOk(v: number): void {
    // Validate every ready queue before the device may touch it (§2.7, §2.8).
    for (const q of this.queues) {
      if (!q.ready) continue;
      try {
        q.initialize(this.memory);
      } catch (e) {
        if (!(e instanceof QueueConfigError)) throw e;
        this.deviceStatus = v;
        this.device.activate(this.context());
        this.device.fail?.(e);
        return;
      }
    }
    this.deviceStatus = v;
    this.device.activate(this.context());
  }

  private context(): DeviceContext {
    return {
      memory: this.memory,
      queues: this.queues,
      features: this.driverFeatures,
      interrupt: this.sink,
    };
  }

  /** Device reset (status 0, §2.4): everything back to the power-on state. */
  reset(): void {
    this.device.reset();
    this.deviceStatus = 0;
    this.deviceFeaturesSel = 0;
    this.driverFeaturesSel = 0;
    this.driverFeatures = 0n;
    this.queueSel = 0;
    this.packed = false;
    this.queues = this.makeQueues(false);
    this.ackInterrupt(0xffffffff);
  }

  private readConfig(offset: number, size: number): number {
    if (size !== 1 && size !== 2 && size !== 4) return 0;
    const buf = this.configScratch;
    this.device.readConfig(offset, buf.subarray(0, size));
    return size === 1
      ? buf[0]!
      : size === 2
        ? buf[0]! | (buf[1]! << 8)
        : (buf[0]! | (buf[1]! << 8) | (buf[2]! << 16) | (buf[3]! << 24)) >>> 0;
  }

  private writeConfig(offset: number, size: number, value: number): void {
    if (size !== 1 && size !== 2 && size !== 4) return;
    const buf = this.configScratch;
    for (let i = 0; i < size; i++) buf[i] = (value >>> (8 * i)) & 0xff;
    this.device.writeConfig(offset, buf.slice(0, size));
  }

  private readonly configScratch = new Uint8Array(4);

  private ignored(kind: 'read' | 'write', offset: number, size: number): number {
    this.logger.warn(`ignored mmio ${kind}`, { offset, size, status: this.deviceStatus });
    return 0;
  }

  // ---- snapshots ----

  /** The transport's and device's whole state as a JSON-safe object. */
  save(): MmioState {
    const dev = this.device.save?.() ?? null;
    return {
      version: 1,
      status: this.deviceStatus,
      deviceFeaturesSel: this.deviceFeaturesSel,
      driverFeaturesSel: this.driverFeaturesSel,
      driverFeatures: this.driverFeatures.toString(16),
      queueSel: this.queueSel,
      interruptStatus: this.intStatus,
      packed: this.packed,
      // An active device holds the live queues: the transport's own when it runs in this
      // thread (the same objects), those its worker rebuilt when it runs in a worker (the
      // transport's then stay as they were at DRIVER_OK).
      queues: dev?.active === true ? dev.queues : this.queues.map((q) => q.save()),
      device: dev,
    };
  }

  /**
   * Restores a saved state over this transport's device and memory, all or nothing: every
   * field of the transport's, the queues' and the device's state is validated into new values
   * first (a {@link SnapshotError} names the first bad field by its path, e.g.
   * `mmio.device.block.stats.requests`), and only then is anything changed. A refused state
   * leaves the transport, the device and the queues exactly as they were.
   */
  restore(state: unknown): void {
    const next = readMmioState(state, this.device, this.memory, this.logger);
    const ctx = next.live ? this.contextFor(next.queues, next.features) : null;
    const dev = this.device;
    const commitDevice = prepareMmioDevice(next, dev, ctx);
    // Everything checked: commit.
    const levelBefore = this.intStatus !== 0;
    dev.reset();
    this.deviceStatus = next.status;
    this.deviceFeaturesSel = next.deviceFeaturesSel;
    this.driverFeaturesSel = next.driverFeaturesSel;
    this.driverFeatures = next.features;
    this.queueSel = next.queueSel;
    this.packed = next.packed;
    this.queues = next.queues;
    this.addrHalves = next.addrHalves;
    this.intStatus = next.interruptStatus;
    const levelAfter = this.intStatus !== 0;
    if (levelBefore !== levelAfter && this.onInterrupt !== undefined) this.onInterrupt(levelAfter);
    if (ctx !== null) dev.activate(ctx);
    commitDevice?.();
  }

  private contextFor(queues: Queue[], features: bigint): DeviceContext {
    return { memory: this.memory, queues, features, interrupt: this.sink };
  }
}
