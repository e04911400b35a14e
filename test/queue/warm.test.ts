/**
 * `Queue.warm`, the read-ahead hint before a burst of pops: whatever the rings hold and
 * whatever count it is given, it throws nothing, writes nothing (guest memory and the queue's
 * saved state are byte for byte the same), and the pops after it return what they would have
 * returned without it. After the queue moves to another guest memory it reads that one.
 * With `write`, the only bytes it changes are the first byte of the first two lines of the
 * first buffer of available chains that begin device-writable, set to zero, within that
 * buffer, and logged as dirty.
 */
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { GuestMemory } from '../../src/memory/index.js';
import type { DescriptorChain, Queue, RingFormat } from '../../src/queue/index.js';
import { drivenQueue } from './driven-queue.js';

const MEM = 1 << 18;
const SIZE = 16;

/** What a pop saw, in a form to compare. */
function seen(c: DescriptorChain | null): unknown {
  if (c === null) return null;
  return {
    head: c.head,
    count: c.count,
    writableStart: c.writableStart,
    addrs: Array.from(c.addrs).slice(0, c.count),
    lens: Array.from(c.lens).slice(0, c.count),
  };
}

/**
 * Every pop's result, or the error's class and message, until the ring is empty; with `warms`,
 * warm(warms[i % length]) before pop i, as a device calls it.
 */
function drain(q: Queue, warms: readonly number[] = []): unknown[] {
  const out: unknown[] = [];
  for (let i = 0; i < 4 * SIZE; i++) {
    if (warms.length > 0) q.warm(warms[i % warms.length]!);
    try {
      const c = q.pop();
      out.push(seen(c));
      if (c === null) break;
    } catch (e) {
      out.push(`${(e as Error).name}: ${(e as Error).message}`);
    }
  }
  return out;
}

const counts = fc.oneof(
  fc.integer({ min: 0, max: 2 * SIZE }),
  fc.constantFrom(-1, 0x1_0000, 2 ** 31, Number.MAX_SAFE_INTEGER, Number.NaN, Infinity),
);

/** A chain a driver makes available: buffers anywhere in memory, or near its end. */
const chain = fc.array(
  fc.record({
    addr: fc.oneof(fc.nat(MEM - 1), fc.constantFrom(0, MEM - 64, MEM - 65, MEM - 128)),
    len: fc.integer({ min: 1, max: 4096 }),
  }),
  { minLength: 1, maxLength: 3 },
);

/** Raw bytes written over the ring area after the chains (a hostile driver). */
const noise = fc.array(
  fc.record({ at: fc.nat(SIZE * 16 + 64), bytes: fc.uint8Array({ minLength: 1, maxLength: 32 }) }),
  { maxLength: 4 },
);

