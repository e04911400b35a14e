/**
 * Property tests of the packed virtqueue: the device (PackedQueue) against the driver
 * (PackedDriver) over random sizes (mostly not powers of two), random lists, random completion
 * orders and batch boundaries, for many laps of the ring; notification decisions of both sides
 * against a model that enumerates ring positions one by one; and undoPop.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type DriverBuffer, PackedDriver, RawPackedRing } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  type Descriptor,
  DescriptorChain,
  PackedQueue,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
} from '../../src/queue/index.js';

const RING = 0x1000;
const TABLES = 0x40000;
const BUF = 0x80000;

function setup(size: number, options: { eventIdx?: boolean; inOrder?: boolean } = {}) {
  const memory = GuestMemory.create(1 << 20);
  const driver = new PackedDriver(memory, {
    size,
    base: RING,
    eventIdx: options.eventIdx ?? false,
    inOrder: options.inOrder ?? false,
  });
  const raw = new RawPackedRing(memory, RING, size);
  const q = raw.createQueue({ eventIdx: options.eventIdx ?? false, indirect: true });
  return { memory, driver, raw, q };
}

const sizeArb = fc.oneof(
  fc.integer({ min: 1, max: 8 }),
  fc.integer({ min: 9, max: 48 }),
  fc.constantFrom(1, 2, 3, 5, 6, 7, 31, 33, 100),
);

interface Added {
  id: number;
  readable: DriverBuffer[];
  writable: DriverBuffer[];
  indirect: boolean;
  writableBytes: number;
}

function buffers(n: number, seed: number, salt: number): DriverBuffer[] {
  const out: DriverBuffer[] = [];
  for (let k = 0; k < n; k++)
    out.push({
      addr: BUF + 0x40 * ((seed + k + salt) % 1024),
      len: 1 + ((seed * 7 + k * 13) % 60),
    });
  return out;
}

describe('packed ring properties', () => {
  it('wrap counters and positions agree on both sides across many laps; every id comes back once', () => {
    const listArb = fc.record({
      nRead: fc.integer({ min: 0, max: 3 }),
      nWrite: fc.integer({ min: 0, max: 3 }),
      indirect: fc.boolean(),
      seed: fc.nat(1000),
    });
    const roundArb = fc.record({
      lists: fc.array(listArb, { maxLength: 7 }),
      order: fc.array(fc.nat(1000), { maxLength: 12 }),
      cuts: fc.array(fc.boolean(), { maxLength: 12 }),
      keep: fc.nat(3),
      fullLen: fc.boolean(),
    });
    fc.assert(
      fc.property(
        sizeArb,
        fc.boolean(),
        fc.array(roundArb, { minLength: 10, maxLength: 60 }),
        (size, inOrder, rounds) => {
          const { driver, q } = setup(size, { inOrder });
          const chain = new DescriptorChain(4);
          const added = new Map<number, Added>();
          /** Popped, not yet completed, in pop order. */
          let popped: Added[] = [];
          const expectedBack: { id: number; len: number }[] = [];
          let slotsUsed = 0;
          let tableAt = TABLES;

          const collect = () => {
            for (let id = driver.popUsed(); id >= 0; id = driver.popUsed()) {
              const want = expectedBack.shift();
              expect(want).toBeDefined();
              expect(id).toBe(want!.id);
              expect(driver.lastUsedLen).toBe(want!.len);
              expect(added.delete(id)).toBe(true);
            }
          };

          const complete = (group: Added[], lens: number[]) => {
            if (inOrder) {
              const last = group[group.length - 1]!;
              q.addUsedBatch(group.length, last.id, lens[lens.length - 1]!);
              group.forEach((a, k) => {
                expectedBack.push({
                  id: a.id,
                  len: k === group.length - 1 ? lens[k]! : a.writableBytes,
                });
              });
            } else {
              group.forEach((a, k) => {
                q.addUsed(a.id, lens[k]!);
                expectedBack.push({ id: a.id, len: lens[k]! });
              });
            }
          };

          for (const round of rounds) {
            for (const l of round.lists) {
              const readable = buffers(l.nRead, l.seed, 0);
              const writable = buffers(l.nWrite || (l.nRead === 0 ? 1 : 0), l.seed, 500);
              const n = readable.length + writable.length;
              const slots = l.indirect ? 1 : n;
              if (n > size || slots > driver.numFree) continue;
              let id: number;
              if (l.indirect) {
                id = driver.addIndirect(tableAt, readable, writable);
                tableAt = TABLES + ((tableAt - TABLES + 16 * n + 0x100) % 0x20000);
              } else id = driver.add(readable, writable);
              expect(added.has(id)).toBe(false);
              const writableBytes = writable.reduce((s, b) => s + b.len, 0);
              added.set(id, { id, readable, writable, indirect: l.indirect, writableBytes });
            }
            driver.kick();
            for (let c = q.pop(chain); c !== null; c = q.pop(chain)) {
              const a = added.get(c.head);
              expect(a).toBeDefined();
              const want = [...a!.readable, ...a!.writable];
              expect(c.count).toBe(want.length);
              expect(c.ringCount).toBe(a!.indirect ? 1 : want.length);
              expect([...c].map((d: Descriptor) => ({ addr: d.addr, len: d.len }))).toEqual(want);
              expect(c.writableLength).toBe(a!.writableBytes);
              slotsUsed += c.ringCount;
              popped.push(a!);
            }
            // Both sides agree on where the next available descriptor goes, and on the lap.
            expect(q.nextAvail).toBe(driver.nextAvailIdx);
            expect(q.availWrapCounter).toBe(driver.availWrapCounter);

            // Complete all but `keep` of the popped buffers, in a random order (in pop order
            // with IN_ORDER), publishing at random batch boundaries.
            const n = Math.max(0, popped.length - round.keep);
            let todo: Added[];
            if (inOrder) {
              todo = popped.slice(0, n);
              popped = popped.slice(n);
            } else {
              const keyed = popped.map((a, k) => ({ a, key: round.order[k] ?? k }));
              keyed.sort((x, y) => x.key - y.key);
              todo = keyed.slice(0, n).map((x) => x.a);
              popped = keyed.slice(n).map((x) => x.a);
            }
            let group: Added[] = [];
            let lens: number[] = [];
            todo.forEach((a, k) => {
              group.push(a);
              lens.push(round.fullLen ? a.writableBytes : Math.min(a.writableBytes, k));
              if (round.cuts[k] === true || k === todo.length - 1) {
                complete(group, lens);
                group = [];
                lens = [];
                if (round.cuts[k + 1] !== false) q.advanceUsedRingIdx();
              }
            });
            q.advanceUsedRingIdx();
            collect();
            expect(q.inFlight).toBe(popped.length);
          }
          // Drain what is left.
          if (popped.length > 0)
            complete(
              popped,
              popped.map((a) => a.writableBytes),
            );
          popped = [];
          q.advanceUsedRingIdx();
          collect();
          expect(expectedBack).toEqual([]);
          expect(added.size).toBe(q.inFlight);
          expect(q.inFlight).toBe(0);
          expect(driver.numFree).toBe(size);
          expect(driver.inFlight).toBe(0);
          expect(q.nextUsed).toBe(driver.nextUsedIdx);
          expect(q.usedWrapCounter).toBe(driver.usedWrapCounter);
          expect(q.nextUsed).toBe(q.nextAvail);
          expect(q.usedWrapCounter).toBe(q.availWrapCounter);
          // The positions match the slot count: wrap counter flipped once per lap.
          expect(q.nextAvail).toBe(slotsUsed % size);
          expect(q.availWrapCounter).toBe(Math.floor(slotsUsed / size) % 2 === 0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('notification decisions on both sides agree with a position-by-position model', () => {
    const eventArb = fc.record({
      flags: fc.oneof(fc.constant(RING_EVENT_FLAGS_DESC), fc.integer({ min: 0, max: 3 })),
      off: fc.oneof(fc.nat(48), fc.nat(0x7fff)),
      wrap: fc.boolean(),
    });
    const opArb = fc.oneof(
      fc.record({ t: fc.constant('driverEvent' as const), e: eventArb }),
      fc.record({ t: fc.constant('deviceEvent' as const), e: eventArb }),
      fc.record({
        t: fc.constant('cycle' as const),
        lists: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 6 }),
        driverKicks: fc.boolean(),
        reverse: fc.boolean(),
      }),
      fc.record({ t: fc.constant('deviceKick' as const) }),
    );
    fc.assert(
      fc.property(sizeArb, fc.array(opArb, { maxLength: 60 }), (size, ops) => {
        const { driver, raw, q } = setup(size, { eventIdx: true });
        // The test writes the driver's event structure itself from now on.
        driver.setInterrupts(false);
        /** Absolute ring positions (slots counted from the start) of each side. */
        let availPos = 0;
        let availSince = 0;
        let usedPos = 0;
        let usedSince = 0;
        let driverEvent = { flags: RING_EVENT_FLAGS_DISABLE, off: 0, wrap: false };
        let deviceEvent = { flags: 0, off: 0, wrap: false };

        /** The model: does any position in [from, to) match the event? (§2.8.10) */
        const wants = (e: typeof driverEvent, from: number, to: number): boolean => {
          if (e.flags === RING_EVENT_FLAGS_DISABLE) return false;
          if (e.flags !== RING_EVENT_FLAGS_DESC) return true;
          if (e.off >= size) return true;
          for (let p = from; p < to; p++) {
            const lapWrap = Math.floor(p / size) % 2 === 0; // wrap counter 1 on the first lap
            if (p % size === e.off && lapWrap === e.wrap) return true;
          }
          return false;
        };

        for (const op of ops) {
          if (op.t === 'driverEvent') {
            raw.setDriverEvent(op.e.flags, (op.e.off & 0x7fff) | (op.e.wrap ? 0x8000 : 0));
            driverEvent = { ...op.e, off: op.e.off & 0x7fff };
          } else if (op.t === 'deviceEvent') {
            raw.setDeviceEvent(op.e.flags, (op.e.off & 0x7fff) | (op.e.wrap ? 0x8000 : 0));
            deviceEvent = { ...op.e, off: op.e.off & 0x7fff };
          } else if (op.t === 'deviceKick') {
            expect(q.prepareKick()).toBe(wants(driverEvent, usedSince, usedPos));
            usedSince = usedPos;
          } else {
            const ids: number[] = [];
            for (const n of op.lists) {
              if (n > driver.numFree) continue;
              ids.push(driver.add(buffers(n, ids.length, 0)));
              availPos += n;
            }
            driver.publish();
            if (op.driverKicks) {
              expect(driver.needsNotification()).toBe(wants(deviceEvent, availSince, availPos));
              availSince = availPos;
            }
            const got: number[] = [];
            for (let c = q.pop(); c !== null; c = q.pop()) got.push(c.head);
            expect(got).toEqual(ids);
            if (op.reverse) got.reverse();
            for (const id of got) q.addUsed(id, 0);
            q.advanceUsedRingIdx();
            for (let id = driver.popUsed(); id >= 0; id = driver.popUsed());
            usedPos = availPos;
          }
        }
        expect(driver.numFree).toBe(size);
      }),
      { numRuns: 400 },
    );
  });

  it('undoPop restores the queue exactly, and the same buffer pops again', () => {
    const opArb = fc.oneof(
      fc.record({
        t: fc.constant('add' as const),
        n: fc.integer({ min: 1, max: 4 }),
        ind: fc.boolean(),
      }),
      fc.record({ t: fc.constant('pop' as const) }),
      fc.record({ t: fc.constant('popUndo' as const), twice: fc.boolean() }),
      fc.record({ t: fc.constant('complete' as const), pick: fc.nat() }),
      fc.record({ t: fc.constant('publish' as const) }),
    );
    fc.assert(
      fc.property(sizeArb, fc.array(opArb, { maxLength: 80 }), (size, ops) => {
        const { memory, driver, q } = setup(size);
        const inFlight: number[] = [];
        const chain = new DescriptorChain();
        let table = TABLES;
        const snapshot = (x: PackedQueue) => JSON.stringify(x.save());
        for (const op of ops) {
          if (op.t === 'add') {
            const n = Math.min(op.n, size);
            if ((op.ind ? 1 : n) > driver.numFree) continue;
            if (op.ind) {
              driver.addIndirect(table, buffers(n, 1, 2));
              table += 16 * n;
            } else driver.add(buffers(n, 3, 4));
          } else if (op.t === 'publish') driver.publish();
          else if (op.t === 'pop') {
            const c = q.pop(chain);
            if (c !== null) inFlight.push(c.head);
          } else if (op.t === 'popUndo') {
            const before = snapshot(q);
            const c = q.pop();
            if (c === null) {
              expect(snapshot(q)).toBe(before);
              continue;
            }
            q.undoPop();
            expect(snapshot(q)).toBe(before);
            if (op.twice) expect(() => q.undoPop()).toThrow(RangeError);
            const again = q.pop()!;
            expect(again.head).toBe(c.head);
            expect([...again]).toEqual([...c]);
            inFlight.push(again.head);
            // And a saved state restores to the same queue.
            const state = JSON.parse(snapshot(q));
            expect(snapshot(PackedQueue.fromState(state, memory))).toBe(snapshot(q));
          } else if (inFlight.length > 0) {
            const [id] = inFlight.splice(op.pick % inFlight.length, 1);
            q.addUsed(id!, 0);
            q.advanceUsedRingIdx();
            for (let u = driver.popUsed(); u >= 0; u = driver.popUsed());
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
