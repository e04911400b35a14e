/**
 * The unit tests of the seed (Firecracker's queue.rs, `mod tests`), one for one, against
 * virtq's split queue. Each `it` is named after the seed test it ports. Where virtq
 * deliberately behaves differently (a typed error where the seed returned None or stalled),
 * a one-line comment says so at the assertion.
 */
import { describe, expect, it } from 'vitest';
import { RawSplitRing } from '../../src/driver/index.js';
import {
  type DescriptorError,
  GuestMemoryError,
  isVirtqError,
  QueueConfigError,
  UsedRingError,
  VirtqError,
} from '../../src/errors.js';
import type { GuestMemory } from '../../src/memory/index.js';
import {
  type Logger,
  SplitQueue,
  silentLogger,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_NEXT,
} from '../../src/queue/index.js';
import { trackedMemory } from '../tracked-memory.js';

/** Several regions over fresh buffers, as the seed's `multi_region_mem`. */
function multiRegionMem(ranges: readonly [base: number, length: number][]): GuestMemory {
  return trackedMemory(
    ranges.map(([base, length]) => ({ base, length, buffer: new ArrayBuffer(length) })),
  );
}

/** The seed's `default_mem`: 64 KiB at 0 and 8 KiB at 0x20000, with a gap between. */
function defaultMem(): GuestMemory {
  return multiRegionMem([
    [0, 0x10000],
    [0x20000, 0x2000],
  ]);
}

/** One region from 0, as the seed's `single_region_mem`. */
function singleRegionMem(size: number): GuestMemory {
  return multiRegionMem([[0, size]]);
}

/** A logger that remembers what it was told. */
function recordingLogger(): Logger & { messages: string[] } {
  const messages: string[] = [];
  return {
    messages,
    warn(message) {
      messages.push(message);
    },
  };
}

/** Runs `fn`, which must throw; returns what it threw. */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected an exception, none was thrown');
}

function configError(q: SplitQueue, memory: GuestMemory): QueueConfigError {
  const e = thrown(() => q.initialize(memory));
  expect(e).toBeInstanceOf(QueueConfigError);
  expect(q.isActive).toBe(false);
  return e as QueueConfigError;
}

