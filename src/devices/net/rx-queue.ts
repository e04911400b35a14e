/**
 * One receive queue of the network device: the frames steered to it that wait for the driver's
 * receive buffers ({@link RxFrames}), the receive chains it popped and holds ({@link
 * HeldRxChains}, mergeable buffers), and the pass that writes waiting frames into buffers
 * (VIRTIO 1.2 §5.1.6.4). Each receive queue has its own: a queue whose driver posts no buffers
 * holds up only the frames steered to it.
 */

import { isVirtqError, SnapshotError, type VirtqError } from '../../errors.js';
import { copyBytes, LARGE_COPY_BYTES } from '../../iovec/copy.js';
import { ChainWriter } from '../../iovec/writer.js';
import { copyArrayAt } from '../../memory/shared-copy.js';
import type { Queue } from '../../queue/queue.js';
import { HeldRxChains } from './held-rx.js';
import {
  NET_WARM_AHEAD,
  type NetHeader,
  type NetOffloads,
  type NetRxBuffer,
  parseRxBuffer,
  VIRTIO_NET_HDR_SIZE,
} from './request.js';
import { RxFrames } from './rx-frames.js';
import type { NetRxQueueRead, NetSavedRxQueue, NetStats } from './state.js';

/** Header offsets up to this index the region's words with 32-bit integer arithmetic. */
const MAX_WORD_OFFSET = 0x7ffffff0;

/** What a queue pass uses of its device: the turn's budget and used-ring publication. */
export interface NetTurn {
  /** One more chain this turn (false: spent, a continuation of `index` is scheduled). */
  withinBudget(index: number): boolean;
  /** Bytes this turn may still move. */
  bytesLeft(): number;
  spend(bytes: number): void;
  continueLater(index: number): void;
  publish(index: number): void;
  /** The driver broke a rule: the device needs a reset (DEVICE_NEEDS_RESET). */
  fail(error: VirtqError): void;
}

export class NetRxQueue {
  readonly frames: RxFrames;
  readonly held = new HeldRxChains();
  /** A pass runs (a nested notification asks for another). */
  busy = false;
  /** Inside {@link pass}'s loop: a frame offered now waits behind the one being delivered. */
  private passing = false;
  again = false;
  /** With VIRTIO_NET_F_MRG_RXBUF (set at activation). */
  mergeable = false;
  /** With VIRTIO_F_IN_ORDER: buffers are used in the order they were made available. */
  inOrder = false;

  private readonly info: NetRxBuffer = { kind: 'buffer', capacity: 0 };
  private readonly writer = new ChainWriter();
  private readonly stats: NetStats;
  /** Used entries added and not yet published. */
  private used = false;

  constructor(
    /** The queue's index (receiveqN is queue 2(N-1), §5.1.2). */
    readonly index: number,
    maxFrames: number,
    maxBytes: number,
    stats: NetStats,
  ) {
    this.frames = new RxFrames(maxFrames, maxBytes, stats);
    this.stats = stats;
  }

  /** The frames waiting and the chains held, for a snapshot. */
  save(): NetSavedRxQueue {
    return { ...this.frames.save(), heldRx: this.held.save() };
  }

  /**
   * Checks a saved receive queue against this one and its ring `q` (null: no driver session;
   * undefined: no such queue now), and returns the commit that replaces what it holds.
   * Throws {@link SnapshotError} at `at`; changes nothing.
   */
  prepareRestore(saved: NetRxQueueRead, q: Queue | null | undefined, at: string): () => void {
    const commitFrames = this.frames.prepareRestore(saved.pending, saved.segmentsDone, at);
    const commitHeld = this.held.prepareRestore(saved.heldRx, q === null ? undefined : q, at);
    // A packed ring tracks the buffers in flight: they must be exactly the held chains.
    if (q?.isActive && q.inFlight !== undefined && q.inFlight !== saved.heldRx.length) {
      throw new SnapshotError(
        `${at}.heldRx`,
        `the receive queue has ${q.inFlight} buffers in flight`,
      );
    }
    return () => {
      commitFrames();
      commitHeld();
    };
  }

  /** Used entries added (unusable buffers given back, frames written) and not yet published. */
  get hasUnpublished(): boolean {
    return this.used;
  }

