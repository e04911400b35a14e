/**
 * Inflight tracking of packed rings (vhost-user "Inflight I/O tracking", QueueRegionPacked):
 * a device that crashes at any point, including in the middle of publishing a batch, and is
 * replaced by one that resumes from the region (and from a stale VRING_BASE, as QEMU sends after
 * a crash) completes every buffer the driver made available exactly once.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PackedDriver } from '../../src/driver/packed.js';
import { SplitDriver } from '../../src/driver/split.js';
import { DescriptorError } from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { DescriptorChain } from '../../src/queue/chain.js';
import { VIRTQ_DESC_F_WRITE } from '../../src/queue/constants.js';
import { TrackedPackedQueue } from '../../src/queue/packed/tracked.js';
import { TrackedSplitQueue } from '../../src/queue/split/tracked.js';
import { PackedInflight, packedInflightRegionBytes } from '../../src/vhost-user/packed-inflight.js';
import { applyPackedInflight } from '../../src/vhost-user/ring-state.js';

const silent = { warn() {} };

class Crash extends Error {}

type CrashPoint = 'none' | 'before-flags' | 'after-flags';

/** A region whose publication can be made to crash before or after the driver sees the batch. */
class CrashingRegion extends PackedInflight {
  crashAt: CrashPoint = 'none';
  override publishing(nextUsed: number, usedWrap: boolean): void {
    super.publishing(nextUsed, usedWrap);
    if (this.crashAt === 'before-flags') throw new Crash();
  }
  override published(): void {
    if (this.crashAt === 'after-flags') throw new Crash();
    super.published();
  }
}

function rig(size: number) {
  const memory = GuestMemory.create(1 << 20, { shared: true });
  const driver = new PackedDriver(memory, { size, base: 0 });
  const regionBuffer = new SharedArrayBuffer(packedInflightRegionBytes(size));
  /** A device incarnation: a fresh queue at the front-end's base, resumed from the region. */
  const device = (base: { slot: number; wrap: boolean } = { slot: 0, wrap: true }) => {
    const q = new TrackedPackedQueue(size);
    q.size = size;
    q.descTableAddress = driver.layout.desc;
    q.availRingAddress = driver.layout.driver;
    q.usedRingAddress = driver.layout.device;
    q.ready = true;
    q.initialize(memory);
    q.restore(
      {
        ...q.save(),
        nextAvail: base.slot,
        availWrap: base.wrap,
        nextUsed: base.slot,
        usedWrap: base.wrap,
      },
      memory,
    );
    const region = new CrashingRegion(regionBuffer, 0, size);
    let unrecoverable = 0;
    const resubmitted = applyPackedInflight(q, region, 0, silent, () => unrecoverable++);
    return { q, region, resubmitted, unrecoverable };
  };
  return { memory, driver, device, regionBuffer };
}

/** A tracked split queue of 8 over its own memory, with the driver side (EVENT_IDX optional). */
function splitRig(eventIdx = false) {
  const memory = GuestMemory.create(1 << 20);
  const driver = new SplitDriver(memory, { size: 8, base: 0 });
  const q = new TrackedSplitQueue(8);
  q.size = 8;
  q.descTableAddress = driver.layout.desc;
  q.availRingAddress = driver.layout.avail;
  q.usedRingAddress = driver.layout.used;
  q.usesNotifSuppression = eventIdx;
  q.ready = true;
  q.initialize(memory);
  return { memory, driver, q };
}