describe('split queue: the seed unit tests', () => {
  it('test_checked_new_descriptor_chain', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });
    q.initialize(m);
    expect(vq.end()).toBeLessThan(0x1000);

    // virtq: a head at or past the table size is a typed error (seed: None).
    const head = thrown(() => q.chainAt(16));
    expect(isVirtqError(head, 'DESC_HEAD_OUT_OF_RANGE')).toBe(true);
    expect((head as DescriptorError).head).toBe(16);

    // A descriptor with NEXT whose `next` lies past the table.
    vq.setDesc(0, 0x1000, 0x1000, VIRTQ_DESC_F_NEXT, 16);
    // virtq: typed error naming the descriptor (seed: None).
    const next = thrown(() => q.chainAt(0));
    expect(isVirtqError(next, 'DESC_NEXT_OUT_OF_RANGE')).toBe(true);
    expect((next as DescriptorError).head).toBe(0);
    expect((next as DescriptorError).index).toBe(0);

    // A good two-descriptor chain.
    vq.setDescNext(0, 1);
    vq.setDesc(1, 0x2000, 0x1000, 0, 0);
    const c = q.chainAt(0);
    expect(c.head).toBe(0);
    expect(c.count).toBe(2);
    expect(c.index).toBe(0);
    expect(c.addr).toBe(0x1000);
    expect(c.len).toBe(0x1000);
    expect(c.flags).toBe(VIRTQ_DESC_F_NEXT);
    expect(c.next).toBe(1);
    expect(c.hasNext()).toBe(true);
    const second = c.nextDescriptor();
    expect(second).not.toBeNull();
    expect(second!.index).toBe(1);
    expect(second!.addr).toBe(0x2000);
    expect(second!.hasNext()).toBe(false);
    expect(second!.nextDescriptor()).toBeNull();
    // nextDescriptor() hands out a copy: the original cursor has not moved.
    expect(c.index).toBe(0);
  });

  it('test_queue_validation', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ initialize: false, logger: silentLogger });

    q.initialize(m);
    expect(q.isActive).toBe(true);

    q.ready = false;
    let e = configError(q, m);
    expect(e.code).toBe('QUEUE_NOT_READY');
    expect(e.field).toBe('ready');
    q.ready = true;

    // Larger than the device offers, zero, not a power of two.
    for (const size of [q.maxSize << 1, 0, 11]) {
      q.size = size;
      e = configError(q, m);
      expect(e.code).toBe('QUEUE_INVALID_SIZE');
      expect(e.field).toBe('size');
    }
    q.size = q.maxSize;

    const fields = [
      ['descTableAddress', vq.dtableStart()],
      ['availRingAddress', vq.availStart()],
      ['usedRingAddress', vq.usedStart()],
    ] as const;
    for (const [field, good] of fields) {
      // Far outside both regions.
      q[field] = 0xffff_ff00;
      e = configError(q, m);
      expect(e.code).toBe('QUEUE_RING_OUT_OF_MEMORY');
      expect(e.field).toBe(field);
      // Odd, so misaligned for every part of the ring.
      q[field] = 0x1001;
      e = configError(q, m);
      expect(e.code).toBe('QUEUE_MISALIGNED');
      expect(e.field).toBe(field);
      q[field] = good;
    }

    q.initialize(m);
    expect(q.isActive).toBe(true);
  });

  it('test_queue_processing', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });

    for (let j = 0; j < 5; j++) vq.setDesc(j, 0x1000 * (j + 1), 0x1000, VIRTQ_DESC_F_NEXT, j + 1);
    // Two chains: (0, 1) and (2, 3, 4).
    vq.setDescFlags(1, 0);
    vq.setDescFlags(4, 0);
    vq.setAvailRing(0, 0);
    vq.setAvailRing(1, 2);
    vq.setAvailIdx(2);
    expect(q.len()).toBe(2);

    const first = q.pop();
    expect(first).not.toBeNull();
    expect(first!.head).toBe(0);
    const d = first!.nextDescriptor();
    expect(d!.index).toBe(1);
    expect(d!.hasNext()).toBe(false);
    expect(d!.nextDescriptor()).toBeNull();
    expect(q.len()).toBe(1);

    const walkThree = (c: ReturnType<SplitQueue['pop']>) => {
      expect(c).not.toBeNull();
      expect(c!.head).toBe(2);
      const last = c!.nextDescriptor()!.nextDescriptor();
      expect(last!.index).toBe(4);
      expect(last!.hasNext()).toBe(false);
      expect(last!.nextDescriptor()).toBeNull();
    };
    walkThree(q.pop());
    expect(q.isEmpty()).toBe(true);
    expect(q.pop()).toBeNull();

    // undoPop gives the last chain back.
    q.undoPop();
    expect(q.len()).toBe(1);
    walkThree(q.pop());
    q.undoPop();
    expect(q.len()).toBe(1);
    walkThree(q.popOrEnableNotification());

    // Empty, no notification suppression: nothing to publish.
    expect(q.usedRingAvailEventGet()).toBe(0);
    expect(q.popOrEnableNotification()).toBeNull();
    expect(q.usedRingAvailEventGet()).toBe(0);
    expect(vq.availEvent()).toBe(0);

    // Empty, with suppression: avail_event asks for a notification at the next index.
    q.enableNotifSuppression();
    expect(q.popOrEnableNotification()).toBeNull();
    expect(q.usedRingAvailEventGet()).toBe(2);
    expect(vq.availEvent()).toBe(2);
  });

  it('test_invalid_avail_idx_no_notification', () => {
    const m = singleRegionMem(0x6000);
    const vq = new RawSplitRing(m, 0, 4);
    const logger = recordingLogger();
    const q = vq.createQueue({ logger });

    for (let j = 0; j < 4; j++) vq.setDesc(j, 0x1000 * (j + 1), 0x1000, VIRTQ_DESC_F_NEXT, j + 1);
    // Chains (0, 1) and (2, 3).
    vq.setDescFlags(1, 0);
    vq.setDescFlags(3, 0);
    vq.setAvailRing(0, 0);
    vq.setAvailRing(1, 2);
    vq.setAvailIdx(2);
    expect(q.len()).toBe(2);

    const d = q.pop()!.nextDescriptor();
    expect(d).not.toBeNull();
    expect(d!.hasNext()).toBe(false);

    // The driver claims six chains in a ring of four.
    vq.setAvailIdx(6);
    expect(q.len()).toBe(5);

    // More pending than the ring holds: resynchronise and report nothing pending.
    expect(q.pop()).toBeNull();
    expect(q.len()).toBe(0);
    expect(q.nextAvail).toBe(6);
    expect(q.resyncCount).toBe(1);
    expect(logger.messages).toHaveLength(1);
  });

  it('test_invalid_avail_idx_with_notification', () => {
    const m = singleRegionMem(0x6000);
    const vq = new RawSplitRing(m, 0, 4);
    const logger = recordingLogger();
    const q = vq.createQueue({ logger });
    q.usesNotifSuppression = true;

    // One chain of four descriptors.
    for (let j = 0; j < 4; j++) vq.setDesc(j, 0x1000 * (j + 1), 0x1000, VIRTQ_DESC_F_NEXT, j + 1);
    vq.setDescFlags(3, 0);
    vq.setAvailRing(0, 0);
    // An available index no well-behaved driver could write.
    vq.setAvailIdx(6);

    expect(q.popOrEnableNotification()).toBeNull();
    expect(q.len()).toBe(0);
    expect(q.nextAvail).toBe(6);
    // After the resync, notifications are asked for from the driver's index on.
    expect(vq.availEvent()).toBe(6);
    expect(logger.messages).toHaveLength(1);
  });

  it('test_add_used', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });
    expect(vq.usedIdx()).toBe(0);

    const e = thrown(() => q.addUsed(16, 0x1000));
    expect(e).toBeInstanceOf(UsedRingError);
    expect((e as UsedRingError).id).toBe(16);
    expect(q.nextUsed).toBe(0);
    expect(q.numAdded).toBe(0);

    q.addUsed(1, 0x1000);
    q.advanceUsedRingIdx();
    expect(vq.usedIdx()).toBe(1);
    expect(vq.usedRing(0)).toEqual({ id: 1, len: 0x1000 });
  });

  it('test_used_event', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });
    expect(q.availRingUsedEventGet()).toBe(0);
    vq.setUsedEvent(10);
    expect(q.availRingUsedEventGet()).toBe(10);
    vq.setUsedEvent(0xffff);
    expect(q.availRingUsedEventGet()).toBe(0xffff);
  });

  it('test_set_used_ring_avail_event', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });
    expect(vq.availEvent()).toBe(0);
    q.usedRingAvailEventSet(10);
    expect(vq.availEvent()).toBe(10);
    q.usedRingAvailEventSet(0xffff);
    expect(vq.availEvent()).toBe(0xffff);
  });

  it('test_needs_kick', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });

    // Without EVENT_IDX and with avail.flags clear, every batch needs a notification.
    q.usesNotifSuppression = false;
    for (let usedIdx = 0; usedIdx < 10; usedIdx++) {
      for (let usedEvent = 0; usedEvent < 10; usedEvent++) {
        for (let numAdded = 0; numAdded < 10; numAdded++) {
          q.nextUsed = usedIdx;
          vq.setUsedEvent(usedEvent);
          q.numAdded = numAdded;
          expect(q.prepareKick()).toBe(true);
        }
      }
    }
    // virtq honours VIRTQ_AVAIL_F_NO_INTERRUPT (§2.7.7 SHOULD NOT); the seed returns true anyway.
    vq.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    q.nextUsed = 10;
    q.numAdded = 5;
    expect(q.prepareKick()).toBe(false);
    vq.setAvailFlags(0);

    q.enableNotifSuppression();
    // old used idx < used_event < next_used
    q.nextUsed = 10;
    vq.setUsedEvent(6);
    q.numAdded = 5;
    expect(q.prepareKick()).toBe(true);
    expect(q.numAdded).toBe(0);

    // old used idx == used_event < next_used
    q.nextUsed = 10;
    vq.setUsedEvent(6);
    q.numAdded = 4;
    expect(q.prepareKick()).toBe(true);

    // used_event < old used idx < next_used
    q.nextUsed = 10;
    vq.setUsedEvent(6);
    q.numAdded = 3;
    expect(q.prepareKick()).toBe(false);
    expect(q.numAdded).toBe(0);
  });

  it('test_try_enable_notification', () => {
    const m = defaultMem();
    const vq = new RawSplitRing(m, 0, 16);
    const q = vq.createQueue({ logger: silentLogger });

    vq.setDesc(0, 0x1000, 0x1000, 0, 0);
    vq.setAvailRing(0, 0);
    vq.setAvailIdx(1);
    expect(q.len()).toBe(1);

    // Without suppression there is nothing to enable, and avail_event stays put.
    expect(q.tryEnableNotification()).toBe(true);
    expect(q.usedRingAvailEventGet()).toBe(0);

    // With suppression and a chain pending: refuse, touch nothing.
    q.enableNotifSuppression();
    expect(q.tryEnableNotification()).toBe(false);
    expect(q.usedRingAvailEventGet()).toBe(0);

    // Once the chain is consumed, avail_event moves to the next index.
    expect(q.pop()).not.toBeNull();
    expect(q.tryEnableNotification()).toBe(true);
    expect(q.usedRingAvailEventGet()).toBe(1);
    expect(vq.availEvent()).toBe(1);
  });

  it('test_initialize_with_aligned_pointer', () => {
    const q = new SplitQueue(256, { logger: silentLogger });
    q.ready = true;
    q.size = q.maxSize;
    // The smallest non-zero address each part accepts (the seed meant to set the used ring
    // last, but assigned the available ring twice); the parts may overlap.
    q.descTableAddress = 16;
    q.availRingAddress = 2;
    q.usedRingAddress = 4;
    const mem = singleRegionMem(0x10000);
    q.initialize(mem);
    expect(q.isActive).toBe(true);
    expect(q.activeSize).toBe(256);
  });

  it('test_initialize_with_misaligned_pointer', () => {
    const q = new SplitQueue(256, { logger: silentLogger });
    q.ready = true;
    q.size = q.maxSize;
    const mem = singleRegionMem(0x1000);

    const cases = [
      ['descTableAddress', 0xb, 16],
      ['availRingAddress', 0x1, 2],
      ['usedRingAddress', 0x3, 4],
    ] as const;
    for (const [field, addr, align] of cases) {
      q[field] = addr;
      const e = configError(q, mem);
      expect(e.code).toBe('QUEUE_MISALIGNED');
      expect(e.field).toBe(field);
      // The message names the address and the alignment it lacks.
      expect(e.message).toContain(`0x${addr.toString(16)}`);
      expect(e.message).toContain(`${align}-byte`);
      q[field] = 0;
    }
    // All three at 0 fit the 4 KiB region exactly.
    q.initialize(mem);
    expect(q.isActive).toBe(true);
  });

  // DESIGN.md, differences 21 and 22: a failed initialize leaves the queue inactive (not a mix
  // of old and new rings) and marks no page dirty.
  it('a failed initialize leaves the queue inactive and marks nothing dirty', () => {
    const q = new SplitQueue(16, { logger: silentLogger });
    const mem = singleRegionMem(0x10000);
    q.ready = true;
    q.size = 16;
    q.descTableAddress = 0x1000;
    q.availRingAddress = 0x2000;
    q.usedRingAddress = 0x3000;
    q.initialize(mem);
    expect(q.isActive).toBe(true);
    mem.takeDirtyBitmaps();
    expect(mem.dirtyPages()).toEqual([]);
    // New rings whose used ring lies outside memory: refused after the other two were checked.
    q.descTableAddress = 0x4000;
    q.availRingAddress = 0x5000;
    q.usedRingAddress = 0xfff0;
    expect(configError(q, mem).code).toBe('QUEUE_RING_OUT_OF_MEMORY');
    expect(q.isActive).toBe(false);
    expect(mem.dirtyPages()).toEqual([]);
    const e = thrown(() => q.pop());
    expect(isVirtqError(e, 'QUEUE_NOT_ACTIVE')).toBe(true);
  });

  // DESIGN.md, difference 23: an out-of-range used id is the device's bug: a typed error, no log.
  it('an out-of-range used id throws UsedRingError and logs nothing', () => {
    const logger = recordingLogger();
    const q = new SplitQueue(16, { logger });
    const mem = singleRegionMem(0x10000);
    q.ready = true;
    q.size = 16;
    q.initialize(mem);
    expect(thrown(() => q.addUsed(16, 0))).toBeInstanceOf(UsedRingError);
    expect(logger.messages).toEqual([]);
  });

  // DESIGN.md, difference 24: on a size-1 queue NEXT can only loop back; the seed served the
  // one descriptor and ignored NEXT.
  it('a chain with NEXT on a queue of size 1 is DESC_CHAIN_TOO_LONG', () => {
    const q = new SplitQueue(1, { logger: silentLogger });
    const mem = singleRegionMem(0x10000);
    q.ready = true;
    q.size = 1;
    q.descTableAddress = 0;
    q.availRingAddress = 0x100;
    q.usedRingAddress = 0x200;
    q.initialize(mem);
    // Descriptor 0: 4 bytes at 0x1000, NEXT -> 0. avail.idx 1, ring[0] 0.
    mem.write(
      0,
      new Uint8Array([0, 0x10, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, VIRTQ_DESC_F_NEXT, 0, 0, 0]),
    );
    mem.write(0x100, new Uint8Array([0, 0, 1, 0, 0, 0]));
    const e = thrown(() => q.pop()) as DescriptorError;
    expect(isVirtqError(e, 'DESC_CHAIN_TOO_LONG')).toBe(true);
  });

  it('test_queue_error_display', () => {
    const mem = new GuestMemoryError(0, 4);
    expect(mem).toBeInstanceOf(VirtqError);
    expect(mem).toBeInstanceOf(Error);
    expect(mem.name).toBe('GuestMemoryError');
    expect(mem.code).toBe('MEMORY_OUT_OF_BOUNDS');
    expect(mem.message).toContain('0x0');
    expect(String(mem)).toMatch(/^GuestMemoryError: /);
    expect(isVirtqError(mem, 'MEMORY_OUT_OF_BOUNDS')).toBe(true);
    expect(isVirtqError(mem, 'USED_ID_OUT_OF_RANGE')).toBe(false);

    const used = new UsedRingError(1, 16);
    expect(used.name).toBe('UsedRingError');
    expect(used.code).toBe('USED_ID_OUT_OF_RANGE');
    expect(used.message).toContain('1');
    expect(used.message).toContain('16');
    expect(String(used)).toMatch(/^UsedRingError: /);
    expect(isVirtqError(used)).toBe(true);
    // Host misuse is not a VirtqError.
    expect(isVirtqError(new RangeError('x'))).toBe(false);
  });
});
