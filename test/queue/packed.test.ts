/**
 * Unit tests of the packed virtqueue (VIRTIO 1.2 §2.8), device side (PackedQueue) and driver
 * side (PackedDriver), one group per rule of the spec, plus hostile ring contents built with
 * RawPackedRing.
 */
import { describe, expect, it } from 'vitest';
import {
  DeviceBehaviourError,
  type DriverBuffer,
  PackedDriver,
  RawPackedRing,
  RawSplitRing,
  SplitDriver,
} from '../../src/driver/index.js';
import {
  DescriptorError,
  type DescriptorErrorCode,
  QueueConfigError,
  QueueStateError,
  SnapshotError,
  UsedRingError,
  VirtqError,
} from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  DescriptorChain,
  PackedQueue,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  SplitQueue,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';

const RING = 0x1000;
const BUF = 0x10000;
const AVAIL1 = VIRTQ_DESC_F_AVAIL; // available, driver wrap counter 1
const AVAIL0 = VIRTQ_DESC_F_USED; // available, driver wrap counter 0
const USED1 = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

interface Rig {
  memory: GuestMemory;
  raw: RawPackedRing;
  q: PackedQueue;
  driver: PackedDriver;
}

function rig(
  size: number,
  options: { eventIdx?: boolean; indirect?: boolean; inOrder?: boolean; memSize?: number } = {},
): Rig {
  const memory = GuestMemory.create(options.memSize ?? 1 << 20);
  const driver = new PackedDriver(memory, {
    size,
    base: RING,
    eventIdx: options.eventIdx ?? false,
    inOrder: options.inOrder ?? false,
  });
  const raw = new RawPackedRing(memory, RING, size);
  const q = raw.createQueue({
    eventIdx: options.eventIdx ?? false,
    indirect: options.indirect ?? false,
  });
  return { memory, raw, q, driver };
}

/** A raw ring and queue without a driver (hostile tests write every byte themselves). */
function rawRig(size: number, options: { eventIdx?: boolean; indirect?: boolean } = {}) {
  const memory = GuestMemory.create(1 << 20);
  const raw = new RawPackedRing(memory, RING, size);
  const q = raw.createQueue({
    eventIdx: options.eventIdx ?? false,
    indirect: options.indirect ?? false,
  });
  return { memory, raw, q };
}

function buf(k: number, len = 64): DriverBuffer {
  return { addr: BUF + 0x100 * k, len };
}

function catchError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an error');
}

function expectDescError(fn: () => unknown, code: DescriptorErrorCode): DescriptorError {
  const e = catchError(fn);
  expect(e).toBeInstanceOf(DescriptorError);
  expect((e as DescriptorError).code).toBe(code);
  return e as DescriptorError;
}

function configError(q: PackedQueue, memory: GuestMemory): QueueConfigError {
  const e = catchError(() => q.initialize(memory));
  expect(e).toBeInstanceOf(QueueConfigError);
  expect(q.isActive).toBe(false);
  return e as QueueConfigError;
}

function configured(size: number, desc: number, driver: number, device: number): PackedQueue {
  const q = new PackedQueue(32768);
  q.size = size;
  q.ready = true;
  q.descTableAddress = desc;
  q.availRingAddress = driver;
  q.usedRingAddress = device;
  return q;
}

describe('packed queue configuration (§2.8, §2.8.10.1, §2.8.11)', () => {
  it('accepts any size from 1 to 32768, power of two or not', () => {
    const memory = GuestMemory.create(1 << 20);
    for (const size of [1, 3, 7, 100, 255, 1000, 32768]) {
      const q = configured(size, 0, 16 * size, 16 * size + 4);
      q.initialize(memory);
      expect(q.isActive).toBe(true);
      expect(q.activeSize).toBe(size);
    }
  });

  it('rejects size 0, sizes above the maximum and non-integers', () => {
    const memory = GuestMemory.create(1 << 20);
    for (const size of [0, 65, 2.5, Number.NaN, -1]) {
      const q = new PackedQueue(64);
      q.ready = true;
      q.size = size;
      q.availRingAddress = 0x8000;
      q.usedRingAddress = 0x8004;
      const e = configError(q, memory);
      expect(e.code).toBe('QUEUE_INVALID_SIZE');
      expect(e.field).toBe('size');
    }
    expect(() => new PackedQueue(0)).toThrow(RangeError);
    expect(() => new PackedQueue(32769)).toThrow(RangeError);
  });

  it('rejects a queue that is not ready', () => {
    const memory = GuestMemory.create(1 << 16);
    const q = configured(4, 0, 64, 68);
    q.ready = false;
    expect(configError(q, memory).code).toBe('QUEUE_NOT_READY');
  });

  it('requires 16-byte alignment of the ring and 4-byte alignment of the event structures', () => {
    const memory = GuestMemory.create(1 << 16);
    const cases: [number, number, number, string][] = [
      [8, 0x100, 0x104, 'descTableAddress'],
      [0, 0x102, 0x104, 'availRingAddress'],
      [0, 0x100, 0x106, 'usedRingAddress'],
    ];
    for (const [desc, driver, device, field] of cases) {
      const e = configError(configured(4, desc, driver, device), memory);
      expect(e.code).toBe('QUEUE_MISALIGNED');
      expect(e.field).toBe(field);
    }
    // 4-byte alignment is enough for the event structures.
    configured(4, 0x10, 0x104, 0x1fc).initialize(memory);
  });

  it('requires each part inside one region', () => {
    const a = new ArrayBuffer(0x1000);
    const b = new ArrayBuffer(0x1000);
    // Two contiguous regions: a part may not straddle them even though every byte exists.
    const memory = new GuestMemory([
      { base: 0, length: 0x1000, buffer: a },
      { base: 0x1000, length: 0x1000, buffer: b },
    ]);
    const cases: [number, number, number, string][] = [
      [0xfe0, 0x100, 0x104, 'descTableAddress'], // 4 descriptors cross 0x1000
      [0x2000, 0x100, 0x104, 'descTableAddress'], // outside memory
      [0, 0x2000, 0x104, 'availRingAddress'],
      [0, 0x100, 0x2000, 'usedRingAddress'],
      [0, 0x100, -4, 'usedRingAddress'],
      [0, 0x100, 2 ** 53, 'usedRingAddress'],
    ];
    for (const [desc, driver, device, field] of cases) {
      const e = configError(configured(4, desc, driver, device), memory);
      expect(e.field).toBe(field);
      expect(['QUEUE_RING_OUT_OF_MEMORY', 'QUEUE_MISALIGNED']).toContain(e.code);
    }
    // The last 4 bytes of the first region are a valid event structure.
    configured(4, 0x1000, 0xffc, 0x1ffc).initialize(memory);
  });

  it('refuses the per-chain API before initialisation and after reset', () => {
    const { memory, q } = rawRig(4);
    q.reset();
    for (const call of [
      () => q.pop(),
      () => q.addUsed(0, 0),
      () => q.advanceUsedRingIdx(),
      () => q.prepareKick(),
      () => q.setNotification(true),
    ]) {
      const e = catchError(call);
      expect(e).toBeInstanceOf(QueueStateError);
      expect((e as QueueStateError).code).toBe('QUEUE_NOT_ACTIVE');
    }
    expect(q.size).toBe(q.maxSize);
    expect(q.ready).toBe(false);
    expect(q.isActive).toBe(false);
    const again = configured(4, RING, RING + 64, RING + 68);
    again.initialize(memory);
    expect(again.pop()).toBeNull();
  });
});

