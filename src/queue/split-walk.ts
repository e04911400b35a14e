/**
 * The split ring's chain walks, which fill a {@link ChainRecord} from a descriptor table: the
 * fast path the pop inlines, and the checked walk it hands anything unusual to. The packed
 * walks and both formats' indirect tables are in `chain-walk.ts`. Used only by the queues of
 * `src/queue`.
 */

import { joinU64, joinU64Unclamped } from '../memory/guest-memory.js';
import type { ChainRecord } from './chain-record.js';
import { followSplitIndirect } from './chain-walk.js';
import {
  SPLIT_DESC_ADDR_HI_U32,
  SPLIT_DESC_ADDR_LO_U32,
  SPLIT_DESC_LEN_U32,
} from './split/layout.js';

/**
 * Copies the split-format chain that starts at descriptor `head` (below `size`) of a
 * descriptor table (`table`: four u32 per descriptor, `size` entries) into `rec`, whose memory
 * is the queue's: the per-chain hot path of the split ring. Returns false, having kept
 * nothing, when the chain is not one this fast path takes.
 *
 * This is the fast path for what drivers send nearly always: direct descriptors, each buffer
 * non-empty and in the region of the one before, the chain within its storage and the queue
 * size. It needs no `begin`: on success it sets every field a reader of the chain sees except
 * `head` (the caller's). Anything else (an indirect table, an empty buffer, another region, a
 * broken rule) the queue starts again with `begin` and {@link walkSplitChecked}, which checks
 * and reports everything. Only the checked walk's copy is kept then, so the device still sees
 * the table as read once. The fast path is small enough for V8 to inline into the pop; that
 * took W1 L=1 from about 31 to 24 ns per chain (docs/PERFORMANCE.md).
 */
export function walkSplit(
  rec: ChainRecord,
  table: Uint32Array,
  head: number,
  size: number,
): boolean {
  // Named constants as literals in place, each with its name in a comment that
  // test/queue/hot-literals.test.ts checks (see walkSplitChecked).
  const flagsNext = rec.flagsNext;
  const addrs = rec.addrs;
  const lens = rec.lens;
  // size is the longest chain a split ring holds (§2.7.5.2, the limit `begin` would set).
  const room = flagsNext.length < size ? flagsNext.length : size;
  const hint = rec.hint;
  const rBase = hint.base;
  const rEnd = hint.end;
  let n = 0;
  let readable = 0;
  let writable = 0;
  let wstart = -1;
  let i = head;
  for (;;) {
    const w = i << 2;
    const fn = table[w + /* SPLIT_DESC_FLAGS_NEXT_U32 */ 3]!;
    const len = table[w + /* SPLIT_DESC_LEN_U32 */ 2]!;
    const addr = joinU64Unclamped(
      table[w + /* SPLIT_DESC_ADDR_LO_U32 */ 0]!,
      table[w + /* SPLIT_DESC_ADDR_HI_U32 */ 1]!,
    );
    if (
      (fn & /* VIRTQ_DESC_F_INDIRECT */ 4) !== 0 ||
      n >= room ||
      !(len > 0 && addr >= rBase && len <= rEnd - addr)
    )
      break;
    if ((fn & /* VIRTQ_DESC_F_WRITE */ 2) !== 0) {
      if (wstart < 0) wstart = n;
      writable += len;
    } else if (wstart < 0) readable += len;
    else break;
    if (readable + writable > /* MAX_CHAIN_BYTES */ 2 ** 32) break;
    // Three stores per descriptor: flags and next as the table holds them, address, length.
    // The region is the chain's (every buffer is in `hint`), the index the `next` before.
    flagsNext[n] = fn;
    addrs[n] = addr;
    lens[n] = len;
    n++;
    if ((fn & /* VIRTQ_DESC_F_NEXT */ 1) === 0) {
      rec.commitFast(n, readable, writable, wstart < 0 ? n : wstart, head);
      return true;
    }
    i = fn >>> 16;
    if (i >= size) break;
  }
  return false;
}

/**
 * The split walk that checks and reports everything (the queue starts the chain again here
 * with `begin` when {@link walkSplit} meets anything unusual): what {@link ChainRecord.push}
 * checks, in one loop that keeps the running totals in locals, with an indirect descriptor
 * followed into its table ({@link followSplitIndirect}).
 */
