import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DeviceBehaviourError, SplitDriver } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { DescriptorChain, InOrderCompleter, SplitQueue } from '../../src/queue/index.js';

function setup(size: number, inOrder: boolean) {
  const mem = GuestMemory.create(1 << 20);
  const driver = new SplitDriver(mem, { size, base: 0, inOrder, eventIdx: true });
  const q = new SplitQueue(size);
  q.size = size;
  q.ready = true;
  q.descTableAddress = driver.layout.desc;
  q.availRingAddress = driver.layout.avail;
  q.usedRingAddress = driver.layout.used;
  q.usesNotifSuppression = true;
  q.initialize(mem);
  return { mem, driver, q };
}

describe('in-order use (VIRTIO_F_IN_ORDER)', () => {
  it('driver allocates descriptors in ring order with next = x + 1, wrapping to 0', () => {
    const { driver, q } = setup(8, true);
    const heads: number[] = [];
    for (let k = 0; k < 3; k++) {
      heads.push(driver.add([{ addr: 0x10000, len: 4 }], [{ addr: 0x20000, len: 4 }]));
    }
    expect(heads).toEqual([0, 2, 4]);
    driver.kick();
    const c = new DescriptorChain();
    const seen: number[][] = [];
    for (let k = 0; k < 3; k++) {
      q.pop(c);
      seen.push([c.descriptor(0).index, c.descriptor(1).index]);
      q.addUsed(c.head, 4);
    }
    q.advanceUsedRingIdx();
    expect(seen).toEqual([
      [0, 1],
      [2, 3],
      [4, 5],
    ]);
    while (driver.popUsed() >= 0);
    // Next chain wraps: descriptors 6, 7 then 0.
    const h = driver.add(
      [
        { addr: 0x10000, len: 4 },
        { addr: 0x10010, len: 4 },
      ],
      [{ addr: 0x20000, len: 4 }],
    );
    driver.kick();
    expect(h).toBe(6);
    q.pop(c);
    expect([...c].map((d) => d.index)).toEqual([6, 7, 0]);
  });

  it('one used entry completes a whole batch; used.idx advances by the batch size', () => {
    const { driver, q, mem } = setup(16, true);
    for (let k = 0; k < 5; k++)
      driver.add([{ addr: 0x10000, len: 4 }], [{ addr: 0x20000 + 64 * k, len: 64 }]);
    driver.kick();
    const done = new InOrderCompleter(q);
    const c = new DescriptorChain();
    const ids: number[] = [];
    for (let c2 = q.pop(c); c2 !== null; c2 = q.pop(c)) {
      done.popped(c2.head);
      ids.push(c2.head);
    }
    // Finish out of order: 2, 0, 1 — nothing can be published before 0 is done.
    done.complete(ids[2]!, 10);
    expect(done.flush()).toBe(0);
    done.complete(ids[0]!, 11);
    expect(done.flush()).toBe(1);
    done.complete(ids[1]!, 12);
    expect(done.flush()).toBe(2); // 1 and 2, as one entry naming 2
    const usedIdxAddr = driver.layout.used + 2;
    expect(mem.readU16(usedIdxAddr)).toBe(3);
    // The batch entry sits at the batch's first used slot (slot 1) and names its last chain.
    expect(mem.readU32(driver.layout.used + 4 + 8 * 1)).toBe(ids[2]);
    expect(mem.readU32(driver.layout.used + 4 + 8 * 1 + 4)).toBe(10);
    const back: [number, number][] = [];
    for (let id = driver.popUsed(); id >= 0; id = driver.popUsed())
      back.push([id, driver.lastUsedLen]);
    expect(back).toEqual([
      [ids[0], 11],
      [ids[1], 64],
      [ids[2], 10],
    ]);
  });

  it('property: any completion order publishes every chain exactly once, in pop order', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4, 8, 16, 64),
        fc.array(fc.nat(), { minLength: 1, maxLength: 200 }),
        fc.boolean(),
        (size, script, collapse) => {
          const { driver, q } = setup(size, true);
          const done = new InOrderCompleter(q, collapse);
          const c = new DescriptorChain();
          const order: number[] = [];
          const returned: number[] = [];
          let outstanding: number[] = [];
          for (const step of script) {
            if (step % 3 === 0 && driver.numFree >= 2) {
              driver.add([{ addr: 0x10000, len: 8 }], [{ addr: 0x20000, len: 32 }]);
              driver.kick();
              const got = q.pop(c);
              expect(got).not.toBeNull();
              done.popped(c.head);
              order.push(c.head);
              outstanding.push(c.head);
            } else if (outstanding.length > 0) {
              const pick = outstanding[step % outstanding.length]!;
              outstanding = outstanding.filter((x) => x !== pick);
              done.complete(pick, 32);
              done.flush();
              for (let id = driver.popUsed(); id >= 0; id = driver.popUsed()) {
                expect(driver.lastUsedLen).toBe(32);
                returned.push(id);
              }
            }
          }
          for (const id of outstanding) done.complete(id, 32);
          done.flush();
          for (let id = driver.popUsed(); id >= 0; id = driver.popUsed()) returned.push(id);
          expect(returned).toEqual(order);
          expect(driver.numFree).toBe(size);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('the in-order driver rejects a used entry naming a chain that is not in flight', () => {
    const { driver, q } = setup(8, true);
    driver.add([{ addr: 0x10000, len: 4 }]);
    driver.kick();
    q.pop();
    q.addUsed(5, 0); // descriptor 5 was never made available
    q.advanceUsedRingIdx();
    expect(() => driver.popUsed()).toThrow(DeviceBehaviourError);
  });

  it('completer rejects ids it does not hold', () => {
    const { q } = setup(8, true);
    const done = new InOrderCompleter(q);
    expect(() => done.complete(3, 0)).toThrow(RangeError);
    done.popped(3);
    expect(() => done.popped(3)).toThrow(RangeError);
    done.complete(3, 1);
    expect(() => done.complete(3, 1)).toThrow(RangeError);
  });
});
