/**
 * KeptRanges (src/memory/shared-copy.ts): the views of a transmitting driver's buffers, kept by
 * where they start. It must always give a view of exactly the range asked, and it must keep
 * one per buffer of the pools real drivers cycle through, so that a frame from a recycled
 * buffer makes no new array.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { KEPT_SETS, KeptRanges } from '../../src/memory/shared-copy.js';

/** Buffer offsets of a pool: `runs` runs of `perRun` buffers `stride` bytes apart. */
function pool(runs: readonly number[], perRun: number, stride: number): number[] {
  return runs.flatMap((base) => Array.from({ length: perRun }, (_, k) => base + 128 + k * stride));
}

describe('KeptRanges', () => {
  const memory = new Uint8Array(new ArrayBuffer(8 << 20));
  const owner = {};

  // 890 buffers in four runs 4096 apart is what DPDK's testpmd (--no-huge) cycled while
  // reflecting; with hugepages its mbufs lie 2368 bytes apart.
  const pools = [
    { name: 'four runs, 4096 apart', at: pool([0x10000, 0x120000, 0x1c0000, 0x500000], 222, 4096) },
    { name: 'four runs, 2368 apart', at: pool([0x10000, 0x120000, 0x1c0000, 0x500000], 225, 2368) },
    { name: 'one run of 900, 2176 apart', at: pool([0x40000], 900, 2176) },
    { name: 'one run of 1000, 8192 apart', at: pool([0], 1000, 8192) },
  ];

  for (const { name, at } of pools) {
    it(`keeps a view per buffer of a pool cycled in turn: ${name}`, () => {
      const kept = new KeptRanges();
      const lap = () => at.map((a) => kept.of(owner, memory, a).get(memory, a, 1500));
      lap();
      const second = lap();
      const third = lap();
      // From the second lap on, every buffer finds the view made for it: the same array.
      const remade = third.filter((v, i) => v !== second[i]).length;
      expect(remade).toBe(0);
      for (let i = 0; i < at.length; i += 97) {
        expect(third[i]!.byteOffset).toBe(at[i]);
        expect(third[i]!.length).toBe(1500);
      }
    });
  }

  it('gives a view of exactly the range asked, whatever shares a set', () => {
    const other = new Uint8Array(new ArrayBuffer(1 << 20), 64);
    const arrays = [memory.subarray(0, 1 << 20), other];
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            array: fc.integer({ min: 0, max: 1 }),
            // Starts that share sets often (more of them than a set has ways): a few cache lines,
            // each plus multiples of the set count, anywhere in the line.
            line: fc.integer({ min: 0, max: 3 }),
            lap: fc.integer({ min: 0, max: 5 }),
            inLine: fc.integer({ min: 0, max: 63 }),
            n: fc.integer({ min: 0, max: 2000 }),
            repeated: fc.boolean(),
          }),
          { minLength: 1, maxLength: 60 },
        ),
        (steps) => {
          const kept = new KeptRanges();
          for (const s of steps) {
            const array = arrays[s.array]!;
            const at = (s.line + s.lap * KEPT_SETS) * 64 + s.inLine;
            if (at + s.n > array.length) continue;
            const range = kept.of(owner, array, at);
            const view = s.repeated ? range.repeated(array, at, s.n) : range.get(array, at, s.n);
            if (view === null) continue; // `repeated` the first time: nothing made
            expect(view.buffer).toBe(array.buffer);
            expect(view.byteOffset).toBe(array.byteOffset + at);
            expect(view.length).toBe(s.n);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('drops every view when another owner (a new guest memory) comes, and on clear', () => {
    const kept = new KeptRanges();
    const first = kept.of(owner, memory, 4096).get(memory, 4096, 100);
    expect(kept.of(owner, memory, 4096).get(memory, 4096, 100)).toBe(first);
    const other = {};
    expect(kept.of(other, memory, 4096).get(memory, 4096, 100)).not.toBe(first);
    const again = kept.of(other, memory, 4096).get(memory, 4096, 100);
    kept.clear();
    expect(kept.of(other, memory, 4096).get(memory, 4096, 100)).not.toBe(again);
  });
});
