import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  featureBit,
  STATUS_ACKNOWLEDGE,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  VIRTIO_ID_RNG,
} from '../../src/devices/device.js';
import { RngDevice } from '../../src/devices/rng/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { FeaturesRefusedError, MmioGuestDriver } from '../../src/driver/mmio.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import {
  INT_CONFIG_CHANGE,
  INT_USED_BUFFER,
  MMIO,
  MMIO_MAGIC,
  MmioTransport,
  VIRTQ_VENDOR_ID,
} from '../../src/transport/mmio.js';

const ALL =
  featureBit(VIRTIO_F_VERSION_1) |
  featureBit(VIRTIO_F_EVENT_IDX) |
  featureBit(VIRTIO_F_RING_PACKED) |
  featureBit(VIRTIO_F_INDIRECT_DESC);

function rig(source?: (out: Uint8Array) => void) {
  const memory = GuestMemory.create(4 << 20);
  const levels: boolean[] = [];
  const device = new RngDevice(
    source === undefined ? { queueSize: 64 } : { queueSize: 64, source },
  );
  const t = new MmioTransport(device, memory, {
    onInterrupt: (l) => levels.push(l),
    logger: silentLogger,
  });
  const guest = new MmioGuestDriver(t, memory, new GuestAllocator(memory, 0x10000, 0x100000));
  return { memory, device, t, guest, levels };
}

describe('virtio-mmio transport: register map (§4.2.2)', () => {
  it('identifies itself', () => {
    const { t } = rig();
    expect(t.read(MMIO.MAGIC_VALUE, 4)).toBe(MMIO_MAGIC);
    expect(t.read(MMIO.VERSION, 4)).toBe(2);
    expect(t.read(MMIO.DEVICE_ID, 4)).toBe(VIRTIO_ID_RNG);
    expect(t.read(MMIO.VENDOR_ID, 4)).toBe(VIRTQ_VENDOR_ID);
    expect(t.read(MMIO.CONFIG_GENERATION, 4)).toBe(0);
  });

  it('reports shared memory regions as absent and QueueReset as 0', () => {
    const { t } = rig();
    t.write(MMIO.SHM_SEL, 4, 0);
    expect(t.read(MMIO.SHM_LEN_LOW, 4)).toBe(0xffffffff);
    expect(t.read(MMIO.SHM_LEN_HIGH, 4)).toBe(0xffffffff);
    expect(t.read(MMIO.QUEUE_RESET, 4)).toBe(0);
  });

  it('serves control registers only as aligned 32-bit accesses', () => {
    const { t } = rig();
    expect(t.read(MMIO.MAGIC_VALUE, 2)).toBe(0);
    expect(t.read(MMIO.MAGIC_VALUE + 1, 4)).toBe(0);
    t.write(MMIO.STATUS, 1, STATUS_ACKNOWLEDGE);
    expect(t.read(MMIO.STATUS, 4)).toBe(0);
  });

  it('offers VERSION_1 in the high feature word and nothing past word 1', () => {
    const { t, guest } = rig();
    expect(guest.deviceFeatures() & featureBit(VIRTIO_F_VERSION_1)).not.toBe(0n);
    t.write(MMIO.DEVICE_FEATURES_SEL, 4, 2);
    expect(t.read(MMIO.DEVICE_FEATURES, 4)).toBe(0);
  });
});

