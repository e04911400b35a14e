/**
 * Shared pieces of the virtio-blk tests: a guest (MmioGuestDriver + BlockDriver) in front of a
 * BlockDevice behind an MmioTransport, a bus that can move the device to a restored copy of
 * the VM, and a backend that fails on demand.
 */

import {
  type BlockBackend,
  BlockDevice,
  type BlockOptions,
  MemoryBackend,
  type MemoryBackendOptions,
} from '../../src/devices/block/index.js';
import { featureBit } from '../../src/devices/device.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { BlockDriver } from '../../src/driver/devices/block.js';
import type { BlockDriverOptions } from '../../src/driver/devices/block-request.js';
import { type MmioBus, MmioGuestDriver } from '../../src/driver/mmio.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';

/** The ring variants every behaviour is checked over. */
export interface RingVariant {
  name: string;
  features: bigint;
}

export const RING_VARIANTS: RingVariant[] = [false, true].flatMap((packed) =>
  [false, true].flatMap((eventIdx) =>
    [false, true].map((indirect) => ({
      name: `${packed ? 'packed' : 'split'}${eventIdx ? '+event_idx' : ''}${indirect ? '+indirect' : ''}`,
      features:
        (packed ? featureBit(VIRTIO_F_RING_PACKED) : 0n) |
        (eventIdx ? featureBit(VIRTIO_F_EVENT_IDX) : 0n) |
        (indirect ? featureBit(VIRTIO_F_INDIRECT_DESC) : 0n),
    })),
  ),
);

/**
 * The driver's view of the MMIO window. Normally it forwards to the transport over the same
 * guest memory. After {@link moveTo}, the device runs over another memory (a restored copy of
 * the VM): every access first copies the driver's memory to the device's, and afterwards
 * copies it back, so the guest keeps running with its own (driver-side) objects while the
 * device only ever touches the copy.
 */
export class MigratingBus implements MmioBus {
  private deviceMemory: GuestMemory;

  constructor(
    public transport: MmioTransport,
    readonly driverMemory: GuestMemory,
  ) {
    this.deviceMemory = transport.memory;
  }

  moveTo(transport: MmioTransport): void {
    this.transport = transport;
    this.deviceMemory = transport.memory;
  }

  private sync(from: GuestMemory, to: GuestMemory): void {
    if (from !== to) to.write(0, from.slice(0, from.size));
  }

  read(offset: number, size: number): number {
    this.sync(this.driverMemory, this.deviceMemory);
    const v = this.transport.read(offset, size);
    this.sync(this.deviceMemory, this.driverMemory);
    return v;
  }

  write(offset: number, size: number, value: number): void {
    this.sync(this.driverMemory, this.deviceMemory);
    this.transport.write(offset, size, value);
    this.sync(this.deviceMemory, this.driverMemory);
  }
}

/** Fails the calls a predicate picks (before touching the disk), else delegates. */
export class FlakyBackend implements BlockBackend {
  failWhen: (op: string, offset: number, length: number) => boolean = () => false;
  failures = 0;

  constructor(readonly inner: MemoryBackend) {}

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get supportsFlush(): boolean {
    return this.inner.supportsFlush;
  }
  get supportsDiscard(): boolean {
    return this.inner.supportsDiscard;
  }
  get supportsWriteZeroes(): boolean {
    return this.inner.supportsWriteZeroes;
  }
  get writeZeroesMayUnmap(): boolean {
    return this.inner.writeZeroesMayUnmap;
  }

  private check(op: string, offset: number, length: number): void {
    if (this.failWhen(op, offset, length)) {
      this.failures++;
      throw new Error(`injected ${op} failure`);
    }
  }

  read(offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
    this.check('read', offset, length);
    this.inner.read(offset, dst, dstOffset, length);
  }
  write(offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    this.check('write', offset, length);
    this.inner.write(offset, src, srcOffset, length);
  }
  flush(): void {
    this.check('flush', 0, 0);
    this.inner.flush();
  }
  discard(offset: number, length: number): void {
    this.check('discard', offset, length);
    this.inner.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, unmap: boolean): void {
    this.check('writeZeroes', offset, length);
    this.inner.writeZeroes(offset, length, unmap);
  }
}