describe('packed inflight tracking', () => {
  it('a fresh region records at the front-end position and resumes nothing', () => {
    const r = rig(8);
    const d = r.device();
    expect(d.resubmitted).toBe(0);
    expect(d.region.inflightIds()).toEqual([]);
  });

  it('says so when a region does not hold together, and starts at VRING_BASE', () => {
    const r = rig(8);
    let d = r.device();
    const chain = new DescriptorChain();
    r.driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 32 }]);
    r.driver.publish();
    expect(d.q.pop(chain)).not.toBeNull();
    // The front-end (or a crash) leaves the free list looping: the buffer took entries 0 and 1,
    // the list goes on from 2, and entry 3 points back at 2.
    new DataView(r.regionBuffer).setUint16(32 + 32 * 3 + 2, 2, true);
    d = r.device({ slot: 3, wrap: true });
    expect(d.unrecoverable).toBe(1);
    expect(d.resubmitted).toBe(0);
    expect(d.q.nextAvail).toBe(3);
    expect(d.region.inflightIds()).toEqual([]);
    expect(d.unrecoverable + r.device().unrecoverable).toBe(1); // the region was started afresh
  });

  it('resubmits the buffers in flight, oldest first, from copies of their descriptors, then carries on', () => {
    const r = rig(8);
    let d = r.device();
    const chain = new DescriptorChain();
    const ids = [0, 1, 2].map((k) =>
      r.driver.add(
        [{ addr: 0x10000 + k * 0x100, len: 16 }],
        [{ addr: 0x20000 + k * 0x100, len: 32 }],
      ),
    );
    r.driver.publish();
    const popped: number[] = [];
    for (let c = d.q.pop(chain); c !== null; c = d.q.pop(chain)) popped.push(c.head);
    expect(popped).toEqual(ids);
    // The second completes and is published; the first and third are in flight at the crash.
    d.q.addUsed(ids[1]!, 4);
    d.q.advanceUsedRingIdx();
    expect(r.driver.popUsed()).toBe(ids[1]);
    // The driver reuses the id it got back: its new descriptors overwrite older slots.
    const again = r.driver.add([{ addr: 0x30000, len: 8 }], [{ addr: 0x31000, len: 8 }]);
    r.driver.publish();

    // Crash; the new device is told the stale base of the last orderly start.
    d = r.device();
    expect(d.resubmitted).toBe(2);
    const seen: { id: number; addr: number }[] = [];
    for (let c = d.q.pop(chain); c !== null; c = d.q.pop(chain)) {
      seen.push({ id: c.head, addr: c.addrs[0]! });
      d.q.addUsed(c.head, 1);
    }
    d.q.advanceUsedRingIdx();
    expect(seen).toEqual([
      { id: ids[0], addr: 0x10000 },
      { id: ids[2], addr: 0x10200 },
      { id: again, addr: 0x30000 },
    ]);
    const back: number[] = [];
    for (let id = r.driver.popUsed(); id >= 0; id = r.driver.popUsed()) back.push(id);
    expect(back.sort()).toEqual([ids[0], ids[2], again].sort());
  });

  it('a batch that died unpublished leaves no used descriptor for the driver to reach', () => {
    // Two buffers of three descriptors fill a ring of six. The device completes the second,
    // then the first, and dies publishing: the first used descriptor (slot 0) never got its
    // flags, the second (slot 3, for buffer 0) did. Served again, buffer 0 takes slots 0 to 2;
    // the driver then reaches slot 3, which must not say "buffer 0 used" a second time.
    const r = rig(6);
    let d = r.device();
    const chain = new DescriptorChain();
    const three = [
      { addr: 0x40000, len: 64 },
      { addr: 0x40040, len: 64 },
    ];
    const a = r.driver.add(three, [{ addr: 0x80000, len: 16 }]);
    const b = r.driver.add(three, [{ addr: 0x80000, len: 16 }]);
    r.driver.publish();
    expect(d.q.pop(chain)?.head).toBe(a);
    expect(d.q.pop(chain)?.head).toBe(b);
    d.q.addUsed(b, 1);
    d.q.addUsed(a, 1);
    d.region.crashAt = 'before-flags';
    expect(() => d.q.advanceUsedRingIdx()).toThrow(Crash);
    expect(r.driver.popUsed()).toBe(-1);

    d = r.device();
    expect(d.resubmitted).toBe(2);
    expect(d.q.pop(chain)?.head).toBe(a);
    d.q.addUsed(a, 1);
    d.q.advanceUsedRingIdx();
    expect(r.driver.popUsed()).toBe(a);
    expect(r.driver.popUsed()).toBe(-1);
    expect(d.q.pop(chain)?.head).toBe(b);
    d.q.addUsed(b, 1);
    d.q.advanceUsedRingIdx();
    expect(r.driver.popUsed()).toBe(b);
    expect(r.driver.popUsed()).toBe(-1);
  });

  it('property: a device killed at any point, even mid-publication, loses no buffer and completes none twice', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 2, max: 12 }),
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant('add' as const), descs: fc.integer({ min: 1, max: 3 }) }),
            fc.record({ op: fc.constant('pop' as const), n: fc.integer({ min: 1, max: 4 }) }),
            fc.record({ op: fc.constant('undo' as const) }),
            fc.record({ op: fc.constant('complete' as const), pick: fc.nat() }),
            fc.record({ op: fc.constant('publish' as const) }),
            fc.record({
              op: fc.constant('crash' as const),
              at: fc.constantFrom<CrashPoint>('none', 'before-flags', 'after-flags'),
              staleBase: fc.boolean(),
              batch: fc.nat(),
            }),
          ),
          { maxLength: 60 },
        ),
        (size, ops) => {
          const r = rig(size);
          let d = r.device();
          const chain = new DescriptorChain();
          const outstanding = new Set<number>(); // made available, not yet seen used by the driver
          let completedByDriver = 0;
          let added = 0;
          let lastBase = { slot: 0, wrap: true };
          const deviceInFlight: number[] = [];
          const drainDriver = () => {
            for (let id = r.driver.popUsed(); id >= 0; id = r.driver.popUsed()) {
              expect(outstanding.has(id)).toBe(true);
              outstanding.delete(id);
              completedByDriver++;
            }
          };
          const crash = (at: CrashPoint, staleBase: boolean, batch: number) => {
            if (at !== 'none' && deviceInFlight.length > 0) {
              // A batch of the newest buffers, completed newest first (out of pop order).
              const k = 1 + (batch % deviceInFlight.length);
              for (const id of deviceInFlight.splice(-k).reverse()) d.q.addUsed(id, 1);
              d.region.crashAt = at;
              expect(() => d.q.advanceUsedRingIdx()).toThrow(Crash);
            }
            drainDriver();
            d = r.device(staleBase ? { slot: 0, wrap: true } : lastBase);
            deviceInFlight.length = 0;
          };
          for (const o of ops) {
            if (o.op === 'add') {
              // A driver adds only while it has free slots and ids (the driver refuses otherwise).
              const readable = Array.from({ length: o.descs - 1 }, (_, k) => ({
                addr: 0x40000 + k * 64,
                len: 64,
              }));
              let id: number;
              try {
                id = r.driver.add(readable, [{ addr: 0x80000, len: 16 }]);
              } catch (e) {
                if (e instanceof RangeError) continue;
                throw e;
              }
              r.driver.publish();
              outstanding.add(id);
              added++;
            } else if (o.op === 'pop') {
              for (let k = 0; k < o.n; k++) {
                const c = d.q.pop(chain);
                if (c === null) break;
                deviceInFlight.push(c.head);
              }
            } else if (o.op === 'undo') {
              // Pop one and give it back (the net device does this when it has no frame).
              const c = d.q.pop(chain);
              if (c !== null) d.q.undoPop();
            } else if (o.op === 'complete') {
              if (deviceInFlight.length === 0) continue;
              const [id] = deviceInFlight.splice(o.pick % deviceInFlight.length, 1);
              d.q.addUsed(id!, 1);
            } else if (o.op === 'publish') {
              d.q.advanceUsedRingIdx();
              lastBase = { slot: d.q.nextAvail, wrap: d.q.availWrapCounter };
              drainDriver();
            } else {
              crash(o.at, o.staleBase, o.batch);
            }
          }
          // Finally a device serves everything there is, and the driver collects it.
          d.q.advanceUsedRingIdx();
          drainDriver();
          crash('none', true, 0);
          for (let c = d.q.pop(chain); c !== null; c = d.q.pop(chain)) d.q.addUsed(c.head, 1);
          d.q.advanceUsedRingIdx();
          drainDriver();
          expect(outstanding.size).toBe(0);
          expect(completedByDriver).toBe(added);
        },
      ),
      { numRuns: 400 },
    );
  });

  it('property: a region a hostile front-end wrote never throws, and yields only buffers that fit the ring', () => {
    const size = 8;
    fc.assert(
      fc.property(
        fc.uint8Array({
          minLength: packedInflightRegionBytes(size),
          maxLength: packedInflightRegionBytes(size),
        }),
        fc.boolean(),
        fc.integer({ min: 1, max: size }),
        (bytes, valid, ringSize) => {
          const buf = new SharedArrayBuffer(bytes.length);
          new Uint8Array(buf).set(bytes);
          if (valid) {
            const v = new DataView(buf);
            v.setUint16(8, 1, true);
            v.setUint16(10, size, true);
          }
          const region = new PackedInflight(buf, 0, size);
          const r = region.resume(ringSize, 0, true, () => 0, silent);
          if (typeof r === 'string') return;
          expect(r.nextUsed).toBeLessThan(ringSize);
          expect(r.nextAvail).toBeLessThan(ringSize);
          const ids = r.buffers.map((b) => b.id);
          expect(new Set(ids).size).toBe(ids.length);
          let slots = 0;
          for (const b of r.buffers) {
            expect(b.id).toBeLessThan(ringSize);
            slots += b.descriptors.length / 5;
          }
          expect(slots).toBeLessThanOrEqual(ringSize);
          // Still records afterwards without throwing.
          region.used(ids[0] ?? 0);
          region.publishing(0, true);
          region.published();
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('a tracked split queue refuses in-order batches while a tracker watches it', () => {
    const { driver, q } = splitRig();
    const a = driver.add([{ addr: 0x10000, len: 16 }]);
    const b = driver.add([{ addr: 0x11000, len: 16 }]);
    const c = driver.add([{ addr: 0x12000, len: 16 }]);
    driver.publish();
    const chain = new DescriptorChain();
    for (let k = 0; k < 3; k++) q.pop(chain);
    const seen: number[] = [];
    q.tracker = { popped() {}, used: (id) => seen.push(id), published() {} };
    // One used element for a and b would tell the tracker of b only.
    expect(() => q.addUsedBatch(2, b, 0)).toThrow(RangeError);
    q.addUsed(a, 0);
    q.addUsed(b, 0);
    expect(seen).toEqual([a, b]);
    // Without a tracker the batch is taken as usual.
    q.tracker = null;
    q.addUsedBatch(1, c, 0);
    q.advanceUsedRingIdx();
    const used: number[] = [];
    while (driver.hasUsed()) used.push(driver.popUsed());
    expect(used).toEqual([a, b, c]);
  });

  it('a tracked queue reports each pop once, polled or not, with EVENT_IDX on or off', () => {
    for (const eventIdx of [false, true]) {
      for (const polled of [false, true]) {
        const popped: number[] = [];
        const tracker = { popped: (h: number) => popped.push(h), used() {}, published() {} };
        const chain = new DescriptorChain();
        // Split.
        const { driver, q } = splitRig(eventIdx);
        q.polled = polled;
        q.tracker = tracker;
        const a = driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
        driver.publish();
        expect(q.popOrEnableNotification(chain)?.head).toBe(a);
        expect(q.popOrEnableNotification(chain)).toBeNull();
        expect(popped).toEqual([a]);
        // Packed.
        popped.length = 0;
        const r = rig(8);
        const d = r.device();
        d.q.usesNotifSuppression = eventIdx;
        d.q.polled = polled;
        const counted: number[] = [];
        const region = d.q.tracker!;
        const popAt = region.popped.bind(region);
        region.popped = (id, ...rest) => {
          counted.push(id);
          popAt(id, ...rest);
        };
        const id = r.driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
        r.driver.publish();
        expect(d.q.popOrEnableNotification(chain)?.head).toBe(id);
        expect(d.q.popOrEnableNotification(chain)).toBeNull();
        expect(counted).toEqual([id]);
      }
    }
  });

  it('undoPop gives back a redelivered buffer after pops that found nothing, split and packed', () => {
    // A device that pops a redelivered buffer, then finds the ring empty (pop or
    // popOrEnableNotification, EVENT_IDX on or off), may still give that buffer back.
    for (const eventIdx of [false, true]) {
      for (const how of ['pop', 'popOrEnableNotification'] as const) {
        const chain = new DescriptorChain();
        // Packed.
        const r = rig(8);
        let d = r.device();
        const id = r.driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
        r.driver.publish();
        expect(d.q.pop(chain)?.head).toBe(id);
        d = r.device();
        d.q.usesNotifSuppression = eventIdx;
        expect(d.q[how](chain)?.head).toBe(id);
        expect(d.q[how](chain)).toBeNull();
        d.q.undoPop();
        expect(d.q[how](chain)?.head).toBe(id);
        expect(d.q[how](chain)).toBeNull();

        // Split: chain a redelivered; chain b, the ring entry just before the position, taken.
        const { driver, q } = splitRig(eventIdx);
        const a = driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
        driver.add([{ addr: 0x11000, len: 16 }], [{ addr: 0x21000, len: 16 }]);
        driver.publish();
        q.nextAvail = 2; // both were taken by a previous incarnation; a was still in flight
        q.redeliver([a]);
        expect(q[how](chain)?.head).toBe(a);
        expect(q[how](chain)).toBeNull();
        q.undoPop();
        // a again, not b (the entry before the position, which an undo of the position would
        // hand out a second time).
        expect(q[how](chain)?.head).toBe(a);
        expect(q[how](chain)).toBeNull();
      }
    }
  });

  it('a redelivered chain that fails to parse: undoPop gives that one back (split)', () => {
    const { memory, driver, q } = splitRig();
    const a = driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
    driver.add([{ addr: 0x11000, len: 16 }], [{ addr: 0x21000, len: 16 }]);
    driver.publish();
    q.nextAvail = 2; // both taken by a previous incarnation; a still in flight
    // Since then the guest pointed a's first buffer outside its memory.
    memory.writeU32(driver.layout.desc + 16 * a, 0xfff00000);
    q.redeliver([a]);
    const chain = new DescriptorChain();
    expect(() => q.pop(chain)).toThrow(DescriptorError);
    q.undoPop();
    // a is read again (and fails again); the ring entry before the position (b) is not
    // handed out a second time.
    expect(() => q.pop(chain)).toThrow(DescriptorError);
    expect(q.nextAvail).toBe(2);
    expect(q.pop(chain)).toBeNull();
  });

  it('a redelivered buffer that fails to parse ends the undo and does not go in flight (packed)', () => {
    const memory = GuestMemory.create(1 << 20);
    const q = new TrackedPackedQueue(8);
    q.size = 8;
    q.descTableAddress = 0x1000;
    q.availRingAddress = 0x2000;
    q.usedRingAddress = 0x2100;
    q.ready = true;
    q.initialize(memory);
    // Descriptor copies as the region keeps them: address lo, hi, length, flags, id.
    q.redeliver([
      { id: 0, descriptors: [0x10000, 0, 64, VIRTQ_DESC_F_WRITE, 0] },
      { id: 1, descriptors: [0xfff00000, 0, 64, VIRTQ_DESC_F_WRITE, 1] }, // outside memory
      { id: 2, descriptors: [0x11000, 0, 64, VIRTQ_DESC_F_WRITE, 3] }, // names another id
    ]);
    expect(q.pop(new DescriptorChain())?.head).toBe(0);
    expect(() => q.pop(new DescriptorChain())).toThrow(DescriptorError);
    // That pop read a list: buffer 0 can no longer be given back, and stays the device's.
    expect(() => q.undoPop()).toThrow(RangeError);
    expect(q.isInFlight(0)).toBe(true);
    q.addUsed(0, 64);
    // A copy whose list names an id other than its own: refused, and nothing left in flight.
    expect(() => q.pop(new DescriptorChain())).toThrow(DescriptorError);
    expect(q.inFlightIds()).toEqual([]);
    expect(q.inFlightSlots).toBe(0);
  });

  it('undoPop of a redelivered buffer gives it back to the redelivery list, split and packed alike', () => {
    // Packed: a buffer in flight at a crash, redelivered, popped, given back, popped again.
    const r = rig(8);
    let d = r.device();
    const chain = new DescriptorChain();
    const id = r.driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
    r.driver.publish();
    expect(d.q.pop(chain)?.head).toBe(id);
    d = r.device();
    expect(d.resubmitted).toBe(1);
    expect(d.q.pop(chain)?.head).toBe(id);
    d.q.undoPop();
    expect(d.q.pop(chain)?.head).toBe(id);
    expect(d.q.pop(chain)).toBeNull();

    // Split: the same through TrackedSplitQueue.redeliver.
    const { driver, q } = splitRig();
    const a = driver.add([{ addr: 0x10000, len: 16 }], [{ addr: 0x20000, len: 16 }]);
    const b = driver.add([{ addr: 0x11000, len: 16 }], [{ addr: 0x21000, len: 16 }]);
    driver.publish();
    q.nextAvail = 1; // chain a was taken by a previous incarnation
    q.redeliver([a]);
    expect(q.pop(chain)?.head).toBe(a);
    q.undoPop();
    expect(q.pop(chain)?.head).toBe(a);
    expect(q.pop(chain)?.head).toBe(b);
    q.undoPop();
    expect(q.pop(chain)?.head).toBe(b);
    expect(q.pop(chain)).toBeNull();
  });
});