describe.each(['split', 'packed'] as RingFormat[])('%s ring: warm', (format) => {
  it('property: changes nothing, and pops see what they would have seen, with warm before each', () => {
    fc.assert(
      fc.property(
        fc.array(chain, { maxLength: SIZE / 4 }),
        noise,
        fc.array(counts, { minLength: 1, maxLength: 4 }),
        (chains, junk, warms) => {
          // Two identical rigs; only one of them is warmed.
          const rigs = [0, 1].map(() => drivenQueue(format, SIZE, { memoryBytes: MEM }));
          for (const { driver, memory, queue } of rigs) {
            for (const parts of chains) {
              const fits = parts.map((p) => ({ addr: p.addr, len: Math.min(p.len, MEM - p.addr) }));
              driver.add(fits);
            }
            driver.kick();
            for (const z of junk) memory.write(queue.descTableAddress + z.at, z.bytes);
          }
          const [plain, warmed] = rigs as [(typeof rigs)[0], (typeof rigs)[0]];
          const bytes = new Uint8Array(MEM);
          warmed.memory.read(0, bytes);
          const state = JSON.stringify(warmed.queue.save());
          for (const n of warms) warmed.queue.warm(n);
          const after = new Uint8Array(MEM);
          warmed.memory.read(0, after);
          expect(Buffer.compare(after, bytes), 'guest memory changed').toBe(0);
          expect(JSON.stringify(warmed.queue.save())).toBe(state);
          expect(drain(warmed.queue, warms)).toEqual(drain(plain.queue));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('property (write): changes only the first byte of the lines of device-writable first buffers, to 0', () => {
    const part = fc.record({ addr: fc.nat(MEM - 1), len: fc.integer({ min: 1, max: 300 }) });
    const chainRW = fc.record({
      readable: fc.array(part, { maxLength: 2 }),
      writable: fc.array(part, { maxLength: 2 }),
    });
    fc.assert(
      fc.property(
        fc.array(chainRW, { maxLength: SIZE / 4 }),
        fc.array(counts, { minLength: 1, maxLength: 4 }),
        (chains, warms) => {
          const rigs = [0, 1].map(() => drivenQueue(format, SIZE, { memoryBytes: MEM }));
          const allowed = new Set<number>();
          for (const { driver, memory } of rigs) {
            memory.write(0x1000, new Uint8Array(MEM - 0x1000).fill(0xa5));
            for (const c of chains) {
              const fit = (p: { addr: number; len: number }) => ({
                addr: Math.max(p.addr, 0x1000),
                len: Math.max(1, Math.min(p.len, MEM - Math.max(p.addr, 0x1000))),
              });
              const readable = c.readable.map(fit);
              const writable = c.writable.map(fit);
              if (readable.length + writable.length === 0) continue;
              driver.add(readable, writable);
              if (readable.length === 0) {
                allowed.add(writable[0]!.addr);
                if (writable[0]!.len > 64) allowed.add(writable[0]!.addr + 64);
              }
            }
            driver.kick();
          }
          const [plain, warmed] = rigs as [(typeof rigs)[0], (typeof rigs)[0]];
          const before = new Uint8Array(MEM);
          warmed.memory.read(0, before);
          warmed.memory.setDirtyTracking(true);
          for (const n of warms) warmed.queue.warm(n, true);
          const after = new Uint8Array(MEM);
          warmed.memory.read(0, after);
          for (let i = 0; i < MEM; i++) {
            if (after[i] === before[i]) continue;
            expect(allowed.has(i), `byte ${i} changed`).toBe(true);
            expect(after[i]).toBe(0);
            expect(warmed.memory.isPageDirty(i), `page of byte ${i} not logged`).toBe(true);
          }
          expect(drain(warmed.queue, warms)).toEqual(drain(plain.queue));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('write: zeroes the first byte of the two first lines of a writable buffer, and no more', () => {
    const { queue, driver, memory } = drivenQueue(format, SIZE, { memoryBytes: MEM });
    memory.write(0x2_0000, new Uint8Array(0x1_0000).fill(0xa5));
    driver.add([], [{ addr: 0x2_0000, len: 200 }]);
    driver.add([], [{ addr: 0x2_1000, len: 10 }]);
    driver.add([{ addr: 0x2_2000, len: 200 }], [{ addr: 0x2_3000, len: 200 }]);
    driver.kick();
    queue.warm(SIZE, true);
    const at = (a: number) => memory.readU8(a);
    expect([at(0x2_0000), at(0x2_0001), at(0x2_0040), at(0x2_0041)]).toEqual([0, 0xa5, 0, 0xa5]);
    // A 10-byte buffer: its first byte only.
    expect([at(0x2_1000), at(0x2_1040)]).toEqual([0, 0xa5]);
    // A chain that starts readable is only read.
    for (const a of [0x2_2000, 0x2_2040, 0x2_3000, 0x2_3040]) expect(at(a)).toBe(0xa5);
    // Without `write`, nothing changes.
    driver.add([], [{ addr: 0x2_4000, len: 200 }]);
    driver.kick();
    for (let i = 0; i < 3; i++) queue.pop();
    queue.warm(SIZE);
    expect(at(0x2_4000)).toBe(0xa5);
  });

  it('is a no-op on a queue that is not active', () => {
    const { queue, driver } = drivenQueue(format, SIZE, { memoryBytes: MEM });
    driver.add([{ addr: 0x2_0000, len: 64 }]);
    driver.kick();
    queue.reset();
    expect(() => queue.warm(SIZE)).not.toThrow();
    expect(queue.isActive).toBe(false);
  });

  it('reads the memory the queue was last initialised over', () => {
    const { queue, driver, memory } = drivenQueue(format, SIZE, { memoryBytes: MEM });
    driver.add([{ addr: 0x2_0000, len: 64 }]);
    driver.kick();
    queue.warm(SIZE);
    // The same rings in another guest memory (as after a new vhost-user memory table).
    const other = GuestMemory.create(MEM);
    const copy = new Uint8Array(MEM);
    memory.read(0, copy);
    other.write(0, copy);
    const find = vi.spyOn(other, 'findRegion');
    const { descTableAddress, availRingAddress, usedRingAddress } = queue;
    queue.reset();
    Object.assign(queue, {
      size: SIZE,
      ready: true,
      descTableAddress,
      availRingAddress,
      usedRingAddress,
    });
    queue.initialize(other);
    queue.warm(SIZE);
    // The region of the buffer was looked up in the new memory, not taken from the old one.
    expect(find).toHaveBeenCalledWith(0x2_0000);
    expect(seen(queue.pop())).toMatchObject({ addrs: [0x2_0000], lens: [64] });
  });
});