export function walkSplitChecked(
  rec: ChainRecord,
  table: Uint32Array,
  head: number,
  size: number,
): void {
  // Named constants as literals in locals: V8 (11.3, Node 20) loads an imported binding at
  // every use with a check that it is initialised; here that cost about 15% per descriptor
  // at L=16 and 4 ns per chain at L=1 (bench/run.ts w1-floor/). test/queue/hot-literals.test.ts
  // checks each literal against the constant named beside it.
  const ADDR_LO = 0; // SPLIT_DESC_ADDR_LO_U32
  const ADDR_HI = 1; // SPLIT_DESC_ADDR_HI_U32
  const LEN = 2; // SPLIT_DESC_LEN_U32
  const FLAGS_NEXT = 3; // SPLIT_DESC_FLAGS_NEXT_U32
  const F_NEXT = 1; // VIRTQ_DESC_F_NEXT
  const F_WRITE = 2; // VIRTQ_DESC_F_WRITE
  const F_INDIRECT = 4; // VIRTQ_DESC_F_INDIRECT
  const MAX_BYTES = 2 ** 32; // MAX_CHAIN_BYTES
  const join = joinU64; // the one u64 join, loaded once per call
  const start = rec.count;
  const ringBase = rec.ringCount - start;
  let n = start;
  let readable = rec.readableLength;
  let writable = rec.writableLength;
  let wstart = rec.writableStart;
  let flagsNext = rec.flagsNext;
  let addrs = rec.addrs;
  let lens = rec.lens;
  let regions = rec.regionList;
  const limit = rec.limit;
  // The last buffer's region, in locals: most chains live in one region.
  let hint = rec.hint;
  let rBase = hint.base;
  let rEnd = hint.end;
  let i = head;
  let stop = -1;
  let stopFlags = 0;
  for (;;) {
    const w = i << 2;
    // flags (bits 0-15) and next (bits 16-31) are one little-endian u32.
    const fn = table[w + FLAGS_NEXT]!;
    if ((fn & F_INDIRECT) !== 0) {
      stop = i;
      stopFlags = fn & 0xffff;
      break;
    }
    if (n >= limit) {
      rec.commit(n, ringBase + n, readable, writable, wstart);
      rec.fail('DESC_CHAIN_TOO_LONG', i, `chain is longer than ${limit} descriptors`);
    }
    if (n >= flagsNext.length) {
      rec.ensureCapacity(n + 1);
      flagsNext = rec.flagsNext;
      addrs = rec.addrs;
      lens = rec.lens;
      regions = rec.regionList;
    }
    const lo = table[w + ADDR_LO]!;
    const hi = table[w + ADDR_HI]!;
    const len = table[w + LEN]!;
    const flags = fn & 0xffff;
    if ((flags & F_WRITE) !== 0) {
      if (wstart < 0) wstart = n;
      writable += len;
    } else {
      // §2.7.4.2: device-readable descriptors MUST come before device-writable ones.
      if (wstart >= 0) {
        rec.commit(n, ringBase + n, readable, writable, wstart);
        rec.fail(
          'DESC_WRITABLE_BEFORE_READABLE',
          i,
          'device-readable descriptor after a device-writable one',
        );
      }
      readable += len;
    }
    // §2.7.5.2: a chain MUST NOT describe more than 2^32 bytes in total.
    if (readable + writable > MAX_BYTES) {
      rec.commit(n, ringBase + n, readable, writable, wstart);
      rec.fail('DESC_CHAIN_LENGTH_OVERFLOW', i, 'chain describes more than 2^32 bytes');
    }
    const addr = join(lo, hi);
    if (len === 0) {
      if (regions[n] !== null) regions[n] = null;
    } else if (addr >= rBase && len <= rEnd - addr) {
      // Compare-then-store: a reused chain usually holds rec region there already.
      if (regions[n] !== hint) regions[n] = hint;
    } else {
      // A miss: look the region up (the totals are stored first, in case it fails).
      rec.commit(n, ringBase + n, readable, writable, wstart);
      const region = rec.regionOf(addr, len, i);
      if (region !== null) {
        hint = region;
        rBase = region.base;
        rEnd = region.end;
      }
      regions[n] = region;
    }
    flagsNext[n] = fn;
    addrs[n] = addr;
    lens[n] = len;
    n++;
    if ((flags & F_NEXT) === 0) break;
    const next = fn >>> 16;
    // §2.7.5: `next` must index the descriptor table.
    if (next >= size) {
      rec.commit(n, ringBase + n, readable, writable, wstart);
      rec.fail('DESC_NEXT_OUT_OF_RANGE', i, `next ${next} is outside a table of ${size}`);
    }
    i = next;
  }
  rec.commit(n, ringBase + n, readable, writable, wstart);
  if (stop >= 0) {
    // The chain ends in an indirect table: follow it.
    const w = stop << 2;
    followSplitIndirect(
      rec,
      stop,
      table[w + SPLIT_DESC_ADDR_LO_U32]!,
      table[w + SPLIT_DESC_ADDR_HI_U32]!,
      table[w + SPLIT_DESC_LEN_U32]!,
      stopFlags,
    );
  }
}