describe('available descriptors (§2.8.1, §2.8.12, §2.8.15)', () => {
  it('sees nothing in a zero-initialised ring', () => {
    const { q } = rawRig(5);
    expect(q.pop()).toBeNull();
    expect(q.isEmpty()).toBe(true);
  });

  it('uses a descriptor only when AVAIL matches the wrap counter and USED does not', () => {
    const { raw, q } = rawRig(4);
    for (const flags of [0, USED1, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE]) {
      raw.setDesc(0, BUF, 16, 0, flags);
      expect(q.pop()).toBeNull();
    }
    raw.setDesc(0, BUF, 16, 0, AVAIL1);
    expect(q.pop()?.head).toBe(0);
  });

  it('after a lap, expects AVAIL = 0 and USED = 1', () => {
    const { raw, q } = rawRig(2);
    raw.setAvail(0, BUF, 16, 0, 0, true);
    raw.setAvail(1, BUF, 16, 1, 0, true);
    expect(q.pop()?.head).toBe(0);
    expect(q.pop()?.head).toBe(1);
    expect(q.availWrapCounter).toBe(false);
    q.addUsed(0, 0);
    q.addUsed(1, 0);
    q.advanceUsedRingIdx();
    // Slot 0 now holds a used descriptor of lap 1 (AVAIL = USED = 1): not available.
    expect(q.pop()).toBeNull();
    // A lap-1 "available" pattern is stale in lap 2.
    raw.setDesc(0, BUF, 16, 0, AVAIL1);
    expect(q.pop()).toBeNull();
    raw.setDesc(0, BUF, 16, 1, AVAIL0);
    expect(q.pop()?.head).toBe(1);
  });

  it('processes buffers in ring order', () => {
    const { q, driver } = rig(7);
    const ids = [driver.add([buf(0)]), driver.add([buf(1)], [buf(2)]), driver.add([], [buf(3)])];
    driver.kick();
    const seen: number[] = [];
    for (let c = q.pop(); c !== null; c = q.pop()) seen.push(c.head);
    expect(seen).toEqual(ids);
  });
});

