import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type DriverQueue, PackedDriver, SplitDriver } from '../../src/driver/index.js';
import { isVirtqError, SnapshotError } from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  type AnyQueue,
  createQueue,
  DescriptorChain,
  queueFromState,
  type RingFormat,
  silentLogger,
} from '../../src/queue/index.js';

const GUARD = 64;
const MEM = 0x20000;

/** Guest memory whose region sits between two canary-filled guard zones of its buffer. */
function guardedMemory(): { memory: GuestMemory; bytes: Uint8Array } {
  const buffer = new ArrayBuffer(MEM + 2 * GUARD);
  const bytes = new Uint8Array(buffer);
  bytes.fill(0xa5, 0, GUARD);
  bytes.fill(0xa5, GUARD + MEM);
  return { memory: new GuestMemory([{ base: 0, length: MEM, buffer, offset: GUARD }]), bytes };
}

function canariesIntact(bytes: Uint8Array): boolean {
  for (let i = 0; i < GUARD; i++)
    if (bytes[i] !== 0xa5 || bytes[GUARD + MEM + i] !== 0xa5) return false;
  return true;
}

/** A live queue of `format` with some traffic done, and chains left in flight. */
function liveQueue(format: RingFormat, traffic: number, inFlight: number) {
  const { memory, bytes } = guardedMemory();
  const size = format === 'split' ? 16 : 12;
  const q = createQueue(format, size, { logger: silentLogger });
  let driver: DriverQueue;
  if (format === 'split') {
    const d = new SplitDriver(memory, { size, base: 0, eventIdx: true });
    [q.descTableAddress, q.availRingAddress, q.usedRingAddress] = [
      d.layout.desc,
      d.layout.avail,
      d.layout.used,
    ];
    driver = d;
  } else {
    const d = new PackedDriver(memory, { size, base: 0, eventIdx: true });
    [q.descTableAddress, q.availRingAddress, q.usedRingAddress] = [
      d.layout.desc,
      d.layout.driver,
      d.layout.device,
    ];
    driver = d;
  }
  q.size = size;
  q.ready = true;
  q.usesNotifSuppression = true;
  q.indirectDesc = true;
  q.initialize(memory);
  const chain = new DescriptorChain();
  for (let i = 0; i < traffic + inFlight; i++) {
    driver.add(
      [{ addr: 0x8000 + 64 * (i % 16), len: 16 }],
      [{ addr: 0xc000 + 64 * (i % 16), len: 32 }],
    );
    driver.kick();
    const c = q.pop(chain)!;
    if (i < traffic) {
      q.addUsed(c.head, 8);
      q.advanceUsedRingIdx();
      q.prepareKick();
      while (driver.popUsed() >= 0);
    }
  }
  return { memory, bytes, q };
}

/** A random mutation of a plain JSON value at a random path. */
const mutation = fc.record({
  pick: fc.nat(),
  // Plausible values (small numbers, flipped booleans) are weighted up so that many mutated
  // states pass validation and the restored queue gets exercised.
  kind: fc.constantFrom(
    ...(['small', 'small', 'small', 'small', 'small', 'flip', 'flip', 'flip'] as const),
    ...([
      'number',
      'big',
      'negative',
      'fraction',
      'string',
      'null',
      'bool',
      'delete',
      'array',
      'nan',
      'unsafe',
    ] as const),
  ),
  value: fc.integer({ min: -5, max: 70000 }),
});

function mutate(
  state: Record<string, unknown>,
  m: { pick: number; kind: string; value: number },
): string {
  // Flatten to (container, key) pairs, inFlight entries included.
  const slots: [Record<string | number, unknown>, string | number, string][] = [];
  for (const [k, v] of Object.entries(state)) {
    slots.push([state, k, k]);
    if (!Array.isArray(v)) continue;
    for (let i = 0; i < v.length; i++) {
      slots.push([v as unknown as Record<number, unknown>, i, `${k}.${i}`]);
      const e = v[i] as unknown;
      if (!Array.isArray(e)) continue;
      for (let j = 0; j < e.length; j++) {
        slots.push([e as unknown as Record<number, unknown>, j, `${k}.${i}.${j}`]);
      }
    }
  }
  const [obj, key, path] = slots[m.pick % slots.length]!;
  const values: Record<string, unknown> = {
    small: Math.abs(m.value) % 40,
    flip: typeof obj[key] === 'boolean' ? !obj[key] : Math.abs(m.value) % 3,
    number: m.value,
    big: 2 ** 40 + m.value,
    negative: -1 - Math.abs(m.value),
    fraction: m.value + 0.5,
    string: String(m.value),
    null: null,
    bool: m.value % 2 === 0,
    array: [m.value],
    nan: Number.NaN,
    unsafe: 2 ** 53,
  };
  if (m.kind === 'delete') delete obj[key];
  else obj[key] = values[m.kind];
  return path;
}

describe('snapshots: random mutations of valid states', () => {
  for (const format of ['split', 'packed'] as const) {
    it(`${format}: a mutated state is refused with the field named, or restores into a queue that stays in bounds`, () => {
      let refused = 0;
      let restored = 0;
      fc.assert(
        fc.property(
          fc.integer({ min: 0, max: 40 }),
          fc.integer({ min: 0, max: 5 }),
          fc.array(mutation, { minLength: 1, maxLength: 3 }),
          (traffic, inFlight, mutations) => {
            const a = liveQueue(format, traffic, inFlight);
            const state = JSON.parse(JSON.stringify(a.q.save())) as Record<string, unknown>;
            for (const m of mutations) mutate(state, m);
            const b = guardedMemory();
            b.bytes.set(a.bytes.subarray(GUARD, GUARD + MEM), GUARD);
            let q: AnyQueue;
            try {
              q = queueFromState(state, b.memory, { logger: silentLogger });
            } catch (e) {
              // Only a typed snapshot error, naming a field of this format.
              expect(e).toBeInstanceOf(SnapshotError);
              expect((e as SnapshotError).field).toMatch(/^(split|packed|queue)\./);
              refused++;
              return;
            }
            restored++;
            // Whatever was accepted must behave: only VirtqErrors, never a write outside memory.
            const chain = new DescriptorChain();
            for (let step = 0; step < 40; step++) {
              try {
                switch (step % 5) {
                  case 0:
                    q.pop(chain);
                    break;
                  case 1:
                    q.addUsed(step % Math.max(1, q.size), 4);
                    break;
                  case 2:
                    q.advanceUsedRingIdx();
                    break;
                  case 3:
                    q.prepareKick();
                    break;
                  default:
                    q.popOrEnableNotification(chain);
                }
              } catch (e) {
                if (!isVirtqError(e)) throw e;
              }
            }
            expect(canariesIntact(b.bytes)).toBe(true);
          },
        ),
        { numRuns: 1500 },
      );
      // The fuzzer must reach both outcomes, or it proves nothing.
      expect(refused).toBeGreaterThan(300);
      expect(restored).toBeGreaterThan(40);
    });
  }

  it('an unmutated state restores to an identical save()', () => {
    for (const format of ['split', 'packed'] as const) {
      const a = liveQueue(format, 23, 3);
      const saved = a.q.save();
      const q = queueFromState(JSON.parse(JSON.stringify(saved)), a.memory, {
        logger: silentLogger,
      });
      expect(q.save()).toEqual(saved);
    }
  });
});
