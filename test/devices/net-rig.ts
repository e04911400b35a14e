/**
 * Shared pieces of the virtio-net and virtio-console tests: guests (driver + MmioTransport +
 * device) whose buses can move to a restored copy of the VM, the ring variants, and frames
 * that carry their own sequence number.
 */

import { featureBit } from '../../src/devices/device.js';
import { type NetBackend, NetDevice, type NetOptions } from '../../src/devices/net/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { type NetDriverOptions, NetGuestDriver } from '../../src/driver/devices/net.js';
import type { MmioBus } from '../../src/driver/mmio.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';

export interface RingVariant {
  name: string;
  features: bigint;
}

/** Split and packed rings, with and without EVENT_IDX. */
export const RINGS: RingVariant[] = [false, true].flatMap((packed) =>
  [false, true].map((eventIdx) => ({
    name: `${packed ? 'packed' : 'split'}${eventIdx ? '+event_idx' : ''}`,
    features:
      featureBit(VIRTIO_F_VERSION_1) |
      (packed ? featureBit(VIRTIO_F_RING_PACKED) : 0n) |
      (eventIdx ? featureBit(VIRTIO_F_EVENT_IDX) : 0n),
  })),
);

/**
 * Every guest of a test, and the memories their devices run over. Before a migration a
 * guest's driver and device share one memory. After it, the device runs over a copy: every
 * bus access (and {@link run}) first copies each driver memory to its device memory, and
 * afterwards copies each back, so the guests keep their driver objects while the restored
 * devices only ever touch the copies. Devices on one link act during each other's accesses,
 * hence one world for all of them. Host-side actions that make a migrated device touch guest
 * memory (input pushed to a backend, a kick) must run inside {@link run} as well.
 */
export class World {
  readonly pairs: { driver: GuestMemory; device: GuestMemory }[] = [];

  run<T>(fn: () => T): T {
    for (const p of this.pairs)
      if (p.driver !== p.device) p.device.write(0, p.driver.slice(0, p.driver.size));
    try {
      return fn();
    } finally {
      for (const p of this.pairs)
        if (p.driver !== p.device) p.driver.write(0, p.device.slice(0, p.device.size));
    }
  }
}

/** The guest's view of its MMIO window, forwarded through the {@link World}. */
export class WorldBus implements MmioBus {
  constructor(
    readonly world: World,
    public transport: MmioTransport,
  ) {}

  read(offset: number, size: number): number {
    return this.world.run(() => this.transport.read(offset, size));
  }

  write(offset: number, size: number, value: number): void {
    this.world.run(() => this.transport.write(offset, size, value));
  }
}

export interface NetSide {
  memory: GuestMemory;
  device: NetDevice;
  transport: MmioTransport;
  bus: WorldBus;
  guest: NetGuestDriver;
  options: NetOptions;
  /** Interrupt line levels seen, in order. */
  levels: boolean[];
}

export interface NetSideOptions {
  device?: Omit<NetOptions, 'backend'>;
  driver?: NetDriverOptions;
  memoryBytes?: number;
}

/** A guest with a network device on `backend`. */
export function netSide(world: World, backend: NetBackend, o: NetSideOptions = {}): NetSide {
  const memory = GuestMemory.create(o.memoryBytes ?? 4 << 20);
  const options: NetOptions = { queueSize: 64, ...o.device, backend };
  const device = new NetDevice(options);
  const levels: boolean[] = [];
  const transport = new MmioTransport(device, memory, {
    logger: silentLogger,
    onInterrupt: (l) => levels.push(l),
  });
  const bus = new WorldBus(world, transport);
  world.pairs.push({ driver: memory, device: memory });
  const guest = new NetGuestDriver(
    bus,
    memory,
    new GuestAllocator(memory, 0x1000, memory.size),
    o.driver,
  );
  return { memory, device, transport, bus, guest, options, levels };
}

/**
 * Snapshots a guest's transport and device (JSON round trip) and moves it to a fresh device
 * on `backend` and a fresh transport over a copy of its guest memory, restored from the
 * snapshot. The old device is detached from its backend and never used again.
 */
export function migrateNet(world: World, side: NetSide, backend: NetBackend): NetSide {
  const state: unknown = JSON.parse(JSON.stringify(side.transport.save()));
  side.device.detach();
  const copy = GuestMemory.create(side.memory.size);
  copy.write(0, side.memory.slice(0, side.memory.size));
  const options: NetOptions = { ...side.options, backend };
  const device = new NetDevice(options);
  const levels: boolean[] = [];
  const transport = new MmioTransport(device, copy, {
    logger: silentLogger,
    onInterrupt: (l) => levels.push(l),
  });
  transport.restore(state);
  const pair = world.pairs.find((p) => p.driver === side.memory)!;
  pair.device = copy;
  side.bus.transport = transport;
  return { ...side, device, transport, options, levels };
}

export const MAC_A = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xa);
export const MAC_B = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xb);
export const MAC_C = Uint8Array.of(0x52, 0x54, 0, 0, 0, 0xc);
export const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

/** An Ethernet frame of `len` bytes (EtherType 0x88b5) whose payload encodes `seq`. */
export function testFrame(dst: Uint8Array, src: Uint8Array, seq: number, len: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  if (len >= 18) new DataView(f.buffer).setUint32(14, seq);
  for (let i = 18; i < len; i++) f[i] = (seq * 31 + i * 7) & 0xff;
  return f;
}

/** The sequence number of a {@link testFrame}. */
export function frameSeq(f: Uint8Array): number {
  return new DataView(f.buffer, f.byteOffset).getUint32(14);
}