describe('descriptor lists (§2.8.5, §2.8.6, §2.8.17, §2.8.18)', () => {
  it('takes the buffer id from the last descriptor and walks consecutive slots', () => {
    const { raw, q } = rawRig(8);
    raw.setAvail(0, BUF, 10, 7, VIRTQ_DESC_F_NEXT, true);
    raw.setAvail(1, BUF + 0x100, 20, 6, VIRTQ_DESC_F_NEXT, true);
    raw.setAvail(2, BUF + 0x200, 30, 3, VIRTQ_DESC_F_WRITE, true);
    const c = q.pop();
    expect(c).not.toBeNull();
    expect(c!.head).toBe(3);
    expect(c!.count).toBe(3);
    expect(c!.ringCount).toBe(3);
    expect(c!.readableLength).toBe(30);
    expect(c!.writableLength).toBe(30);
    expect(c!.writableStart).toBe(2);
    expect([...c!].map((d) => [d.index, d.addr, d.len, d.flags, d.next])).toEqual([
      [0, BUF, 10, VIRTQ_DESC_F_NEXT, 1],
      [1, BUF + 0x100, 20, VIRTQ_DESC_F_NEXT, 2],
      [2, BUF + 0x200, 30, VIRTQ_DESC_F_WRITE, 0],
    ]);
    expect(q.nextAvail).toBe(3);
    expect(q.inFlightSlots).toBe(3);
  });

  it('follows a list across the end of the ring, flipping the wrap counter', () => {
    const { q, driver } = rig(5);
    // Move both sides to slot 3.
    for (let k = 0; k < 3; k++) driver.add([buf(k)]);
    driver.kick();
    for (let c = q.pop(); c !== null; c = q.pop()) q.addUsed(c.head, 0);
    q.advanceUsedRingIdx();
    while (driver.popUsed() >= 0);
    const id = driver.add([buf(0), buf(1)], [buf(2), buf(3)]);
    driver.kick();
    const c = q.pop()!;
    expect(c.head).toBe(id);
    expect([...c].map((d) => d.index)).toEqual([3, 4, 0, 1]);
    expect(q.nextAvail).toBe(2);
    expect(q.availWrapCounter).toBe(false);
    q.addUsed(id, 64);
    q.advanceUsedRingIdx();
    expect(driver.popUsed()).toBe(id);
    expect(driver.lastUsedLen).toBe(64);
    expect(driver.usedWrapCounter).toBe(false);
    expect(driver.nextUsedIdx).toBe(2);
  });

  it('keeps ring-state bits out of the chain and refuses readable after writable', () => {
    const { raw, q } = rawRig(4);
    raw.setAvail(0, BUF, 16, 0, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, true);
    raw.setAvail(1, BUF, 16, 2, 0, true);
    const e = expectDescError(() => q.pop(), 'DESC_WRITABLE_BEFORE_READABLE');
    expect(e.index).toBe(1);
    // Both slots were consumed; the next list pops normally.
    expect(q.nextAvail).toBe(2);
    raw.setAvail(2, BUF, 16, 1, VIRTQ_DESC_F_WRITE, true);
    const c = q.pop()!;
    expect(c.flags).toBe(VIRTQ_DESC_F_WRITE);
    expect(c.isWriteOnly()).toBe(true);
  });

  it('gives device code the same chain for the split and the packed ring', () => {
    const readable = [buf(0, 12), buf(1, 30)];
    const writable = [buf(2, 100), buf(3, 7)];
    const memory = GuestMemory.create(1 << 20);
    const split = new SplitDriver(memory, { size: 8, base: 0x4000 });
    const splitQ = new RawSplitRing(memory, 0x4000, 8).createQueue();
    split.add(readable, writable);
    split.kick();
    const a = splitQ.pop()!;
    const { q, driver } = rig(6);
    driver.add(readable, writable);
    driver.kick();
    const b = q.pop()!;
    const shape = (c: DescriptorChain) => ({
      descs: [...c].map((d) => [d.addr, d.len, d.flags, d.indirect]),
      count: c.count,
      ringCount: c.ringCount,
      writableStart: c.writableStart,
      readable: c.readableLength,
      writable: c.writableLength,
    });
    expect(shape(b)).toEqual(shape(a));
  });

  it('refuses a list longer than the queue (no loop, bounded walk)', () => {
    for (const size of [1, 2, 5, 64]) {
      const { raw, q } = rawRig(size);
      for (let i = 0; i < size; i++) raw.setAvail(i, BUF, 8, 0, VIRTQ_DESC_F_NEXT, true);
      const e = expectDescError(() => q.pop(), 'DESC_CHAIN_TOO_LONG');
      expect(e.index).toBe(0); // the walk wrapped back to its first slot and stopped there
      // One lap was consumed: same slot, next lap, and the queue keeps working.
      expect(q.nextAvail).toBe(0);
      expect(q.availWrapCounter).toBe(false);
      expect(q.pop()).toBeNull();
      raw.setAvail(0, BUF, 8, 0, 0, false);
      expect(q.pop()?.head).toBe(0);
    }
  });

  it('refuses a list that runs into ring slots still in flight (§2.8.16)', () => {
    const { raw, q } = rawRig(4);
    raw.setAvail(0, BUF, 8, 0, VIRTQ_DESC_F_NEXT, true);
    raw.setAvail(1, BUF, 8, 0, VIRTQ_DESC_F_NEXT, true);
    raw.setAvail(2, BUF, 8, 0, 0, true);
    expect(q.pop()?.ringCount).toBe(3);
    // A hostile driver reuses slot 0 (in flight) in lap 2 to extend a list from slot 3.
    raw.setAvail(3, BUF, 8, 1, VIRTQ_DESC_F_NEXT, true);
    raw.setAvail(0, BUF, 8, 1, 0, false);
    const e = expectDescError(() => q.pop(), 'DESC_CHAIN_TOO_LONG');
    expect(e.message).toMatch(/not in flight/);
  });

  it('refuses buffers outside guest memory, including addresses of 2^53 and more', () => {
    const { raw, q } = rawRig(8);
    const bad: (number | bigint)[] = [1 << 20, (1 << 20) - 8, 2n ** 53n, 2n ** 64n - 1n];
    for (let k = 0; k < bad.length; k++) {
      raw.setAvail(k, bad[k]!, 16, k, 0, true);
      expectDescError(() => q.pop(), 'DESC_BUFFER_OUT_OF_MEMORY');
    }
    // A zero-length element names no memory at all.
    raw.setAvail(4, 2n ** 64n - 1n, 0, 4, 0, true);
    expect(q.pop()?.len).toBe(0);
  });
});