describe('virtio-mmio transport: status and negotiation (§3.1.1)', () => {
  it('accepts offered features and keeps FEATURES_OK', () => {
    const { guest } = rig();
    const f = guest.negotiate(ALL);
    expect(f & featureBit(VIRTIO_F_VERSION_1)).not.toBe(0n);
    expect(guest.status).toBe(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  });

  it('refuses features the device does not offer: FEATURES_OK does not stick', () => {
    const { guest } = rig();
    expect(() => guest.negotiate(0n, featureBit(VIRTIO_F_VERSION_1) | featureBit(40))).toThrow(
      FeaturesRefusedError,
    );
  });

  it('refuses a driver without VERSION_1 (virtq serves VIRTIO 1.x only)', () => {
    const { guest } = rig();
    expect(() => guest.negotiate(0n, 0n)).toThrow(FeaturesRefusedError);
  });

  it('ignores status steps out of order and attempts to clear bits', () => {
    const { t } = rig();
    t.write(MMIO.STATUS, 4, STATUS_DRIVER);
    expect(t.read(MMIO.STATUS, 4)).toBe(0);
    t.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE);
    t.write(
      MMIO.STATUS,
      4,
      STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    expect(t.read(MMIO.STATUS, 4)).toBe(STATUS_ACKNOWLEDGE);
    t.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    t.write(MMIO.STATUS, 4, STATUS_DRIVER);
    expect(t.read(MMIO.STATUS, 4)).toBe(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  });

  it('allows queue registers only between FEATURES_OK and DRIVER_OK', () => {
    const { t, guest } = rig();
    t.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE);
    t.write(MMIO.QUEUE_SEL, 4, 0);
    t.write(MMIO.QUEUE_NUM, 4, 8);
    expect(t.queues[0]!.size).toBe(64);
    guest.negotiate(ALL);
    t.write(MMIO.QUEUE_SEL, 4, 0);
    t.write(MMIO.QUEUE_NUM, 4, 8);
    expect(t.queues[0]!.size).toBe(8);
    t.write(MMIO.QUEUE_READY, 4, 1);
    t.write(MMIO.QUEUE_NUM, 4, 16); // ignored: the queue is ready
    expect(t.queues[0]!.size).toBe(8);
  });

  it('QueueNumMax is 0 for a queue the device does not have', () => {
    const { t } = rig();
    t.write(MMIO.QUEUE_SEL, 4, 7);
    expect(t.read(MMIO.QUEUE_NUM_MAX, 4)).toBe(0);
    t.write(MMIO.QUEUE_SEL, 4, 0);
    expect(t.read(MMIO.QUEUE_NUM_MAX, 4)).toBe(64);
  });

  it('a queue the driver configured wrongly puts the device in DEVICE_NEEDS_RESET at DRIVER_OK', () => {
    const { t, guest, levels } = rig();
    guest.negotiate(featureBit(VIRTIO_F_VERSION_1));
    t.write(MMIO.QUEUE_SEL, 4, 0);
    t.write(MMIO.QUEUE_NUM, 4, 8);
    t.write(MMIO.QUEUE_DESC_LOW, 4, 0x10001); // misaligned
    t.write(MMIO.QUEUE_READY, 4, 1);
    guest.start();
    expect(t.read(MMIO.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET).not.toBe(0);
    expect(t.read(MMIO.INTERRUPT_STATUS, 4) & INT_CONFIG_CHANGE).not.toBe(0);
    expect(levels).toEqual([true]);
    guest.reset();
    expect(t.read(MMIO.STATUS, 4)).toBe(0);
    expect(t.read(MMIO.INTERRUPT_STATUS, 4)).toBe(0);
    expect(levels).toEqual([true, false]);
  });
});

describe('virtio-mmio transport with the rng device', () => {
  for (const packed of [false, true]) {
    it(`serves entropy over a ${packed ? 'packed' : 'split'} ring and raises the interrupt line`, () => {
      let counter = 0;
      const { t, guest, memory, device, levels } = rig((out) => {
        for (let i = 0; i < out.length; i++) out[i] = counter++ & 0xff;
      });
      const wanted =
        featureBit(VIRTIO_F_VERSION_1) | (packed ? featureBit(VIRTIO_F_RING_PACKED) : 0n);
      guest.negotiate(wanted);
      const q = guest.setupQueue(0, 16);
      guest.start();
      expect(t.queues[0]!.format).toBe(packed ? 'packed' : 'split');
      q.add([], [{ addr: 0x200000, len: 100 }]);
      guest.kick(0);
      expect(levels).toEqual([true]);
      expect(guest.ackInterrupt()).toBe(INT_USED_BUFFER);
      expect(levels).toEqual([true, false]);
      const id = q.popUsed();
      expect(id).toBeGreaterThanOrEqual(0);
      expect(q.lastUsedLen).toBe(100);
      expect(Array.from(memory.slice(0x200000, 4))).toEqual([0, 1, 2, 3]);
      expect(device.bytesServed).toBe(100);
    });
  }
});

describe('virtio-mmio transport: hostile register sequences', () => {
  it('never throws, and a clean driver works afterwards', () => {
    const offsets = [...Object.values(MMIO), 0x004 + 1, 0x0f8, 0x1fc, 0x300, 0xfff];
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            write: fc.boolean(),
            offset: fc.oneof(fc.constantFrom(...offsets), fc.nat(0x400)),
            size: fc.constantFrom(1, 2, 4, 8, 3),
            value: fc.oneof(fc.constantFrom(0, 1, 3, 7, 15, 0x8f, 0xffffffff), fc.nat()),
          }),
          { maxLength: 60 },
        ),
        (ops) => {
          const { t, guest, memory } = rig();
          for (const op of ops) {
            if (op.write) t.write(op.offset, op.size, op.value);
            else {
              const v = t.read(op.offset, op.size);
              expect(Number.isInteger(v) && v >= 0 && v <= 0xffffffff).toBe(true);
            }
          }
          guest.negotiate(ALL);
          const q = guest.setupQueue(0, 8);
          guest.start();
          q.add([], [{ addr: 0x300000, len: 8 }]);
          guest.kick(0);
          expect(q.popUsed()).toBeGreaterThanOrEqual(0);
          expect(memory.size).toBe(4 << 20);
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('virtio-mmio transport: snapshot', () => {
  it('restores in the middle of I/O: pending chains are served once, after the restore', () => {
    const a = rig();
    a.guest.negotiate(featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_EVENT_IDX));
    const q = a.guest.setupQueue(0, 16);
    a.guest.start();
    q.add([], [{ addr: 0x200000, len: 32 }]);
    guestKick(a);
    expect(q.popUsed()).toBeGreaterThanOrEqual(0);
    q.add([], [{ addr: 0x200100, len: 16 }]);
    q.kick(); // published, not yet notified: in flight at snapshot time
    const saved = JSON.parse(JSON.stringify(a.t.save()));
    // A second VM over the same guest memory contents.
    const b = rig();
    b.memory.write(0, a.memory.slice(0, 4 << 20));
    b.t.restore(saved);
    expect(b.t.read(MMIO.STATUS, 4) & STATUS_DRIVER_OK).not.toBe(0);
    b.t.write(MMIO.QUEUE_NOTIFY, 4, 0);
    expect(b.device.requestsServed).toBe(2);
    expect(b.memory.readU16(b.t.queues[0]!.usedRingAddress + 2)).toBe(2);
  });

  it('rejects a corrupted state and names the field, leaving the transport untouched', () => {
    const a = rig();
    a.guest.negotiate(featureBit(VIRTIO_F_VERSION_1));
    a.guest.setupQueue(0, 16);
    a.guest.start();
    const good = a.t.save();
    const bad = JSON.parse(JSON.stringify(good));
    bad.queues[0].descTableAddress = 2 ** 40;
    const b = rig();
    expect(() => b.t.restore(bad)).toThrow(/mmio\.queues\.0\.split\.descTableAddress/);
    expect(b.t.read(MMIO.STATUS, 4)).toBe(0);
  });
});

function guestKick(r: ReturnType<typeof rig>): void {
  r.guest.kick(0);
  r.guest.ackInterrupt();
}

describe('virtio-mmio transport: the driver stops using a queue (§4.2.2.2)', () => {
  for (const packed of [false, true]) {
    it(`QueueReady 0 after DRIVER_OK reads back 0 and the device leaves the ${packed ? 'packed' : 'split'} ring alone`, () => {
      const { t, guest, memory, device } = rig();
      // EVENT_IDX and INDIRECT_DESC: the stopped queue keeps the negotiated ring features (a
      // saved state with the queue's flags reset would not restore).
      guest.negotiate(ALL & ~(packed ? 0n : featureBit(VIRTIO_F_RING_PACKED)));
      const q = guest.setupQueue(0, 16);
      guest.start();
      q.add([], [{ addr: 0x200000, len: 8 }]);
      guest.kick(0);
      expect(q.popUsed()).toBeGreaterThanOrEqual(0);
      t.write(MMIO.QUEUE_SEL, 4, 0);
      t.write(MMIO.QUEUE_READY, 4, 0);
      expect(t.read(MMIO.QUEUE_READY, 4)).toBe(0);
      // A buffer made available and notified now is not touched.
      memory.fill(0x200100, 8, 0xee);
      q.add([], [{ addr: 0x200100, len: 8 }]);
      guest.kick(0);
      expect(q.popUsed()).toBe(-1);
      expect(Array.from(memory.slice(0x200100, 8))).toEqual(new Array(8).fill(0xee));
      expect(device.requestsServed).toBe(1);
      expect(t.read(MMIO.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET).toBe(0);
      // Without VIRTIO_F_RING_RESET the queue cannot be enabled again before a reset.
      t.write(MMIO.QUEUE_READY, 4, 1);
      expect(t.read(MMIO.QUEUE_READY, 4)).toBe(0);
      // The state round-trips, and the restored device leaves the ring alone too.
      const b = rig();
      b.memory.write(0, memory.slice(0, 4 << 20));
      b.t.restore(JSON.parse(JSON.stringify(t.save())));
      b.t.write(MMIO.QUEUE_NOTIFY, 4, 0);
      expect(b.device.requestsServed).toBe(1);
      // A reset brings the queue back.
      guest.negotiate(featureBit(VIRTIO_F_VERSION_1));
      const q2 = guest.setupQueue(0, 16);
      guest.start();
      q2.add([], [{ addr: 0x200200, len: 8 }]);
      guest.kick(0);
      expect(q2.popUsed()).toBeGreaterThanOrEqual(0);
    });
  }

  it('a write of 0 before DRIVER_OK only clears the ready bit, as before', () => {
    const { t, guest } = rig();
    guest.negotiate(featureBit(VIRTIO_F_VERSION_1));
    t.write(MMIO.QUEUE_SEL, 4, 0);
    t.write(MMIO.QUEUE_READY, 4, 1);
    t.write(MMIO.QUEUE_READY, 4, 0);
    expect(t.read(MMIO.QUEUE_READY, 4)).toBe(0);
    t.write(MMIO.QUEUE_NUM, 4, 8);
    expect(t.queues[0]!.size).toBe(8);
  });
});