  /**
   * Gives back every held chain, used with length 0 (the driver drops a buffer shorter than the
   * header), oldest first, for the caller to publish; returns how many.
   */
  giveBackHeld(q: Queue): number {
    const held = this.held;
    const n = held.count;
    for (let j = 0; j < n; j++) q.addUsed(held.at(j).head, 0);
    held.release(n);
    return n;
  }

  /** Settings of a new driver session over receive queue `q` (negotiated features). */
  configure(
    mergeable: boolean,
    inOrder: boolean,
    guestOffloads: NetOffloads,
    mtu: number,
    q: Queue | undefined,
  ): void {
    this.mergeable = mergeable;
    this.inOrder = inOrder;
    this.frames.configure(guestOffloads, mtu);
    this.held.reset(q?.size ?? 1);
  }

  /** Forgets the chains of a driver session that ends. */
  resetChains(): void {
    this.held.reset(this.held.cap);
    this.used = false;
  }

  /**
   * Delivers waiting frames into the driver's buffers for as long as the turn allows; returns
   * true when a frame left the pending ring (room for the backend).
   */
  pass(q: Queue, turn: NetTurn): boolean {
    const frames = this.frames;
    frames.freed = false;
    this.passing = true;
    try {
      // prepare first: a turn that finds nothing pending schedules no continuation. Chains
      // count against the turn as holdNext takes them; bytes are checked between frames.
      while (frames.prepare()) {
        const done = this.step(q, turn);
        if (done < 0) {
          turn.continueLater(this.index);
          break;
        }
        if (done === 0) break; // wait for the driver's next receive buffers
        frames.advance();
      }
    } finally {
      this.passing = false;
    }
    if (this.used) {
      this.used = false;
      turn.publish(this.index);
    }
    return frames.freed;
  }

  /**
   * Delivers a frame a backend offers straight from its buffer, with no stop in the pending
   * ring; the used entries are published by the next {@link pass}. Returns 1 when the frame was
   * taken (delivered, or dropped as never fitting); 0 when it should wait with the backend
   * (frames wait before it, or the driver has no buffer for it); -1 when it goes through the
   * pending ring (it needs adapting ({@link RxFrames.adopt}), or the turn is spent).
   */
  deliverNow(
    q: Queue,
    frame: Uint8Array,
    length: number,
    header: NetHeader | null,
    turn: NetTurn,
  ): number {
    const frames = this.frames;
    if (this.passing || !frames.adopt(frame, length, header)) return -1;
    if (frames.pending.length !== 0) return 0;
    try {
      return this.step(q, turn);
    } catch (e) {
      // A broken receive chain fails the device, not the backend offering the frame, which
      // then waits in the pending ring.
      if (!isVirtqError(e)) throw e;
      turn.fail(e);
      return -1;
    }
  }

  /**
   * Delivers the frame {@link RxFrames} holds ready: 1 when it was delivered (or dropped as
   * never fitting), 0 when it waits for the driver's buffers, -1 when the turn's bytes are
   * spent.
   */
  private step(q: Queue, turn: NetTurn): number {
    const frames = this.frames;
    // The receive buffers' descriptors, and their first lines for writing, ahead of the pops.
    q.warm(NET_WARM_AHEAD, true);
    if (turn.bytesLeft() <= 0) return -1;
    const k = this.gather(q, VIRTIO_NET_HDR_SIZE + frames.len, turn);
    if (k === 0) return 0;
    if (k < 0) {
      this.stats.rxTooBig++;
    } else {
      this.writeOut(q, k);
      this.stats.rxFrames++;
      this.stats.rxBytes += frames.len;
      turn.spend(frames.len);
    }
    return 1;
  }

  /**
   * Pops one more receive chain into the held ring; false when the driver has none, or when
   * this turn may take no more chains (the rest continues in a later turn).
   */
  private holdNext(q: Queue, turn: NetTurn): boolean {
    for (;;) {
      // Every chain taken counts against the turn: with MRG_RXBUF one frame may take up to a
      // ring's worth of small buffers, and a guest may keep posting unusable ones.
      if (!turn.withinBudget(this.index)) return false;
      const c = q.popOrEnableNotification(this.held.at(this.held.count));
      if (c === null) return false;
      // parseRxBuffer returns `info` for a usable buffer (an identity test: no load of `kind`
      // from one of two shapes).
      if (parseRxBuffer(c, this.info) !== this.info) {
        this.stats.rxBadBuffers++;
        // §2.7.9/§2.8.8 (IN_ORDER): the chains held before this one are used first. They go
        // back unused (length 0: the driver drops a buffer shorter than the header).
        if (this.inOrder && this.held.count > 0) this.returnHeld(q);
        q.addUsed(c.head, 0);
        this.used = true;
        continue;
      }
      this.held.keepNext(c);
      return true;
    }
  }