describe('buffer ids (§2.8.6, §2.8.21.1)', () => {
  it('refuses an id outside the queue and consumes the list', () => {
    const { raw, q } = rawRig(4);
    raw.setAvail(0, BUF, 8, 9, VIRTQ_DESC_F_NEXT, true);
    raw.setAvail(1, BUF, 8, 4, 0, true);
    const e = expectDescError(() => q.pop(), 'DESC_PACKED_BAD_ID');
    expect(e.head).toBe(4);
    expect(e.index).toBe(1);
    expect(q.nextAvail).toBe(2);
    expect(q.inFlight).toBe(0);
    raw.setAvail(2, BUF, 8, 3, 0, true);
    expect(q.pop()?.head).toBe(3);
  });

  it('refuses an id already in flight, and accepts it again once used', () => {
    const { raw, q } = rawRig(4);
    raw.setAvail(0, BUF, 8, 2, 0, true);
    raw.setAvail(1, BUF, 8, 2, 0, true);
    expect(q.pop()?.head).toBe(2);
    expectDescError(() => q.pop(), 'DESC_PACKED_BAD_ID');
    q.addUsed(2, 0);
    raw.setAvail(2, BUF, 8, 2, 0, true);
    expect(q.pop()?.head).toBe(2);
  });

  it('marks used only ids in flight', () => {
    const { raw, q } = rawRig(4);
    for (const id of [-1, 4, 1.5, 2 ** 32]) {
      expect(catchError(() => q.addUsed(id, 0))).toBeInstanceOf(UsedRingError);
    }
    expect(catchError(() => q.addUsed(1, 0))).toBeInstanceOf(UsedRingError);
    raw.setAvail(0, BUF, 8, 1, 0, true);
    q.pop();
    expect(catchError(() => q.addUsed(1, -1))).toBeInstanceOf(RangeError);
    expect(catchError(() => q.addUsed(1, 2 ** 32))).toBeInstanceOf(RangeError);
    q.addUsed(1, 5);
    expect(catchError(() => q.addUsed(1, 5))).toBeInstanceOf(UsedRingError);
  });
});

describe('indirect descriptors (§2.8.7, §2.8.19)', () => {
  const TABLE = 0x8000;

  function table(memory: GuestMemory, entries: [number, number, number, number][]): void {
    entries.forEach(([addr, len, id, flags], k) => {
      memory.writeU64(TABLE + 16 * k, addr);
      memory.writeU32(TABLE + 16 * k + 8, len);
      memory.writeU16(TABLE + 16 * k + 12, id);
      memory.writeU16(TABLE + 16 * k + 14, flags);
    });
  }

  it('uses every table entry in order and ignores their ids and NEXT bits', () => {
    const { memory, raw, q } = rawRig(4, { indirect: true });
    table(memory, [
      [BUF, 10, 77, VIRTQ_DESC_F_NEXT],
      [BUF + 0x100, 20, 0xffff, 0],
      [BUF + 0x200, 30, 5, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT],
    ]);
    // WRITE on the indirect descriptor itself is reserved and ignored.
    raw.setAvail(0, TABLE, 48, 2, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE, true);
    const c = q.pop()!;
    expect(c.head).toBe(2);
    expect(c.ringCount).toBe(1);
    expect([...c].map((d) => [d.index, d.addr, d.len, d.flags, d.next, d.indirect])).toEqual([
      [0, BUF, 10, VIRTQ_DESC_F_NEXT, 1, true],
      [1, BUF + 0x100, 20, VIRTQ_DESC_F_NEXT, 2, true],
      [2, BUF + 0x200, 30, VIRTQ_DESC_F_WRITE, 0, true],
    ]);
    expect(q.nextAvail).toBe(1);
  });

  it('round-trips with the driver through addIndirect', () => {
    const { q, driver } = rig(3, { indirect: true });
    const id = driver.addIndirect(TABLE, [buf(0, 5)], [buf(1, 50), buf(2, 60)]);
    driver.kick();
    const c = q.pop()!;
    expect(c.head).toBe(id);
    expect(c.count).toBe(3);
    expect(c.writableLength).toBe(110);
    q.addUsed(id, 110);
    q.advanceUsedRingIdx();
    expect(driver.popUsed()).toBe(id);
    expect(driver.lastUsedLen).toBe(110);
    expect(driver.numFree).toBe(3);
  });

  const violations: [string, DescriptorErrorCode, (r: ReturnType<typeof rawRig>) => void][] = [
    [
      'not negotiated',
      'DESC_INDIRECT_NOT_NEGOTIATED',
      ({ raw, memory }) => {
        table(memory, [[BUF, 8, 0, 0]]);
        raw.setAvail(0, TABLE, 16, 0, VIRTQ_DESC_F_INDIRECT, true);
      },
    ],
    [
      'INDIRECT with NEXT',
      'DESC_INDIRECT_WITH_NEXT',
      ({ raw }) => {
        raw.setAvail(0, TABLE, 16, 0, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, true);
        raw.setAvail(1, BUF, 8, 0, 0, true);
      },
    ],
    [
      'INDIRECT after a direct descriptor in the same list',
      'DESC_INDIRECT_WITH_NEXT',
      ({ raw, memory }) => {
        table(memory, [[BUF, 8, 0, 0]]);
        raw.setAvail(0, BUF, 8, 0, VIRTQ_DESC_F_NEXT, true);
        raw.setAvail(1, TABLE, 16, 0, VIRTQ_DESC_F_INDIRECT, true);
      },
    ],
    [
      'an empty table',
      'DESC_INDIRECT_BAD_LENGTH',
      ({ raw }) => raw.setAvail(0, TABLE, 0, 0, 4, true),
    ],
    [
      'a length that is not a multiple of 16',
      'DESC_INDIRECT_BAD_LENGTH',
      ({ raw }) => raw.setAvail(0, TABLE, 24, 0, VIRTQ_DESC_F_INDIRECT, true),
    ],
    [
      'more entries than the queue size',
      'DESC_INDIRECT_BAD_LENGTH',
      ({ raw }) => raw.setAvail(0, TABLE, 16 * 5, 0, VIRTQ_DESC_F_INDIRECT, true),
    ],
    [
      'a table outside memory',
      'DESC_INDIRECT_OUT_OF_MEMORY',
      ({ raw }) => raw.setAvail(0, (1 << 20) - 16, 32, 0, VIRTQ_DESC_F_INDIRECT, true),
    ],
    [
      'a table at 2^64 - 16',
      'DESC_INDIRECT_OUT_OF_MEMORY',
      ({ raw }) => raw.setAvail(0, 2n ** 64n - 16n, 16, 0, VIRTQ_DESC_F_INDIRECT, true),
    ],
    [
      'a nested table',
      'DESC_INDIRECT_NESTED',
      ({ raw, memory }) => {
        table(memory, [
          [BUF, 8, 0, 0],
          [TABLE, 16, 0, VIRTQ_DESC_F_INDIRECT],
        ]);
        raw.setAvail(0, TABLE, 32, 0, VIRTQ_DESC_F_INDIRECT, true);
      },
    ],
    [
      'an entry outside memory',
      'DESC_BUFFER_OUT_OF_MEMORY',
      ({ raw, memory }) => {
        table(memory, [[2 ** 40, 8, 0, 0]]);
        raw.setAvail(0, TABLE, 16, 0, VIRTQ_DESC_F_INDIRECT, true);
      },
    ],
    [
      'a readable entry after a writable one',
      'DESC_WRITABLE_BEFORE_READABLE',
      ({ raw, memory }) => {
        table(memory, [
          [BUF, 8, 0, VIRTQ_DESC_F_WRITE],
          [BUF, 8, 0, 0],
        ]);
        raw.setAvail(0, TABLE, 32, 0, VIRTQ_DESC_F_INDIRECT, true);
      },
    ],
  ];
  for (const [what, code, build] of violations) {
    it(`refuses ${what}`, () => {
      const r = rawRig(4, { indirect: code !== 'DESC_INDIRECT_NOT_NEGOTIATED' });
      build(r);
      expectDescError(() => r.q.pop(), code);
      expect(r.q.inFlight).toBe(0);
    });
  }

  it('keeps the split ring indirect rules (shared checks)', () => {
    const memory = GuestMemory.create(1 << 20);
    const ring = new RawSplitRing(memory, 0x4000, 4);
    const q = ring.createQueue();
    q.indirectDesc = true;
    memory.writeU64(TABLE, BUF);
    memory.writeU32(TABLE + 8, 8);
    memory.writeU16(TABLE + 12, VIRTQ_DESC_F_NEXT);
    memory.writeU16(TABLE + 14, 0); // loops onto itself
    ring.setDesc(0, TABLE, 16, VIRTQ_DESC_F_INDIRECT, 0);
    ring.setAvailRing(0, 0);
    ring.setAvailIdx(1);
    expectDescError(() => q.pop(), 'DESC_INDIRECT_LOOP');
    ring.setDesc(1, TABLE, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 0);
    ring.setAvailRing(1, 1);
    ring.setAvailIdx(2);
    expectDescError(() => q.pop(), 'DESC_INDIRECT_WITH_NEXT');
    expect(new SplitQueue(4).format).toBe('split');
  });
});

