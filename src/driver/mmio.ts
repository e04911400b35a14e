import {
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FAILED,
  STATUS_FEATURES_OK,
} from '../devices/device.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED } from '../queue/constants.js';
import { splitLayout } from '../queue/split/layout.js';
import {
  INT_CONFIG_CHANGE,
  INT_USED_BUFFER,
  MMIO,
  MMIO_MAGIC,
  MMIO_VERSION,
} from '../transport/mmio.js';
import type { GuestAllocator } from './allocator.js';
import { PackedDriver } from './packed.js';
import type { DriverQueue } from './queue.js';
import { DeviceBehaviourError, SplitDriver } from './split.js';

/** Reads of a 64-bit configuration field before the driver gives up on a changing generation. */
const CONFIG_READ_ATTEMPTS = 1000;

/** Anything with virtio-mmio registers: an MmioTransport, or a bridge to one. */
export interface MmioBus {
  read(offset: number, size: number): number;
  write(offset: number, size: number, value: number): void;
}

/** The device refused the features the driver asked for (FEATURES_OK did not stick). */
export class FeaturesRefusedError extends Error {
  override readonly name: string = 'FeaturesRefusedError';
}

/**
 * The generic part of a guest driver for a virtio-mmio device, following VIRTIO 1.2 §3.1.1
 * and §4.2.3: probe, reset, ACKNOWLEDGE, DRIVER, feature negotiation with FEATURES_OK checked,
 * queue setup (split or packed rings allocated in guest memory), DRIVER_OK; then notifications,
 * interrupt acknowledgement and configuration access.
 */
export class MmioGuestDriver {
  /** Features both sides agreed on, after {@link negotiate}. */
  features = 0n;
  readonly queues: DriverQueue[] = [];

  constructor(
    readonly bus: MmioBus,
    readonly memory: GuestMemory,
    readonly alloc: GuestAllocator,
  ) {}

  /** Checks magic and version (§4.2.3.1) and returns the device id (0: no device). */
  probe(): number {
    if (this.bus.read(MMIO.MAGIC_VALUE, 4) !== MMIO_MAGIC)
      throw new Error('not a virtio-mmio device (bad magic)');
    if (this.bus.read(MMIO.VERSION, 4) !== MMIO_VERSION)
      throw new Error('unsupported virtio-mmio version');
    return this.bus.read(MMIO.DEVICE_ID, 4);
  }

  /** Features the device offers. */
  deviceFeatures(): bigint {
    this.bus.write(MMIO.DEVICE_FEATURES_SEL, 4, 0);
    const lo = this.bus.read(MMIO.DEVICE_FEATURES, 4);
    this.bus.write(MMIO.DEVICE_FEATURES_SEL, 4, 1);
    const hi = this.bus.read(MMIO.DEVICE_FEATURES, 4);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  get status(): number {
    return this.bus.read(MMIO.STATUS, 4);
  }

  /**
   * Resets the device and negotiates: accepts `wanted & offered` (or exactly `force` when
   * given, to test refusal). Throws {@link FeaturesRefusedError} when FEATURES_OK does not stick.
   */
  negotiate(wanted: bigint, force?: bigint): bigint {
    this.reset();
    this.bus.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE);
    this.bus.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const features = force ?? this.deviceFeatures() & wanted;
    this.bus.write(MMIO.DRIVER_FEATURES_SEL, 4, 0);
    this.bus.write(MMIO.DRIVER_FEATURES, 4, Number(features & 0xffffffffn));
    this.bus.write(MMIO.DRIVER_FEATURES_SEL, 4, 1);
    this.bus.write(MMIO.DRIVER_FEATURES, 4, Number(features >> 32n));
    this.bus.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    // §3.1.1 step 6: re-read the status to make sure FEATURES_OK is still set.
    if ((this.status & STATUS_FEATURES_OK) === 0) {
      this.bus.write(MMIO.STATUS, 4, this.status | STATUS_FAILED);
      throw new FeaturesRefusedError(`device refused features 0x${features.toString(16)}`);
    }
    this.features = features;
    return features;
  }

  /** Maximum size of queue `index` (0: the queue does not exist). */
  queueMaxSize(index: number): number {
    this.bus.write(MMIO.QUEUE_SEL, 4, index);
    return this.bus.read(MMIO.QUEUE_NUM_MAX, 4);
  }

