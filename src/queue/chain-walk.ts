/**
 * The walks that fill a {@link ChainRecord} from a ring: a split-format chain through its
 * descriptor table, a packed-format list through its ring slots, and either format's indirect
 * table (VIRTIO 1.2 §2.7.5.3, §2.8.7). Each checks every rule the record's `push` checks, the
 * two ring walks in one loop with the chain's running totals in locals: they are the per-chain
 * hot path. Used only by the queues of `src/queue`.
 */

import { type GuestMemory, joinU64, joinU64Unclamped } from '../memory/guest-memory.js';
import type { GuestRegion } from '../memory/region.js';
import type { ChainRecord } from './chain-record.js';
import {
  DESCRIPTOR_SIZE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from './constants.js';

/** A guest address from the two u32 halves of a descriptor's u64 field (see U64_UNSAFE). */
const joinAddr = joinU64;

/** 2^32, to split an address into the halves a descriptor holds. */
const TWO_32 = 2 ** 32;

/** The AVAIL and USED bits of a packed descriptor's flags (VIRTIO 1.2 §2.8.1). */
const _PACKED_RING_BITS = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED;

/**
 * Copies the packed-ring descriptor list that starts at ring slot `first` (`ring`: four u32
 * per slot, `size` slots; the first slot's flags already loaded as `firstFlags`) into `rec`,
 * whose memory is the queue's; returns the slot the list ended on, or -1 when the list is not
 * one this fast path takes. The per-buffer hot path of the packed ring: direct descriptors,
 * each buffer non-empty and in the region of the one before, the list within the record's
 * storage and the `free` slots. It needs no `begin`: on success it sets every field a reader
 * of the chain sees except `head` (the caller's, from the last slot). On -1 the queue starts
 * the list again with `begin` and {@link walkPackedListChecked}, whose copy is then the only
 * one kept.
 */
export function walkPackedList(
  rec: ChainRecord,
  ring: Uint32Array,
  first: number,
  firstFlags: number,
  size: number,
  free: number,
): number {
  // Named constants as literals, each with its name in a comment that
  // test/queue/hot-literals.test.ts checks (locals would make the walk too big to inline).
  const flagsNext = rec.flagsNext;
  const addrs = rec.addrs;
  const lens = rec.lens;
  // free <= size, the longest list a packed ring holds (§2.8.17).
  const room = flagsNext.length < free ? flagsNext.length : free;
  const hint = rec.hint;
  const rBase = hint.base;
  const rEnd = hint.end;
  let n = 0;
  let readable = 0;
  let writable = 0;
  let wstart = -1;
  let i = first;
  let flags = firstFlags;
  for (;;) {
    const w = i << 2;
    const len = ring[w + /* PACKED_DESC_LEN_U32 */ 2]!;
    const addr = joinU64Unclamped(
      ring[w + /* PACKED_DESC_ADDR_LO_U32 */ 0]!,
      ring[w + /* PACKED_DESC_ADDR_HI_U32 */ 1]!,
    );
    if (
      (flags & /* VIRTQ_DESC_F_INDIRECT */ 4) !== 0 ||
      n >= room ||
      !(len > 0 && addr >= rBase && len <= rEnd - addr)
    )
      break;
    if ((flags & /* VIRTQ_DESC_F_WRITE */ 2) !== 0) {
      if (wstart < 0) wstart = n;
      writable += len;
    } else if (wstart < 0) readable += len;
    else break;
    if (readable + writable > /* MAX_CHAIN_BYTES */ 2 ** 32) break;
    // §2.8.6: a list continues in the next ring slot, wrapping at the end of the ring.
    const nextSlot = i + 1 === size ? 0 : i + 1;
    const more = flags & /* VIRTQ_DESC_F_NEXT */ 1;
    // Three stores per descriptor, as in walkSplit; `next` is the following slot.
    flagsNext[n] = (flags & ~(/* PACKED_RING_BITS */ 0x8080)) | ((more * nextSlot) << 16);
    addrs[n] = addr;
    lens[n] = len;
    n++;
    if (more === 0) {
      rec.commitFast(n, readable, writable, wstart < 0 ? n : wstart, first);
      return i;
    }
    i = nextSlot;
    flags = ring[(i << 2) + /* PACKED_DESC_ID_FLAGS_U32 */ 3]! >>> 16;
  }
  return -1;
}

/**
 * The packed list walk that checks and reports everything (the queue starts the list again
 * here with `begin` when {@link walkPackedList} meets anything unusual): what
 * {@link ChainRecord.push} checks, in one loop with the running totals in locals. The list
 * may take at most `free` slots (§2.8.17); an indirect descriptor is followed into its table
 * ({@link followPackedIndirect}).
 * Returns the slot the list ended on. {@link ChainRecord.slotsRead} counts the slots read,
 * also when it throws.
 */
export function walkPackedListChecked(
  rec: ChainRecord,
  ring: Uint32Array,
  first: number,
  firstFlags: number,
  size: number,
  free: number,
): number {
  // Named constants as literals in locals (see walkSplitChecked in split-walk.ts).
  const ADDR_LO = 0; // PACKED_DESC_ADDR_LO_U32
  const ADDR_HI = 1; // PACKED_DESC_ADDR_HI_U32
  const LEN = 2; // PACKED_DESC_LEN_U32
  const ID_FLAGS = 3; // PACKED_DESC_ID_FLAGS_U32
  const F_NEXT = 1; // VIRTQ_DESC_F_NEXT
  const F_WRITE = 2; // VIRTQ_DESC_F_WRITE
  const F_INDIRECT = 4; // VIRTQ_DESC_F_INDIRECT
  const RING_BITS = 0x8080; // PACKED_RING_BITS (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)
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
  // The first slot is the first descriptor's index (begin set the buffer id, the head).
  if (start === 0) rec.firstIndex = first;
  // The last buffer's region, in locals: most lists live in one region.
  let hint = rec.hint;
  let rBase = hint.base;
  let rEnd = hint.end;
  let i = first;
  let flags = firstFlags;
  let read = 0;
  for (;;) {
    // §2.8.17: no list is longer than the queue (or the free slots); this bounds the walk.
    // The count is stored as it goes: the queue skips the slots read even when this throws.
    rec.slotsRead = ++read;
    if (read > free) {
      rec.commit(n, ringBase + n, readable, writable, wstart);
      rec.fail(
        'DESC_CHAIN_TOO_LONG',
        i,
        free === size
          ? `list is longer than the queue size ${size}`
          : `list runs past the ${free} ring slots not in flight`,
      );
    }
    if ((flags & F_INDIRECT) !== 0) {
      rec.commit(n, ringBase + n, readable, writable, wstart);
      // §2.8.7: one ring slot naming a table of packed descriptors used in order.
      const w = i << 2;
      followPackedIndirect(rec, i, ring[w + ADDR_LO]!, ring[w + ADDR_HI]!, ring[w + LEN]!, flags);
      return i;
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
    const w = i << 2;
    const len = ring[w + LEN]!;
    if ((flags & F_WRITE) !== 0) {
      if (wstart < 0) wstart = n;
      writable += len;
    } else {
      // §2.8.4: device-readable descriptors MUST come before device-writable ones.
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
    // §2.8.5: a list MUST NOT describe more than 2^32 bytes in total.
    if (readable + writable > MAX_BYTES) {
      rec.commit(n, ringBase + n, readable, writable, wstart);
      rec.fail('DESC_CHAIN_LENGTH_OVERFLOW', i, 'chain describes more than 2^32 bytes');
    }
    const addr = join(ring[w + ADDR_LO]!, ring[w + ADDR_HI]!);
    if (len === 0) {
      if (regions[n] !== null) regions[n] = null;
    } else if (addr >= rBase && len <= rEnd - addr) {
      // Compare-then-store: a reused chain usually holds this region there already.
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
    const more = (flags & F_NEXT) !== 0;
    // §2.8.6: a list continues in the next ring slot, wrapping at the end of the ring.
    const nextSlot = i + 1 === size ? 0 : i + 1;
    // The AVAIL/USED bits describe the ring slot, not the buffer: they stay out of the chain.
    flagsNext[n] = (flags & ~RING_BITS) | ((more ? nextSlot : 0) << 16);
    addrs[n] = addr;
    lens[n] = len;
    n++;
    if (!more) break;
    i = nextSlot;
    // flags are the high half of the slot's last u32 (the buffer id the low half).
    flags = ring[(i << 2) + ID_FLAGS]! >>> 16;
  }
  rec.commit(n, ringBase + n, readable, writable, wstart);
  return i;
}

/**
 * Follows an indirect descriptor (`index`, with the given raw fields) into its table and
 * pushes every descriptor of the table's chain (VIRTIO 1.2 §2.7.5.3): split-format entries
 * linked by NEXT / `next` inside the table.
 */
export function followSplitIndirect(
  rec: ChainRecord,
  index: number,
  addrLo: number,
  addrHi: number,
  len: number,
  flags: number,
): void {
  const r = enterIndirect(rec, index, addrLo, addrHi, len, flags);
  const entries = len / DESCRIPTOR_SIZE;
  const view = r.view;
  const base = joinAddr(addrLo, addrHi) - r.base;
  let j = 0;
  let steps = 0;
  for (;;) {
    // A table of `entries` descriptors holds a chain of at most `entries`; more means a loop.
    if (++steps > entries) rec.fail('DESC_INDIRECT_LOOP', j, 'indirect table chain loops');
    const off = base + j * DESCRIPTOR_SIZE;
    const lo = view.getUint32(off, true);
    const hi = view.getUint32(off + 4, true);
    const dlen = view.getUint32(off + 8, true);
    const dflags = view.getUint16(off + 12, true);
    const dnext = view.getUint16(off + 14, true);
    if ((dflags & VIRTQ_DESC_F_INDIRECT) !== 0) {
      rec.fail('DESC_INDIRECT_NESTED', j, 'indirect descriptor inside an indirect table');
    }
    rec.push(j, lo, hi, dlen, dflags, dnext, true);
    if ((dflags & VIRTQ_DESC_F_NEXT) === 0) return;
    // §2.7.5.3.1: `next` indexes the indirect table.
    if (dnext >= entries)
      rec.fail(
        'DESC_NEXT_OUT_OF_RANGE',
        j,
        `next ${dnext} is outside an indirect table of ${entries}`,
      );
    j = dnext;
  }
}

/**
 * Follows a packed-ring indirect descriptor (VIRTIO 1.2 §2.8.7) into its table and pushes all
 * `len / 16` entries in order. Entries have the packed layout (addr u64, len u32, id u16,
 * flags u16); only VIRTQ_DESC_F_WRITE means anything there, so their id, NEXT and other
 * reserved bits are ignored, except INDIRECT, which the driver MUST NOT set (§2.8.19) and
 * which is rejected as a nested table. The pushed entries carry NEXT / `next` linking each to
 * the following one, so the chain looks the same as any other chain to device code.
 */
export function followPackedIndirect(
  rec: ChainRecord,
  index: number,
  addrLo: number,
  addrHi: number,
  len: number,
  flags: number,
): void {
  const r = enterIndirect(rec, index, addrLo, addrHi, len, flags);
  // §2.8.19: an indirect descriptor MUST NOT sit in a list linked by NEXT (§2.8.5: a list is
  // either direct descriptors or one indirect descriptor).
  if (rec.count > 0) {
    rec.fail('DESC_INDIRECT_WITH_NEXT', index, 'indirect descriptor after a direct one');
  }
  const entries = len / DESCRIPTOR_SIZE;
  const view = r.view;
  const base = joinAddr(addrLo, addrHi) - r.base;
  for (let j = 0; j < entries; j++) {
    const off = base + j * DESCRIPTOR_SIZE;
    const dflags = view.getUint16(off + 14, true);
    // §2.8.19: no flag but WRITE inside an indirect table; a nested table is refused.
    if ((dflags & VIRTQ_DESC_F_INDIRECT) !== 0) {
      rec.fail('DESC_INDIRECT_NESTED', j, 'indirect descriptor inside an indirect table');
    }
    const last = j + 1 === entries;
    rec.push(
      j,
      view.getUint32(off, true),
      view.getUint32(off + 4, true),
      view.getUint32(off + 8, true),
      (dflags & VIRTQ_DESC_F_WRITE) | (last ? 0 : VIRTQ_DESC_F_NEXT),
      last ? 0 : j + 1,
      true,
    );
  }
}

/**
 * The checks both ring formats make on an indirect descriptor before reading its table
 * (§2.7.5.3.1 split, §2.8.7 / §2.8.19 packed). Returns the region holding the whole table and
 * counts the descriptor as this chain's one indirect ring slot.
 */
function enterIndirect(
  rec: ChainRecord,
  index: number,
  addrLo: number,
  addrHi: number,
  len: number,
  flags: number,
): GuestRegion {
  // §2.7.5.3.1 / §2.8.19: the driver MUST NOT set INDIRECT unless VIRTIO_F_INDIRECT_DESC was
  // negotiated.
  if (!rec.allowIndirect) {
    rec.fail(
      'DESC_INDIRECT_NOT_NEGOTIATED',
      index,
      'indirect descriptor without VIRTIO_F_INDIRECT_DESC',
    );
  }
  // §2.7.5.3.1: an indirect table MUST NOT itself contain an indirect descriptor, and a chain
  // has at most one.
  if (rec.sawIndirect)
    rec.fail('DESC_INDIRECT_NESTED', index, 'indirect descriptor inside an indirect table');
  // §2.7.5.3.1 / §2.8.19: the driver MUST NOT set both INDIRECT and NEXT.
  if ((flags & VIRTQ_DESC_F_NEXT) !== 0) {
    rec.fail('DESC_INDIRECT_WITH_NEXT', index, 'indirect descriptor with NEXT set');
  }
  // §2.7.5.3 / §2.8.7: the table is an array of 16-byte descriptors; it cannot be empty.
  if (len === 0 || len % DESCRIPTOR_SIZE !== 0) {
    rec.fail(
      'DESC_INDIRECT_BAD_LENGTH',
      index,
      `indirect table length ${len} is not a positive multiple of 16`,
    );
  }
  const entries = len / DESCRIPTOR_SIZE;
  // §2.7.5.3.1 / §2.8.19: the whole chain is bounded, so is the table.
  if (entries > rec.limit) {
    rec.fail(
      'DESC_INDIRECT_BAD_LENGTH',
      index,
      `indirect table of ${entries} entries exceeds ${rec.limit}`,
    );
  }
  const addr = joinAddr(addrLo, addrHi);
  const r = rec.memory!.findRegion(addr);
  if (r === undefined || len > r.end - addr) {
    rec.fail(
      'DESC_INDIRECT_OUT_OF_MEMORY',
      index,
      `indirect table [0x${addr.toString(16)}, +${len}) is not inside one region`,
    );
  }
  rec.sawIndirect = true;
  rec.ringCount++;
  return r;
}

/**
 * Rebuilds a chain a device held across a snapshot from its saved buffers, checking each
 * again as `push` does at pop: `buffers` are [address, length] pairs, device-readable before
 * `writableFrom` and device-writable from it on; the chain takes `ringSlots` ring slots. The
 * queue checks the head (see `Queue.reviveChain`).
 */
export function reviveChain(
  rec: ChainRecord,
  head: number,
  memory: GuestMemory,
  limit: number,
  ringSlots: number,
  buffers: readonly (readonly [number, number])[],
  writableFrom: number,
): void {
  rec.begin(head, memory, limit, false);
  if (!(Number.isInteger(ringSlots) && ringSlots >= 1 && ringSlots <= limit)) {
    rec.fail('DESC_CHAIN_TOO_LONG', head, `${ringSlots} ring slots, expected 1 to ${limit}`);
  }
  if (buffers.length === 0) rec.fail('DESC_CHAIN_TOO_LONG', head, 'a chain with no buffer');
  const last = buffers.length - 1;
  for (let k = 0; k <= last; k++) {
    const [addr, len] = buffers[k]!;
    if (!(Number.isSafeInteger(addr) && addr >= 0 && len >>> 0 === len)) {
      rec.fail('DESC_BUFFER_OUT_OF_MEMORY', k, `buffer [${addr}, +${len}) is not a guest range`);
    }
    const flags = (k >= writableFrom ? VIRTQ_DESC_F_WRITE : 0) | (k < last ? VIRTQ_DESC_F_NEXT : 0);
    rec.push(k, addr % TWO_32, Math.floor(addr / TWO_32), len, flags, k < last ? k + 1 : 0, false);
  }
  rec.end();
  rec.ringCount = ringSlots;
}