describe('used descriptors (§2.8.1, §2.8.3, §2.8.6, §2.8.9, §2.8.15)', () => {
  it('writes id, len and flags with AVAIL = USED = the device wrap counter, WRITE when len > 0', () => {
    const { raw, q, driver } = rig(2);
    const a = driver.add([buf(0)], [buf(1)]);
    driver.kick();
    q.addUsed(q.pop()!.head, 33);
    q.advanceUsedRingIdx();
    expect(raw.desc(0)).toMatchObject({ id: a, len: 33, flags: USED1 | VIRTQ_DESC_F_WRITE });
    expect(driver.popUsed()).toBe(a);
    // Second lap: used descriptors carry AVAIL = USED = 0.
    const b = driver.add([buf(2)]);
    driver.kick();
    q.addUsed(q.pop()!.head, 0);
    q.advanceUsedRingIdx();
    expect(q.usedWrapCounter).toBe(false);
    expect(raw.desc(0)).toMatchObject({ id: b, len: 0, flags: 0 });
    expect(driver.popUsed()).toBe(b);
    expect(driver.lastUsedLen).toBe(0);
  });

  it('writes the used descriptor at the first slot of a list and skips the rest', () => {
    const { raw, q, driver } = rig(8);
    const a = driver.add([buf(0), buf(1), buf(2)]);
    const b = driver.add([buf(3)], [buf(4)]);
    driver.kick();
    q.pop();
    q.pop();
    q.addUsed(b, 64); // out of order: b completes first
    q.addUsed(a, 0);
    q.advanceUsedRingIdx();
    expect(raw.desc(0).id).toBe(b);
    expect(raw.desc(2).id).toBe(a);
    expect(q.nextUsed).toBe(5);
    expect(driver.popUsed()).toBe(b);
    expect(driver.lastUsedLen).toBe(64);
    expect(driver.popUsed()).toBe(a);
    expect(driver.popUsed()).toBe(-1);
    expect(driver.numFree).toBe(8);
  });

  it('holds back the flags of the first used descriptor of a batch until publication', () => {
    const { raw, q, driver } = rig(8);
    const ids = [driver.add([buf(0)]), driver.add([buf(1)]), driver.add([buf(2)])];
    driver.kick();
    for (let c = q.pop(); c !== null; c = q.pop()) q.addUsed(c.head, 0);
    // Slot 0 still shows the driver's available flags; 1 and 2 are already used.
    expect(raw.descFlags(0)).toBe(AVAIL1);
    expect(raw.descFlags(1)).toBe(USED1);
    expect(raw.descFlags(2)).toBe(USED1);
    expect(driver.hasUsed()).toBe(false);
    expect(driver.popUsed()).toBe(-1);
    q.advanceUsedRingIdx();
    expect(raw.descFlags(0)).toBe(USED1);
    expect([driver.popUsed(), driver.popUsed(), driver.popUsed()]).toEqual(ids);
  });

  it('writes nothing when nothing is pending, and never touches a slot after marking it used', () => {
    const { memory, q, driver } = rig(4);
    const id = driver.add([buf(0)]);
    driver.kick();
    q.addUsed(q.pop()!.head, 0);
    q.advanceUsedRingIdx();
    const slot0 = Array.from(memory.slice(RING, 16));
    q.advanceUsedRingIdx();
    driver.add([buf(1)]);
    driver.add([buf(2)]);
    driver.kick();
    for (let c = q.pop(); c !== null; c = q.pop()) q.addUsed(c.head, 8);
    q.advanceUsedRingIdx();
    q.prepareKick();
    q.setNotification(false);
    expect(Array.from(memory.slice(RING, 16))).toEqual(slot0);
    expect(driver.popUsed()).toBe(id);
  });

  it('publishes a batch in order with one used descriptor (IN_ORDER, §2.8.8)', () => {
    const { raw, q, driver } = rig(8, { inOrder: true });
    const a = driver.add([buf(0), buf(1)]);
    const b = driver.add([], [buf(2)]);
    const c = driver.add([buf(3)], [buf(4), buf(5)]);
    driver.kick();
    while (q.pop() !== null);
    expect(() => q.addUsedBatch(3, b, 0)).toThrow(RangeError);
    expect(() => q.addUsedBatch(4, c, 0)).toThrow(RangeError);
    q.addUsedBatch(3, c, 100);
    q.advanceUsedRingIdx();
    expect(raw.desc(0)).toMatchObject({ id: c, len: 100 });
    expect(q.nextUsed).toBe(6);
    expect(q.inFlight).toBe(0);
    expect([driver.popUsed(), driver.lastUsedLen]).toEqual([a, 0]);
    expect([driver.popUsed(), driver.lastUsedLen]).toEqual([b, 64]);
    expect([driver.popUsed(), driver.lastUsedLen]).toEqual([c, 100]);
    expect(driver.popUsed()).toBe(-1);
    expect(driver.numFree).toBe(8);
  });
});