  /** Gives back every held chain unused, oldest first (IN_ORDER). */
  private returnHeld(q: Queue): void {
    this.stats.rxInOrderReturned += this.giveBackHeld(q);
  }

  /**
   * Makes sure the held chains can take `need` bytes: returns how many chains the frame uses,
   * 0 to wait for more buffers, or -1 when it can never fit (drop it).
   */
  private gather(q: Queue, need: number, turn: NetTurn): number {
    const held = this.held;
    if (!this.mergeable) {
      // §5.1.6.3.2: without MRG_RXBUF the device MUST use a single descriptor chain.
      if (held.count === 0 && !this.holdNext(q, turn)) return 0;
      return held.at(0).writableLength >= need ? 1 : -1;
    }
    while (held.bytes < need) {
      // Every slot of the ring is held: the driver cannot add a buffer, the frame never fits.
      if (held.slots >= q.size || held.count >= held.cap) return -1;
      if (!this.holdNext(q, turn)) return 0;
    }
    if (held.count === 1) return 1;
    let k = 0;
    for (let sum = 0; sum < need; k++) sum += held.at(k).writableLength;
    return k;
  }

  /**
   * Writes the frame to deliver into the first `k` held chains: the header (num_buffers = k)
   * and the frame, every chain but the last filled completely (§5.1.6.4.1), and marks them used.
   */
  private writeOut(q: Queue, k: number): void {
    const w = this.writer;
    const frames = this.frames;
    const h = frames.header;
    let src = frames.off;
    let left = frames.len;
    if (k === 1) {
      // The usual case: header and frame in the chain's first writable buffer, in one region,
      // written in place (no cursor: the chain's own arrays say where).
      const c = this.held.at(0);
      const d = c.writableStart;
      const r = c.regionAt(d);
      const need = VIRTIO_NET_HDR_SIZE + left;
      if (r !== null && c.lens[d]! >= need) {
        const addr = c.addrs[d]!;
        const v = r.view;
        const at = addr - r.base;
        r.markDirty(addr, need);
        // The 12-byte header as three little-endian words: flags, gso_type, hdr_len;
        // gso_size, csum_start; csum_offset, num_buffers = 1.
        const w0 = (h.flags & 0xff) | ((h.gsoType & 0xff) << 8) | (h.hdrLen << 16);
        const w1 = h.gsoSize | (h.csumStart << 16);
        const w2 = h.csumOffset | (1 << 16);
        if ((at & 3) === 0 && at <= MAX_WORD_OFFSET) {
          // Aligned (a driver's buffers are): the region's words, faster than the DataView.
          const words = r.words;
          const k = at >> 2;
          words[k] = w0;
          words[k + 1] = w1;
          words[k + 2] = w2;
        } else {
          v.setInt32(at, w0, true);
          v.setInt32(at + 4, w1, true);
          v.setInt32(at + 8, w2, true);
        }
        const to = at + VIRTIO_NET_HDR_SIZE;
        if (left < LARGE_COPY_BYTES) {
          copyBytes(r, to, frames.span, src, left);
        } else {
          copyArrayAt(r, to, frames.frameEnd());
        }
        q.addUsed(c.head, need);
        this.held.release(1);
        this.used = true;
        return;
      }
    }
    for (let j = 0; j < k; j++) {
      const c = this.held.at(j);
      w.reset(c);
      if (j === 0) {
        w.writeU8(h.flags);
        w.writeU8(h.gsoType);
        w.writeU16(h.hdrLen);
        w.writeU16(h.gsoSize);
        w.writeU16(h.csumStart);
        w.writeU16(h.csumOffset);
        // §5.1.6.4.1: num_buffers is 1 without MRG_RXBUF, else the chains the frame uses.
        w.writeU16(k);
      }
      const n = Math.min(left, w.remaining);
      w.write(frames.span.bytes, src, n);
      src += n;
      left -= n;
      q.addUsed(c.head, w.bytesWritten);
    }
    w.reset();
    this.held.release(k);
    this.used = true;
  }
}
