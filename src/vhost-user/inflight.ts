/**
 * The inflight buffer of INFLIGHT_SHMFD (QEMU docs/interop/vhost-user.rst, "Inflight I/O
 * tracking"): shared memory in which the back-end records, for each ring, which chains
 * it has taken from the available ring and not yet completed. The front-end keeps the buffer
 * (GET_INFLIGHT_FD hands it over, SET_INFLIGHT_FD gives it back); a back-end that crashed and
 * was restarted reads it to complete exactly the requests its predecessor left behind.
 *
 * Layout of one queue's region (the spec's `QueueRegionSplit`, little-endian): `features` u64,
 * `version` u16, `desc_num` u16, `last_batch_head` u16, `used_idx` u16, then `desc_num`
 * entries of 16 bytes: `inflight` u8, 5 bytes of padding, `next` u16, `counter` u64. Regions
 * follow each other, each rounded up to 64 bytes.
 *
 * Everything read back from the buffer is checked before it is used: it lives in memory the
 * front-end can write, and a crash may leave any field half-updated.
 */
import type { Logger } from '../queue/logger.js';
import type { SplitQueueTracker } from '../queue/split/tracked.js';
import type { SharedMapping } from './memory-table.js';
import { PackedInflight, packedInflightRegionBytes } from './packed-inflight.js';

const HEADER_BYTES = 16;
const ENTRY_BYTES = 16;
const REGION_ALIGN = 64;
const VERSION = 1;

// Offsets inside a region.
const O_VERSION = 8;
const O_DESC_NUM = 10;
const O_LAST_BATCH_HEAD = 12;
const O_USED_IDX = 14;
// Offsets inside an entry.
const E_INFLIGHT = 0;
const E_NEXT = 6;
const E_COUNTER = 8;

const TWO_32 = 2 ** 32;

/** Bytes of one split queue's region for rings of up to `queueSize` descriptors. */
export function splitInflightRegionBytes(queueSize: number): number {
  const raw = HEADER_BYTES + ENTRY_BYTES * queueSize;
  return Math.ceil(raw / REGION_ALIGN) * REGION_ALIGN;
}

/** Bytes of a whole buffer for `numQueues` split queues of up to `queueSize` descriptors. */
export function splitInflightBytes(numQueues: number, queueSize: number): number {
  return numQueues * splitInflightRegionBytes(queueSize);
}

/**
 * The `desc_num` recorded in the first region of an inflight buffer of `bytes` bytes (0 for a
 * fresh, zeroed buffer, or one too short to hold a region header).
 */
export function recordedDescNum(mapping: SharedMapping, bytes: number): number {
  if (bytes < HEADER_BYTES) return 0;
  const v = new DataView(mapping.buffer, mapping.offset, HEADER_BYTES);
  return v.getUint16(O_VERSION, true) === VERSION ? v.getUint16(O_DESC_NUM, true) : 0;
}

/** What a ring resumes with: where to read the available ring next, and what to redo first. */
export interface InflightResume {
  /**
   * The ring's next available index: `used.idx` plus the chains still in flight; null for a
   * region never used, where the front-end's VRING_BASE stands (a new buffer after a device
   * reset, or a destination of live migration, which QEMU gives a fresh one).
   */
  readonly nextAvail: number | null;
  /** Heads of the chains in flight, oldest first. */
  readonly heads: readonly number[];
}

/** One split ring's region: records pops and completions as the ring runs. */
export class SplitInflight implements SplitQueueTracker {
  private readonly view: DataView;
  private readonly bytes: Uint8Array;
  /** Entries in the region (`desc_num`): the largest ring it can track. */
  readonly descNum: number;
  /** Where the region lives (to hand it to another thread). */
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
  private counter = 0;
  private usedIdx = 0;
  private lastBatchHead = 0;

  constructor(buffer: SharedArrayBuffer, offset: number, descNum: number) {
    const length = HEADER_BYTES + ENTRY_BYTES * descNum;
    this.view = new DataView(buffer, offset, length);
    this.bytes = new Uint8Array(buffer, offset, length);
    this.descNum = descNum;
    this.buffer = buffer;
    this.offset = offset;
  }

  /**
   * Prepares the region for a ring of `ringSize` descriptors whose used index in guest memory
   * is `guestUsedIdx`, following "When reconnecting": a region never used is initialised; a
   * used one has its last, possibly half-recorded batch settled, and its chains in flight come
   * back oldest first. Anomalies (a corrupt region) are reported to `logger` and dropped.
   */
  resume(ringSize: number, guestUsedIdx: number, logger: Logger): InflightResume {
    const v = this.view;
    const n = this.descNum;
    const version = v.getUint16(O_VERSION, true);
    if (version !== VERSION || v.getUint16(O_DESC_NUM, true) !== n) {
      if (version !== 0) {
        logger.warn('vhost-user: inflight region of unknown version or size; starting afresh', {
          version,
          descNum: v.getUint16(O_DESC_NUM, true),
        });
      }
      this.bytes.fill(0);
      v.setUint16(O_VERSION, VERSION, true);
      v.setUint16(O_DESC_NUM, n, true);
      v.setUint16(O_USED_IDX, guestUsedIdx, true);
      this.counter = 0;
      this.usedIdx = guestUsedIdx;
      this.lastBatchHead = 0;
      return { nextAvail: null, heads: [] };
    }

    // A batch published to the guest whose entries were not all cleared: clear them now.
    const recorded = v.getUint16(O_USED_IDX, true);
    if (recorded !== guestUsedIdx) {
      const batch = (guestUsedIdx - recorded) & 0xffff;
      let h = v.getUint16(O_LAST_BATCH_HEAD, true);
      for (let k = 0; k < batch && k < n && h < n; k++) {
        this.bytes[HEADER_BYTES + h * ENTRY_BYTES + E_INFLIGHT] = 0;
        h = v.getUint16(HEADER_BYTES + h * ENTRY_BYTES + E_NEXT, true);
      }
      v.setUint16(O_USED_IDX, guestUsedIdx, true);
    }

    const found: { head: number; counter: number }[] = [];
    let maxCounter = -1;
    for (let i = 0; i < n; i++) {
      const at = HEADER_BYTES + i * ENTRY_BYTES;
      if (this.bytes[at + E_INFLIGHT] === 0) continue;
      const counter = this.counterAt(at);
      if (i >= ringSize) {
        logger.warn('vhost-user: inflight entry outside the ring dropped', { head: i, ringSize });
        this.bytes[at + E_INFLIGHT] = 0;
        continue;
      }
      found.push({ head: i, counter });
      if (counter > maxCounter) maxCounter = counter;
    }
    found.sort((a, b) => a.counter - b.counter);
    this.counter = maxCounter + 1;
    this.usedIdx = guestUsedIdx;
    this.lastBatchHead = v.getUint16(O_LAST_BATCH_HEAD, true);
    return {
      nextAvail: (guestUsedIdx + found.length) & 0xffff,
      heads: found.map((f) => f.head),
    };
  }