describe('undoPop', () => {
  it('gives back the buffer popped last, until it is used', () => {
    const { q, driver } = rig(6);
    driver.add([buf(0)]);
    const b = driver.add([buf(1), buf(2)]);
    driver.kick();
    const a = q.pop()!.head;
    const before = q.save();
    const first = q.pop()!.clone();
    q.undoPop();
    expect(q.save()).toEqual(before);
    const again = q.pop()!;
    expect(again.head).toBe(b);
    expect([...again]).toEqual([...first]);
    q.addUsed(b, 0);
    expect(() => q.undoPop()).toThrow(RangeError);
    expect(q.isInFlight(a)).toBe(true);
    expect(() => rawRig(2).q.undoPop()).toThrow(RangeError);
  });
});

describe('event suppression (§2.8.10, §2.8.14)', () => {
  it('device area: DISABLE, ENABLE, or DESC at the next descriptor with EVENT_IDX', () => {
    const plain = rawRig(3);
    plain.q.setNotification(false);
    expect(plain.raw.deviceEvent()).toEqual({ flags: RING_EVENT_FLAGS_DISABLE, offWrap: 0 });
    expect(plain.q.setNotification(true)).toBe(true);
    expect(plain.raw.deviceEvent().flags).toBe(RING_EVENT_FLAGS_ENABLE);

    const { raw, q, driver } = rig(3, { eventIdx: true });
    expect(q.setNotification(true)).toBe(true);
    expect(raw.deviceEvent()).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8000 });
    for (let k = 0; k < 3; k++) driver.add([buf(k)]);
    driver.kick();
    // A buffer is available: enabling reports it instead of waiting, and writes nothing.
    q.setNotification(false);
    expect(q.setNotification(true)).toBe(false);
    expect(raw.deviceEvent().flags).toBe(RING_EVENT_FLAGS_DISABLE);
    for (let k = 0; k < 3; k++) q.addUsed(q.pop()!.head, 0);
    expect(q.popOrEnableNotification()).toBeNull();
    // Three slots consumed in a ring of 3: slot 0 of lap 2 (wrap bit 0).
    expect(raw.deviceEvent()).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0 });
    q.setNotification(false);
    expect(raw.deviceEvent().flags).toBe(RING_EVENT_FLAGS_DISABLE);
  });

  it('popOrEnableNotification pops when a buffer is there, and writes no event then', () => {
    const { raw, q, driver } = rig(4, { eventIdx: true });
    q.setNotification(false);
    const id = driver.add([buf(0)]);
    driver.kick();
    expect(q.popOrEnableNotification()?.head).toBe(id);
    // A buffer was there: the device area still says what it said.
    expect(raw.deviceEvent()).toEqual({ flags: RING_EVENT_FLAGS_DISABLE, offWrap: 0 });
    expect(q.popOrEnableNotification()).toBeNull();
    // None left: a descriptor-specific event at the next slot (1, first lap).
    expect(raw.deviceEvent()).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8001 });
  });

  it('prepareKick follows the driver area flags', () => {
    for (const eventIdx of [false, true]) {
      const { raw, q } = rawRig(4, { eventIdx });
      raw.setDriverEvent(RING_EVENT_FLAGS_DISABLE);
      expect(q.prepareKick()).toBe(false);
      raw.setDriverEvent(RING_EVENT_FLAGS_ENABLE);
      expect(q.prepareKick()).toBe(true);
      // Reserved value 3, and DESC without EVENT_IDX: notify rather than risk a hang.
      raw.setDriverEvent(3);
      expect(q.prepareKick()).toBe(true);
      // Reserved bits above the two flag bits are ignored.
      raw.setDriverEvent(0xfffc | RING_EVENT_FLAGS_DISABLE);
      expect(q.prepareKick()).toBe(false);
    }
    const { raw, q } = rawRig(4, { eventIdx: false });
    raw.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8003);
    expect(q.prepareKick()).toBe(true);
  });

  it('prepareKick with DESC notifies exactly when the named descriptor is used', () => {
    const { raw, q, driver } = rig(3, { eventIdx: true });
    const cycle = (n: number) => {
      for (let k = 0; k < n; k++) driver.add([buf(k)]);
      driver.kick();
      for (let c = q.pop(); c !== null; c = q.pop()) q.addUsed(c.head, 0);
      q.advanceUsedRingIdx();
      while (driver.popUsed() >= 0);
    };
    // The driver stops managing its event structure; the test writes it.
    driver.setInterrupts(false);
    // Ask for slot 2 of lap 1.
    raw.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8002);
    cycle(2); // slots 0, 1
    expect(q.prepareKick()).toBe(false);
    cycle(2); // slots 2, 0 (lap 2)
    expect(q.prepareKick()).toBe(true);
    // Slot 2 of lap 1 has passed: the event now names the past, no notification.
    cycle(1); // slot 1 lap 2
    expect(q.prepareKick()).toBe(false);
    // Slot 2 of lap 2 (wrap 0).
    raw.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x0002);
    cycle(1);
    expect(q.prepareKick()).toBe(true);
    // Nothing used since the last call: nothing to notify about.
    expect(q.prepareKick()).toBe(false);
    // An offset outside the ring is a driver bug: notify.
    raw.setDriverEvent(RING_EVENT_FLAGS_DESC, 0x8000 | 7);
    cycle(1);
    expect(q.prepareKick()).toBe(true);
  });

  it('driver: honours the device area and rearms its own event after each used buffer', () => {
    const { raw, q, driver } = rig(4, { eventIdx: true });
    q.setNotification(false);
    driver.add([buf(0)]);
    expect(driver.kick()).toBe(false);
    // Buffer 0 is available: enabling says so and leaves DISABLE in place.
    expect(q.setNotification(true)).toBe(false);
    expect(raw.deviceEvent().flags).toBe(RING_EVENT_FLAGS_DISABLE);
    q.pop();
    expect(q.setNotification(true)).toBe(true); // DESC at slot 1, wrap 1
    driver.add([buf(1)]);
    expect(driver.kick()).toBe(true);
    driver.add([buf(2)]);
    expect(driver.kick()).toBe(false); // slot 2 is not the one asked for
    // Driver area: DESC at the next used descriptor, moved on by popUsed.
    expect(raw.driverEvent()).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8000 });
    q.addUsed(0, 0);
    q.advanceUsedRingIdx();
    expect(q.prepareKick()).toBe(true);
    expect(driver.popUsed()).toBe(0);
    expect(raw.driverEvent()).toEqual({ flags: RING_EVENT_FLAGS_DESC, offWrap: 0x8001 });
    driver.setInterrupts(false);
    expect(raw.driverEvent().flags).toBe(RING_EVENT_FLAGS_DISABLE);
    expect(driver.notificationData).toBe(0x8003);
  });
});