  /**
   * Sets up queue `index` with `size` entries (default: the device's maximum, rounded down to
   * a power of two for split rings): allocates the rings in guest memory and writes the queue
   * registers (§4.2.3.2), in the ring format negotiated.
   */
  setupQueue(index: number, size?: number): DriverQueue {
    const max = this.queueMaxSize(index);
    if (max === 0) throw new Error(`device has no queue ${index}`);
    if (this.bus.read(MMIO.QUEUE_READY, 4) !== 0)
      throw new Error(`queue ${index} is already in use`);
    const packed = (this.features & (1n << BigInt(VIRTIO_F_RING_PACKED))) !== 0n;
    const eventIdx = (this.features & (1n << BigInt(VIRTIO_F_EVENT_IDX))) !== 0n;
    const inOrder = (this.features & (1n << BigInt(VIRTIO_F_IN_ORDER))) !== 0n;
    let n = Math.min(size ?? max, max);
    let desc: number;
    let driverArea: number;
    let deviceArea: number;
    let q: DriverQueue;
    if (packed) {
      desc = this.alloc.alloc(16 * n, 16);
      driverArea = this.alloc.alloc(4, 4);
      deviceArea = this.alloc.alloc(4, 4);
      q = new PackedDriver(this.memory, {
        size: n,
        desc,
        driverArea,
        deviceArea,
        eventIdx,
        inOrder,
      });
    } else {
      while ((n & (n - 1)) !== 0) n &= n - 1;
      const layout = splitLayout(0, n);
      const base = this.alloc.alloc(layout.end, 16);
      const placed = splitLayout(base, n);
      desc = placed.desc;
      driverArea = placed.avail;
      deviceArea = placed.used;
      q = new SplitDriver(this.memory, { size: n, layout: placed, eventIdx, inOrder });
    }
    const b = this.bus;
    b.write(MMIO.QUEUE_NUM, 4, n);
    b.write(MMIO.QUEUE_DESC_LOW, 4, desc >>> 0);
    b.write(MMIO.QUEUE_DESC_HIGH, 4, Math.floor(desc / 2 ** 32));
    b.write(MMIO.QUEUE_DRIVER_LOW, 4, driverArea >>> 0);
    b.write(MMIO.QUEUE_DRIVER_HIGH, 4, Math.floor(driverArea / 2 ** 32));
    b.write(MMIO.QUEUE_DEVICE_LOW, 4, deviceArea >>> 0);
    b.write(MMIO.QUEUE_DEVICE_HIGH, 4, Math.floor(deviceArea / 2 ** 32));
    b.write(MMIO.QUEUE_READY, 4, 1);
    this.queues[index] = q;
    return q;
  }

  /** Sets DRIVER_OK: the device is live (§3.1.1 step 8). */
  start(): void {
    this.bus.write(MMIO.STATUS, 4, this.status | STATUS_DRIVER_OK);
  }

  /** Available-buffer notification for queue `index`. */
  notify(index: number): void {
    this.bus.write(MMIO.QUEUE_NOTIFY, 4, index);
  }

  /** Publishes queue `index` and notifies the device when it wants that. */
  kick(index: number): void {
    const q = this.queues[index];
    if (q === undefined) throw new Error(`queue ${index} is not set up`);
    if (q.kick()) this.notify(index);
  }

  /**
   * Reads and acknowledges the interrupt status (§4.2.3.4); returns the bits. Bits the spec
   * does not define are ignored, and never written back (§4.2.2.2).
   */
  ackInterrupt(): number {
    const bits = this.bus.read(MMIO.INTERRUPT_STATUS, 4) & (INT_USED_BUFFER | INT_CONFIG_CHANGE);
    if (bits !== 0) this.bus.write(MMIO.INTERRUPT_ACK, 4, bits);
    return bits;
  }

  /** Reads `size` bytes (1, 2 or 4) of device configuration at `offset`. */
  readConfig(offset: number, size: 1 | 2 | 4): number {
    return this.bus.read(MMIO.CONFIG + offset, size);
  }

  /**
   * Reads a consistent 64-bit configuration field (§2.5.1: retry while the generation changes).
   * A device whose generation never settles gets `CONFIG_READ_ATTEMPTS` (1000) tries, then a
   * `DeviceBehaviourError`, not an endless loop.
   */
  readConfigU64(offset: number): bigint {
    for (let attempt = 0; attempt < CONFIG_READ_ATTEMPTS; attempt++) {
      const gen = this.bus.read(MMIO.CONFIG_GENERATION, 4);
      const lo = this.readConfig(offset, 4);
      const hi = this.readConfig(offset + 4, 4);
      if (this.bus.read(MMIO.CONFIG_GENERATION, 4) === gen) return (BigInt(hi) << 32n) | BigInt(lo);
    }
    throw new DeviceBehaviourError(
      `the configuration generation changed on each of ${CONFIG_READ_ATTEMPTS} reads`,
    );
  }

  writeConfig(offset: number, size: 1 | 2 | 4, value: number): void {
    this.bus.write(MMIO.CONFIG + offset, size, value);
  }

  /** Writes status 0 and waits until it reads back 0 (§4.2.3.1). */
  reset(): void {
    this.bus.write(MMIO.STATUS, 4, 0);
    if (this.bus.read(MMIO.STATUS, 4) !== 0) throw new Error('device did not reset');
    this.queues.length = 0;
    this.features = 0n;
  }
}