  /** Chains in flight now (for tests and diagnostics). */
  inflightHeads(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.descNum; i++) {
      if (this.bytes[HEADER_BYTES + i * ENTRY_BYTES + E_INFLIGHT] !== 0) out.push(i);
    }
    return out;
  }

  // "When receiving available buffers from the driver".
  popped(head: number): void {
    if (head >= this.descNum) return;
    const at = HEADER_BYTES + head * ENTRY_BYTES;
    const c = this.counter++;
    this.view.setUint32(at + E_COUNTER, c % TWO_32, true);
    this.view.setUint32(at + E_COUNTER + 4, Math.floor(c / TWO_32), true);
    this.bytes[at + E_INFLIGHT] = 1;
  }

  // "When supplying used buffers to the driver", steps 1-3: link the entry into the batch.
  used(id: number): void {
    if (id >= this.descNum) return;
    this.view.setUint16(HEADER_BYTES + id * ENTRY_BYTES + E_NEXT, this.lastBatchHead, true);
    this.lastBatchHead = id;
    this.view.setUint16(O_LAST_BATCH_HEAD, id, true);
  }

  // The rest: once used.idx is published, the batch is no longer in flight.
  published(usedIdx: number): void {
    const batch = (usedIdx - this.usedIdx) & 0xffff;
    let h = this.lastBatchHead;
    for (let k = 0; k < batch && h < this.descNum; k++) {
      const at = HEADER_BYTES + h * ENTRY_BYTES;
      this.bytes[at + E_INFLIGHT] = 0;
      h = this.view.getUint16(at + E_NEXT, true);
    }
    this.usedIdx = usedIdx;
    this.view.setUint16(O_USED_IDX, usedIdx, true);
  }

  private counterAt(at: number): number {
    return (
      this.view.getUint32(at + E_COUNTER, true) +
      this.view.getUint32(at + E_COUNTER + 4, true) * TWO_32
    );
  }
}

/**
 * Bytes of one queue's region in the buffers virtq hands out: room for a ring of `descNum`
 * descriptors in either layout (the ring format is known only when a ring starts, and QEMU asks
 * for the buffer before it sets the features).
 */
export function inflightRegionBytes(descNum: number): number {
  return Math.max(splitInflightRegionBytes(descNum), packedInflightRegionBytes(descNum));
}

/** Bytes of a buffer for `numQueues` queues of up to `descNum` descriptors, either layout. */
export function inflightBufferBytes(numQueues: number, descNum: number): number {
  return numQueues * inflightRegionBytes(descNum);
}

/**
 * A whole inflight buffer: one region per queue, `step` bytes apart, each viewed as a split
 * ({@link SplitInflight}) or packed ({@link PackedInflight}) region when its ring starts.
 */
export class InflightBuffer {
  readonly numQueues: number;
  /** Entries per region: the largest ring a region can track. */
  readonly descNum: number;
  /** Bytes from one region to the next. */
  readonly step: number;
  private readonly mapping: SharedMapping;

  /** `mapping` must hold `numQueues * step` bytes, and `step` a split region of `descNum`. */
  constructor(
    mapping: SharedMapping,
    numQueues: number,
    descNum: number,
    step = inflightRegionBytes(descNum),
  ) {
    if (step < splitInflightRegionBytes(descNum)) {
      throw new RangeError(`inflight regions of ${step} bytes cannot hold ${descNum} entries`);
    }
    this.mapping = mapping;
    this.numQueues = numQueues;
    this.descNum = descNum;
    this.step = step;
  }

  /** Queue `index`'s region as a split ring's, or null when the buffer has none for it. */
  split(index: number): SplitInflight | null {
    if (index >= this.numQueues) return null;
    const m = this.mapping;
    return new SplitInflight(m.buffer, m.offset + index * this.step, this.descNum);
  }

  /**
   * Queue `index`'s region as a packed ring's, or null when the buffer has none for it (or its
   * regions are too small for the packed layout: a buffer from another back-end).
   */
  packed(index: number): PackedInflight | null {
    if (index >= this.numQueues || this.step < packedInflightRegionBytes(this.descNum)) {
      return null;
    }
    const m = this.mapping;
    return new PackedInflight(m.buffer, m.offset + index * this.step, this.descNum);
  }
}