describe('driver side (§2.8.16, §2.8.17, §2.8.21, §2.8.22)', () => {
  it('makes a batch visible only when it publishes, first flags last', () => {
    const { raw, q, driver } = rig(8);
    const a = driver.add([buf(0), buf(1)]);
    const b = driver.add([buf(2)]);
    expect(raw.descFlags(0)).toBe(0); // the batch's first descriptor is held back
    expect(raw.descFlags(1)).toBe(AVAIL1);
    expect(raw.descFlags(2)).toBe(AVAIL1);
    expect(q.pop()).toBeNull();
    driver.publish();
    expect(raw.descFlags(0)).toBe(AVAIL1 | VIRTQ_DESC_F_NEXT);
    expect(q.pop()?.head).toBe(a);
    expect(q.pop()?.head).toBe(b);
  });

  it('writes the id into the last descriptor of a list only', () => {
    const { raw, driver } = rig(8);
    raw.setDescId(0, 0x1234);
    raw.setDescId(1, 0x4321);
    const id = driver.add([buf(0), buf(1)], [buf(2)]);
    expect([raw.desc(0).id, raw.desc(1).id, raw.desc(2).id]).toEqual([0x1234, 0x4321, id]);
  });

  it('refuses lists longer than the queue or than the free slots', () => {
    const { driver } = rig(3);
    expect(() => driver.add([buf(0), buf(1), buf(2), buf(3)])).toThrow(RangeError);
    expect(() => driver.add([])).toThrow(RangeError);
    driver.add([buf(0), buf(1)]);
    expect(driver.numFree).toBe(1);
    expect(() => driver.add([buf(0), buf(1)])).toThrow(RangeError);
    driver.add([buf(3)]);
    expect(() => driver.addIndirect(0x8000, [buf(4)])).toThrow(RangeError);
  });

  it('toggles its wrap counter after the last slot and marks lap-2 descriptors AVAIL=0 USED=1', () => {
    const { raw, q, driver } = rig(2);
    driver.add([buf(0), buf(1)]);
    expect(driver.availWrapCounter).toBe(false);
    driver.kick();
    q.addUsed(q.pop()!.head, 0);
    q.advanceUsedRingIdx();
    driver.popUsed();
    driver.add([buf(2)]);
    driver.kick();
    expect(raw.descFlags(0)).toBe(AVAIL0);
    expect(q.pop()).not.toBeNull();
  });

  it('rejects a device that returns an id not in flight or writes too much', () => {
    const { raw, q, driver } = rig(4);
    driver.add([buf(0)], [buf(1, 10)]);
    driver.kick();
    q.pop();
    raw.setDesc(0, 0, 11, 0, USED1 | VIRTQ_DESC_F_WRITE);
    expect(() => driver.popUsed()).toThrow(DeviceBehaviourError);
    raw.setDesc(0, 0, 5, 3, USED1 | VIRTQ_DESC_F_WRITE);
    expect(() => driver.popUsed()).toThrow(DeviceBehaviourError);
    // Without WRITE the length is reserved: reported as 0 whatever it says.
    raw.setDesc(0, 0, 999, 0, USED1);
    expect(driver.popUsed()).toBe(0);
    expect(driver.lastUsedLen).toBe(0);
    // A used-looking descriptor when nothing is in flight is not ours.
    raw.setDesc(1, 0, 0, 0, USED1);
    expect(driver.popUsed()).toBe(-1);
  });

  it('exchanges thousands of buffers over an odd-sized ring', () => {
    const { q, driver } = rig(7);
    const chain = new DescriptorChain();
    let returned = 0;
    for (let round = 0; round < 500; round++) {
      const n = 1 + (round % 3);
      for (let k = 0; k < n && driver.numFree >= 2; k++) driver.add([buf(k, 8)], [buf(k + 4, 32)]);
      driver.kick();
      for (let c = q.pop(chain); c !== null; c = q.pop(chain)) {
        expect(c.readableLength).toBe(8);
        q.addUsed(c.head, 32);
      }
      q.advanceUsedRingIdx();
      for (let id = driver.popUsed(); id >= 0; id = driver.popUsed()) {
        expect(driver.lastUsedLen).toBe(32);
        returned++;
      }
    }
    expect(returned).toBeGreaterThan(900);
    expect(driver.numFree).toBe(7);
    expect(q.inFlight).toBe(0);
  });
});