export interface RigOptions {
  /** Disk size in bytes for the default MemoryBackend (default 256 KiB). */
  diskBytes?: number;
  memoryBackend?: MemoryBackendOptions;
  /** A backend to use instead of a MemoryBackend. */
  backend?: BlockBackend;
  device?: Omit<BlockOptions, 'backend'>;
  driver?: BlockDriverOptions;
  /** Guest memory size (default 2 MiB). */
  memoryBytes?: number;
  /** Guest memory made of two adjacent regions split at this address. */
  splitAt?: number;
  /** End of the range the guest allocator hands out (default: end of memory). */
  allocEnd?: number;
}

export interface BlockRig {
  memory: GuestMemory;
  backend: BlockBackend;
  device: BlockDevice;
  transport: MmioTransport;
  bus: MigratingBus;
  guest: MmioGuestDriver;
  blk: BlockDriver;
  /** Config interrupts and used-buffer interrupts seen by the transport, in order. */
  levels: boolean[];
  deviceOptions: BlockOptions;
}

export function makeMemory(size: number, splitAt?: number): GuestMemory {
  if (splitAt === undefined) return GuestMemory.create(size);
  return new GuestMemory([
    { base: 0, length: splitAt, buffer: new ArrayBuffer(splitAt) },
    { base: splitAt, length: size - splitAt, buffer: new ArrayBuffer(size - splitAt) },
  ]);
}

export function blockRig(o: RigOptions = {}): BlockRig {
  const memoryBytes = o.memoryBytes ?? 2 << 20;
  const memory = makeMemory(memoryBytes, o.splitAt);
  const backend = o.backend ?? new MemoryBackend(o.diskBytes ?? 256 << 10, o.memoryBackend ?? {});
  const deviceOptions: BlockOptions = { queueSize: 64, logger: silentLogger, ...o.device, backend };
  const device = new BlockDevice(deviceOptions);
  const levels: boolean[] = [];
  const transport = new MmioTransport(device, memory, {
    logger: silentLogger,
    onInterrupt: (l) => levels.push(l),
  });
  const bus = new MigratingBus(transport, memory);
  const guest = new MmioGuestDriver(
    bus,
    memory,
    new GuestAllocator(memory, 0x1000, o.allocEnd ?? memoryBytes),
  );
  const blk = new BlockDriver(guest, { arenaBytes: 512 << 10, ...o.driver });
  return { memory, backend, device, transport, bus, guest, blk, levels, deviceOptions };
}

/**
 * Snapshots the rig's VM (transport + device state, guest memory, disk) and moves the guest to
 * a fresh transport and device restored from it, over copies of guest memory and disk. The old
 * transport, device and disk are left untouched from then on.
 */
export function migrate(rig: BlockRig): void {
  const state: unknown = JSON.parse(JSON.stringify(rig.transport.save()));
  const memory = GuestMemory.create(rig.memory.size);
  memory.write(0, rig.memory.slice(0, rig.memory.size));
  const old = rig.backend;
  const disk =
    old instanceof MemoryBackend
      ? new MemoryBackend(old.bytes.slice(), {
          readOnly: old.readOnly,
          flush: old.supportsFlush,
          discard: old.supportsDiscard,
          writeZeroes: old.supportsWriteZeroes,
        })
      : old;
  const deviceOptions = { ...rig.deviceOptions, backend: disk };
  const device = new BlockDevice(deviceOptions);
  const transport = new MmioTransport(device, memory, {
    logger: silentLogger,
    onInterrupt: (l) => rig.levels.push(l),
  });
  transport.restore(state);
  rig.bus.moveTo(transport);
  rig.transport = transport;
  rig.device = device;
  rig.backend = disk;
  rig.deviceOptions = deviceOptions;
}

/** `n` bytes of a recognisable pattern derived from `seed`. */
export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

/**
 * Compares two byte arrays quickly (vitest's deep equality is slow on large typed arrays);
 * returns a description of the first difference, or 'equal'.
 */
export function diffBytes(a: Uint8Array, b: Uint8Array): string {
  if (a.length !== b.length) return `lengths ${a.length} and ${b.length}`;
  if (Buffer.compare(a, b) === 0) return 'equal';
  let i = 0;
  while (a[i] === b[i]) i++;
  return `first difference at byte ${i}: ${a[i]} vs ${b[i]}`;
}
