import { type DriverBuffer, RawSplitRing, SplitDriver } from '../../src/driver/index.js';
import type { GuestMemory, RegionSpec } from '../../src/memory/index.js';
import { DescriptorChain, type SplitQueue } from '../../src/queue/index.js';
import { trackedMemory } from '../tracked-memory.js';

/** Guest-physical address where the rings live (in the first region). */
export const RING_BASE = 0;
/** Where indirect tables go (also in the first region). */
export const TABLE_BASE = 0x1000;

/**
 * Guest memory made of regions laid end to end from `base`, each over its own buffer, so a
 * range crossing from one into the next is contiguous in guest-physical space but not in any
 * one typed array. A first region [0, ringBytes) holds the rings; `gapBefore` leaves a hole
 * before the data regions.
 */
export function contiguousMemory(
  dataSizes: readonly number[],
  options: { dataBase?: number; ringBytes?: number; shared?: boolean } = {},
): GuestMemory {
  const ringBytes = options.ringBytes ?? 0x4000;
  const specs: RegionSpec[] = [
    { base: 0, length: ringBytes, buffer: makeBuffer(ringBytes, options.shared) },
  ];
  let base = options.dataBase ?? ringBytes;
  for (const size of dataSizes) {
    specs.push({ base, length: size, buffer: makeBuffer(size, options.shared) });
    base += size;
  }
  return trackedMemory(specs);
}

function makeBuffer(n: number, shared = false): ArrayBufferLike {
  return shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n);
}

/** A split queue with its driver over `memory`, and one reusable chain object. */
export class Env {
  readonly memory: GuestMemory;
  readonly driver: SplitDriver;
  readonly raw: RawSplitRing;
  readonly queue: SplitQueue;
  readonly chain = new DescriptorChain();
  private outstanding = -1;

  constructor(memory: GuestMemory, size = 64) {
    this.memory = memory;
    this.driver = new SplitDriver(memory, { size, base: RING_BASE });
    this.raw = new RawSplitRing(memory, RING_BASE, size);
    this.queue = this.raw.createQueue();
    this.queue.indirectDesc = true;
  }

  /** Returns the chain popped last (if any) so the driver can reuse its descriptors. */
  private recycle(): void {
    if (this.outstanding < 0) return;
    this.queue.addUsed(this.outstanding, 0);
    this.queue.advanceUsedRingIdx();
    this.driver.popUsed();
    this.outstanding = -1;
  }

  /**
   * Returns the chain popped last to the driver with used length `len`; returns the length
   * the driver saw.
   */
  complete(len: number): number {
    const head = this.outstanding;
    if (head < 0) throw new Error('no chain outstanding');
    this.queue.addUsed(head, len);
    this.queue.advanceUsedRingIdx();
    if (this.driver.popUsed() !== head) throw new Error('driver saw another head');
    this.outstanding = -1;
    return this.driver.lastUsedLen;
  }

  /** Makes a chain available through the driver and pops it on the device side. */
  pop(
    readable: readonly DriverBuffer[],
    writable: readonly DriverBuffer[] = [],
    indirect = false,
  ): DescriptorChain {
    this.recycle();
    if (indirect) this.driver.addIndirect(TABLE_BASE, readable, writable);
    else this.driver.add(readable, writable);
    this.driver.publish();
    const c = this.queue.pop(this.chain);
    if (c === null) throw new Error('queue unexpectedly empty');
    this.outstanding = c.head;
    return c;
  }
}

/**
 * Fills every byte of the data regions (all but the ring region at 0) with a recognisable
 * pattern derived from its address.
 */
export function fillPattern(memory: GuestMemory, seed = 0): void {
  for (const r of memory.regions) {
    if (r.base === 0) continue;
    for (let i = 0; i < r.length; i++) r.bytes[i] = ((r.base + i) * 131 + seed) & 0xff;
  }
}

/** A copy of the bytes [addr, addr + len) (may span regions). */
export function guestBytes(memory: GuestMemory, addr: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  memory.read(addr, out);
  return out;
}

/** The readable (or writable) bytes of a list of buffers, concatenated. */
export function concatBuffers(memory: GuestMemory, bufs: readonly DriverBuffer[]): Uint8Array {
  const total = bufs.reduce((n, b) => n + b.len, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const b of bufs) {
    out.set(guestBytes(memory, b.addr, b.len), at);
    at += b.len;
  }
  return out;
}