describe('snapshots', () => {
  it('round-trips through JSON in the middle of I/O, unpublished batch included', () => {
    const { memory, raw, q, driver } = rig(5);
    const ids = [driver.add([buf(0)]), driver.add([buf(1), buf(2)]), driver.add([], [buf(3)])];
    driver.kick();
    q.pop();
    q.pop();
    q.pop();
    q.addUsed(ids[1]!, 0);
    q.addUsed(ids[0]!, 0);
    const state = JSON.parse(JSON.stringify(q.save()));
    expect(state.pendingUsed).toBe(3);
    const r = PackedQueue.fromState(state, memory);
    expect(r.save()).toEqual(state);
    expect(raw.descFlags(0)).toBe(AVAIL1);
    r.advanceUsedRingIdx();
    expect(raw.descFlags(0)).toBe(USED1);
    expect([driver.popUsed(), driver.popUsed()]).toEqual([ids[1], ids[0]]);
    r.addUsed(ids[2]!, 64);
    r.advanceUsedRingIdx();
    expect(driver.popUsed()).toBe(ids[2]);
    q.restore(r.save(), memory);
    expect(q.save()).toEqual(r.save());
  });

  it('rejects corrupted states, naming the field', () => {
    const { memory, q, driver } = rig(4);
    driver.add([buf(0)]);
    driver.kick();
    q.pop();
    const good = q.save();
    const bad: [Record<string, unknown>, string][] = [
      [{ inFlight: [[4, 1]] }, 'packed.inFlight.0'],
      [
        {
          inFlight: [
            [0, 1],
            [0, 1],
          ],
        },
        'packed.inFlight.1',
      ],
      [
        {
          inFlight: [
            [0, 3],
            [1, 2],
          ],
        },
        'packed.inFlight.1',
      ],
      [{ inFlight: [[0, 0]] }, 'packed.inFlight.0'],
      [{ nextAvail: 4 }, 'packed.nextAvail'],
      [{ usedWrap: 1 }, 'packed.usedWrap'],
      [{ deviceEventFlags: 3 }, 'packed.deviceEventFlags'],
      [{ pendingUsed: 1, active: false }, 'packed.pendingUsed'],
      [{ format: 'split' }, 'packed.format'],
    ];
    for (const [patch, field] of bad) {
      const e = catchError(() => q.restore({ ...good, ...patch }, memory));
      expect(e).toBeInstanceOf(SnapshotError);
      expect((e as SnapshotError).field).toBe(field);
    }
    expect(q.save()).toEqual(good);
  });
});

describe('errors are VirtqErrors', () => {
  it('everything the guest can cause is a VirtqError', () => {
    const { raw, q } = rawRig(2);
    raw.setAvail(0, 2n ** 60n, 8, 0, 0, true);
    expect(catchError(() => q.pop())).toBeInstanceOf(VirtqError);
  });
});
