/**
 * The ring walks' fast paths against their checked walks. A chain popped into a record that
 * already holds the region of its buffers (a reused record: what a device does) goes through
 * the fast path; a fresh record knows no region yet and goes through the checked walk. Over
 * hostile descriptor tables in a guest memory of two regions, both must see exactly the same:
 * every field of every chain, the same errors, and, after an error, the same descriptors kept.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { RawPackedRing, RawSplitRing } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { DescriptorChain, type Queue } from '../../src/queue/index.js';

const HALF = 1 << 17;
const MEM = 2 * HALF;
const SIZE = 16;
const NEXT = 1;
const WRITE = 2;
const INDIRECT = 4;

/** A memory of two regions, [0, HALF) and [HALF, MEM). */
function twoRegions(): GuestMemory {
  return new GuestMemory([
    { base: 0, length: HALF, buffer: new ArrayBuffer(HALF) },
    { base: HALF, length: HALF, buffer: new ArrayBuffer(HALF) },
  ]);
}

/** A split ring of SIZE at 0 in two regions. */
function rig() {
  const raw = new RawSplitRing(twoRegions(), 0, SIZE);
  return { raw, queue: raw.createQueue({ logger: { warn: () => {} } }) };
}

/**
 * Everything a chain holds, descriptor by descriptor, with the length of its one-piece view and
 * the region (by base) that holds its buffer; with `list`, also as the `regions` list says.
 */
function fields(c: DescriptorChain, list = true): unknown {
  const descriptors = [];
  for (let i = 0; i < c.count; i++) {
    let view: number | string;
    try {
      view = c.slice(i).length;
    } catch {
      view = 'spans regions';
    }
    // regionAt (it reads a fast walk's one region without building the list), and with `list`
    // the list itself: both must match what the checked walk stored per descriptor.
    const region = c.regionAt(i)?.base ?? null;
    const listed = list ? (c.regions[i]?.base ?? null) : 'unread';
    descriptors.push({ ...c.descriptor(i), view, region, listed });
  }
  return {
    head: c.head,
    count: c.count,
    ringCount: c.ringCount,
    readable: c.readableLength,
    writable: c.writableLength,
    writableStart: c.writableStart,
    descriptors,
  };
}

/** Pops until the ring is empty; `next()` gives the record each pop fills. */
function drain(q: Queue, next: () => DescriptorChain): unknown[] {
  const out: unknown[] = [];
  for (let i = 0; i < 2 * SIZE; i++) {
    const into = next();
    try {
      const c = q.pop(into);
      if (c === null) break;
      // Every other chain's region list is left unread (so unbuilt) before the next pop.
      out.push(fields(c, i % 2 === 1));
    } catch (e) {
      out.push({ error: `${(e as Error).name}: ${(e as Error).message}`, kept: fields(into) });
    }
  }
  return out;
}

/** Buffers mostly in the first region, some across the boundary, empty, or outside memory. */
const addr = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 0x1000, max: 0x8000 }) },
  { weight: 1, arbitrary: fc.constantFrom(HALF - 64, HALF, MEM - 64, MEM, 2 ** 40) },
  { weight: 1, arbitrary: fc.nat(MEM - 1) },
);
const len = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 4096 }) },
  { weight: 1, arbitrary: fc.constantFrom(0, 128, 2 ** 31, 2 ** 32 - 1) },
);
const descriptor = fc.record({
  addr,
  len,
  // NEXT and WRITE often, INDIRECT now and then.
  flags: fc.oneof(
    { weight: 8, arbitrary: fc.constantFrom(0, NEXT, WRITE, NEXT | WRITE) },
    { weight: 1, arbitrary: fc.constantFrom(INDIRECT, INDIRECT | NEXT, INDIRECT | WRITE) },
  ),
  next: fc.oneof(
    { weight: 8, arbitrary: fc.nat(SIZE - 1) },
    { weight: 1, arbitrary: fc.nat(0xffff) },
  ),
});

