/**
 * The packed queue's buffers in flight (src/queue/packed/in-flight.ts) against a plain model:
 * an array of [id, slots] in pop order. Buffers leave in any order and ids come back: the
 * oldest, the k-th oldest, every entry and the totals must stay what the model says.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InFlightBuffers } from '../../src/queue/packed/in-flight.js';

type Op =
  | { kind: 'add'; pick: number; slots: number }
  | { kind: 'remove'; pick: number }
  | { kind: 'oldest' }
  | { kind: 'nth'; pick: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('add' as const),
      pick: fc.nat(),
      slots: fc.integer({ min: 1, max: 3 }),
    }),
  },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('remove' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('oldest' as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('nth' as const), pick: fc.nat() }) },
);

describe('buffers in flight (packed ring)', () => {
  it('property: oldest, nth, entries and totals match a model while buffers leave in any order', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.array(op, { maxLength: 400 }), (size, ops) => {
        const held = new InFlightBuffers();
        held.reset(size);
        let model: [number, number][] = [];
        for (const o of ops) {
          if (o.kind === 'add') {
            const free = [...Array(size).keys()].filter((id) => !model.some(([m]) => m === id));
            if (free.length === 0) continue;
            const id = free[o.pick % free.length]!;
            held.add(id, o.slots);
            model.push([id, o.slots]);
          } else if (o.kind === 'remove') {
            if (model.length === 0) continue;
            const [id, slots] = model[o.pick % model.length]!;
            expect(held.remove(id)).toBe(slots);
            model = model.filter(([m]) => m !== id);
          } else if (o.kind === 'oldest') {
            expect(held.oldest).toBe(model.length === 0 ? -1 : model[0]![0]);
          } else if (model.length > 0) {
            const k = o.pick % model.length;
            expect(held.nth(k)).toBe(model[k]![0]);
          }
          expect(held.count).toBe(model.length);
          expect(held.slots).toBe(model.reduce((sum, [, s]) => sum + s, 0));
          for (let id = 0; id < size; id++) {
            expect(held.has(id)).toBe(model.some(([m]) => m === id));
          }
        }
        expect(held.entries()).toEqual(model);
      }),
      { numRuns: 500 },
    );
  });

  it('one buffer held while others come and go thousands of times: the order holds', () => {
    const held = new InFlightBuffers();
    held.reset(4);
    held.add(3, 1);
    for (let k = 0; k < 5000; k++) {
      held.add(k % 3, 1);
      held.add((k + 1) % 3, 2);
      held.remove(k % 3);
      held.remove((k + 1) % 3);
    }
    held.add(0, 1);
    expect(held.entries()).toEqual([
      [3, 1],
      [0, 1],
    ]);
    expect(held.oldest).toBe(3);
    expect(held.nth(1)).toBe(0);
  });
});
