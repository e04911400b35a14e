/**
 * Rigs for hostile-guest tests of the devices' per-turn budgets: a device activated directly
 * over raw rings (no transport), with counters of the work each turn does, a scheduler the
 * test drives, and ring writers for the layouts a hostile guest uses (a ring kept full by a
 * concurrent guest, giant aliased indirect buffers, rings the device's own writes feed).
 * Written so that a fuzzer can build the same rigs with other parameters.
 */

import type { Scheduler } from '../../src/devices/budget.js';
import type { InterruptSink, VirtioDevice } from '../../src/devices/device.js';
import { RawPackedRing } from '../../src/driver/raw-packed.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import { GuestMemory } from '../../src/memory/index.js';
import type { AnyQueue } from '../../src/queue/factory.js';
import {
  silentLogger,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';

export type RingFormat = 'split' | 'packed';
export const FORMATS: RingFormat[] = ['split', 'packed'];

/** A scheduler the test runs by hand: each continuation is one turn. */
export class ManualScheduler {
  readonly pending: (() => void)[] = [];
  readonly schedule: Scheduler = (callback) => {
    this.pending.push(callback);
  };

  /** Runs the oldest continuation; false when there is none. */
  runOne(): boolean {
    const cb = this.pending.shift();
    if (cb === undefined) return false;
    cb();
    return true;
  }
}

/** One raw ring of either format, with what a hostile guest does to it. */
export class HostileRing {
  readonly split: RawSplitRing | null;
  readonly packed: RawPackedRing | null;
  /** Position of the next buffer this guest makes available (packed: slot + wrap). */
  private next = 0;

  constructor(
    readonly memory: GuestMemory,
    readonly format: RingFormat,
    readonly base: number,
    readonly size: number,
  ) {
    this.split = format === 'split' ? new RawSplitRing(memory, base, size) : null;
    this.packed = format === 'packed' ? new RawPackedRing(memory, base, size) : null;
  }

  /** First byte after the ring. */
  get end(): number {
    return this.split?.end() ?? this.packed!.end();
  }

  /** The device-side queue for this ring (indirect descriptors on). */
  createQueue(): AnyQueue {
    if (this.split !== null) {
      const q = this.split.createQueue({ logger: silentLogger });
      q.indirectDesc = true;
      return q;
    }
    return this.packed!.createQueue({ logger: silentLogger, indirect: true });
  }

  /**
   * Writes an indirect table at `table` whose `entries` descriptors all point at the same
   * `len`-byte buffer at `addr` (device-writable when `writable`), and returns its length.
   */
  static aliasedTable(
    memory: GuestMemory,
    format: RingFormat,
    table: number,
    entries: number,
    addr: number,
    len: number,
    writable: boolean,
  ): number {
    const list: [number, number, boolean][] = [];
    for (let i = 0; i < entries; i++) list.push([addr, len, writable]);
    return writeTable(memory, format, table, list);
  }

  /**
   * Sets up the one chain every buffer of this ring carries: split, descriptor 0 (an
   * indirect table at `table` of `tableLen` bytes when `indirect`, else the buffer `addr` /
   * `len`); packed, every slot's descriptor is that.
   */
  setChain(chain: { addr: number; len: number; flags: number }): void {
    this.chain = chain;
    if (this.split !== null) this.split.setDesc(0, chain.addr, chain.len, chain.flags, 0);
  }
  private chain = { addr: 0, len: 0, flags: 0 };

  /** Makes `count` more buffers available (a guest filling its ring). */
  offer(count: number): void {
    for (let i = 0; i < count; i++) this.offerOne();
  }

  /** Makes one more buffer available. */
  offerOne(): void {
    const n = this.next++;
    if (this.split !== null) {
      const r = this.split;
      r.setAvailRing(n % this.size, 0);
      r.setAvailIdx((n + 1) & 0xffff);
      return;
    }
    const slot = n % this.size;
    const wrap = Math.floor(n / this.size) % 2 === 0;
    const c = this.chain;
    this.packed!.setDesc(slot, c.addr, c.len, slot, c.flags | RawPackedRing.availBits(wrap));
  }

  private reclaim = 0;

  /**
   * A guest on another vCPU that keeps its ring full: split, one more buffer at once (the
   * avail ring has room as soon as the device took a chain); packed, every slot the device
   * marked used is made available again.
   */
  feed(): void {
    if (this.split !== null) {
      this.offerOne();
      return;
    }
    const r = this.packed!;
    while (this.reclaim < this.next) {
      const wrap = Math.floor(this.reclaim / this.size) % 2 === 0;
      const flags =
        r.descFlags(this.reclaim % this.size) & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
      if (flags !== RawPackedRing.usedBits(wrap)) return;
      this.reclaim++;
      this.offerOne();
    }
  }

  /** Buffers this guest made available so far. */
  get offered(): number {
    return this.next;
  }
}

/** A device activated over hostile rings, with per-turn counters. */
export interface DeviceRig<D extends VirtioDevice> {
  device: D;
  memory: GuestMemory;
  rings: HostileRing[];
  queues: AnyQueue[];
  scheduler: ManualScheduler;
  /** Used entries the device added, per queue, in total. */
  used: number[];
  usedInterrupts: number;
  configInterrupts: number;
}

export interface RigSetup {
  format: RingFormat;
  /** Ring size of every queue (default 16). */
  size?: number;
  /** Guest memory size (default 1 MiB). */
  memoryBytes?: number;
  /** Where the rings start; each takes 64 KiB (default 0). */
  ringBase?: number;
}

/** Activates `device` over one hostile ring per queue, with `features` negotiated. */
export function deviceRig<D extends VirtioDevice>(
  device: D,
  setup: RigSetup,
  features: bigint,
  scheduler = new ManualScheduler(),
): DeviceRig<D> {
  const memory = GuestMemory.create(setup.memoryBytes ?? 1 << 20);
  const size = setup.size ?? 16;
  const base = setup.ringBase ?? 0;
  const rings: HostileRing[] = [];
  const queues: AnyQueue[] = [];
  const used: number[] = [];
  for (let i = 0; i < device.queueMaxSizes.length; i++) {
    const ring = new HostileRing(memory, setup.format, base + i * 0x10000, size);
    const q = ring.createQueue();
    const addUsed = q.addUsed.bind(q);
    used.push(0);
    q.addUsed = (id: number, len: number) => {
      used[i]!++;
      addUsed(id, len);
    };
    rings.push(ring);
    queues.push(q);
  }
  const rig: DeviceRig<D> = {
    device,
    memory,
    rings,
    queues,
    scheduler,
    used,
    usedInterrupts: 0,
    configInterrupts: 0,
  };
  activate(rig, features);
  return rig;
}

/**
 * Activates `rig.device` over `rig.queues` with `features`, counting interrupts in the rig;
 * the scheduler of the context is the rig's, unless `realScheduler` (then the device's own).
 */
export function activate<D extends VirtioDevice>(
  rig: DeviceRig<D>,
  features: bigint,
  realScheduler = false,
): void {
  const interrupt: InterruptSink = {
    usedBuffer: () => {
      rig.usedInterrupts++;
    },
    configChanged: () => {
      rig.configInterrupts++;
    },
  };
  const { device, memory, queues } = rig;
  if (!device.acceptFeatures(features)) throw new Error('features refused');
  device.activate({
    memory,
    queues,
    features,
    interrupt,
    ...(realScheduler ? {} : { schedule: rig.scheduler.schedule }),
  });
}

/** An indirect descriptor pointing at `table`, `len` bytes. */
export function indirect(table: number, len: number): { addr: number; len: number; flags: number } {
  return { addr: table, len, flags: VIRTQ_DESC_F_INDIRECT };
}

/**
 * Writes an indirect table of `(addr, len, writable)` entries at `at` in the descriptor layout
 * of `format` (split: flags and next; packed: id and flags, entries in order); returns its
 * length in bytes.
 */
export function writeTable(
  memory: GuestMemory,
  format: RingFormat,
  at: number,
  entries: [number, number, boolean][],
): number {
  entries.forEach(([addr, len, writable], i) => {
    const d = at + 16 * i;
    const last = i === entries.length - 1;
    memory.writeU32(d, addr);
    memory.writeU32(d + 4, 0);
    memory.writeU32(d + 8, len);
    const write = writable ? VIRTQ_DESC_F_WRITE : 0;
    if (format === 'split') {
      memory.writeU16(d + 12, write | (last ? 0 : VIRTQ_DESC_F_NEXT));
      memory.writeU16(d + 14, last ? 0 : i + 1);
    } else {
      memory.writeU16(d + 12, 0);
      memory.writeU16(d + 14, write);
    }
  });
  return 16 * entries.length;
}