describe('split ring: the fast walk', () => {
  it('property: a reused record sees what a fresh one sees, errors included', () => {
    fc.assert(
      fc.property(
        fc.array(descriptor, { minLength: SIZE, maxLength: SIZE }),
        fc.array(fc.oneof({ weight: 8, arbitrary: fc.nat(SIZE - 1) }, fc.nat(0xffff)), {
          minLength: 1,
          maxLength: SIZE,
        }),
        fc.boolean(),
        (table, heads, indirect) => {
          const results = [0, 1].map((k) => {
            const { raw, queue } = rig();
            queue.indirectDesc = indirect;
            table.forEach((d, i) => {
              raw.setDesc(i, d.addr, d.len, d.flags, d.next);
            });
            heads.forEach((h, i) => {
              raw.setAvailRing(i, h);
            });
            raw.setAvailIdx(heads.length);
            const reused = new DescriptorChain();
            return drain(queue, k === 0 ? () => new DescriptorChain() : () => reused);
          });
          expect(results[1]).toEqual(results[0]);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('a reused record still refuses a buffer outside memory after chains it took fast', () => {
    const { raw, queue } = rig();
    raw.setDesc(0, 0x2000, 64, NEXT, 1);
    raw.setDesc(1, 0x3000, 64, WRITE, 0);
    raw.setDesc(2, 0x2100, 64, 0, 0);
    raw.setDesc(3, MEM - 16, 64, 0, 0);
    [0, 2, 3].forEach((h, i) => {
      raw.setAvailRing(i, h);
    });
    raw.setAvailIdx(3);
    const into = new DescriptorChain();
    expect(queue.pop(into)?.count).toBe(2);
    expect(queue.pop(into)?.addr).toBe(0x2100);
    expect(() => queue.pop(into)).toThrow(/outside guest memory/);
    expect(into.count).toBe(0);
  });
});

describe('packed ring: the fast walk', () => {
  const AVAIL = RawPackedRing.availBits(true);
  const slot = fc.record({
    addr,
    len,
    id: fc.oneof(
      { weight: 8, arbitrary: fc.nat(SIZE - 1) },
      { weight: 1, arbitrary: fc.nat(0xffff) },
    ),
    flags: descriptor.map((d) => d.flags),
    // Available under the first lap's wrap counter, mostly.
    ring: fc.oneof(
      { weight: 8, arbitrary: fc.constant(AVAIL) },
      { weight: 1, arbitrary: fc.constantFrom(0, 0x8080, 0x8000) },
    ),
  });

  it('property: a reused record sees what a fresh one sees, errors included', () => {
    fc.assert(
      fc.property(
        fc.array(slot, { minLength: SIZE, maxLength: SIZE }),
        fc.boolean(),
        (ring, indirect) => {
          const results = [0, 1].map((k) => {
            const raw = new RawPackedRing(twoRegions(), 0, SIZE);
            const queue = raw.createQueue({ indirect });
            ring.forEach((d, i) => {
              raw.setDesc(i, d.addr, d.len, d.id, d.flags | d.ring);
            });
            const reused = new DescriptorChain();
            return drain(queue, k === 0 ? () => new DescriptorChain() : () => reused);
          });
          expect(results[1]).toEqual(results[0]);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('refuses a list that runs past the slots not in flight, on the fast path too', () => {
    const results = [0, 1].map((k) => {
      const raw = new RawPackedRing(twoRegions(), 0, SIZE);
      const queue = raw.createQueue();
      // Every slot available with NEXT but slot 7: a buffer of slots 0-7, then a list from
      // slot 8 that wraps round into slots 0-7, which are still in flight.
      for (let i = 0; i < SIZE; i++) {
        raw.setDesc(i, 0x2000 + 64 * i, 64, i, (i === 7 ? 0 : NEXT) | AVAIL);
      }
      const reused = new DescriptorChain();
      return drain(queue, k === 0 ? () => new DescriptorChain() : () => reused);
    });
    expect(results[1]).toEqual(results[0]);
    expect(JSON.stringify(results[0])).toContain('runs past the 8 ring slots not in flight');
  });
});

describe('one record shared by queues over one memory', () => {
  // The fast walks skip `begin` for a record already over the queue's memory: whatever the
  // other queue left in it (its size, a long chain, an advanced cursor, a writable start)
  // must not show.
  it('a record popped in turn from a split and a packed queue of other sizes reads as a fresh one', () => {
    const PACKED_SIZE = 4;
    const AVAIL = RawPackedRing.availBits(true);
    const run = (fresh: boolean) => {
      const memory = twoRegions();
      const split = new RawSplitRing(memory, 0, SIZE);
      const packed = new RawPackedRing(memory, 0x10000, PACKED_SIZE);
      const sq = split.createQueue({ logger: { warn: () => {} } });
      const pq = packed.createQueue();
      // Split: a chain of 3 (two readable, one writable), then a writable one.
      split.setDesc(0, 0x2000, 100, NEXT, 1);
      split.setDesc(1, 0x2100, 200, NEXT, 2);
      split.setDesc(2, 0x2200, 300, WRITE, 0);
      split.setDesc(3, 0x3000, 50, WRITE, 0);
      [0, 3].forEach((h, i) => {
        split.setAvailRing(i, h);
      });
      split.setAvailIdx(2);
      // Packed: a readable buffer alone, then a list of three writable slots, id 3.
      packed.setDesc(0, 0x4000, 10, 1, AVAIL);
      packed.setDesc(1, 0x4100, 20, 0, WRITE | NEXT | AVAIL);
      packed.setDesc(2, 0x4200, 30, 0, WRITE | NEXT | AVAIL);
      packed.setDesc(3, 0x4300, 40, 3, WRITE | AVAIL);
      const reused = new DescriptorChain();
      const out: unknown[] = [];
      for (const q of [sq, pq, sq, pq, sq, pq]) {
        const c = q.pop(fresh ? new DescriptorChain() : reused);
        if (c === null) {
          out.push(null);
          continue;
        }
        out.push({ ...(fields(c) as object), addr: c.addr, len: c.len, more: c.hasNext() });
        // The device walks it to the end, as a device loop does.
        while (c.advance());
      }
      return out;
    };
    const got = run(false);
    expect(got).toEqual(run(true));
    expect(got[0]).toMatchObject({ head: 0, count: 3, writableStart: 2, addr: 0x2000 });
    expect(got[1]).toMatchObject({ head: 1, count: 1, writableStart: 1, readable: 10 });
    expect(got[3]).toMatchObject({ head: 3, count: 3, ringCount: 3, writableStart: 0 });
    expect(got[4]).toBeNull();
  });
});
