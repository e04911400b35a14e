/**
 * The network device's transmit side, shared by its transmit queues: a chain's virtio header
 * parsed into a typed request (§5.1.6.2), the frame copied out of guest memory into one scratch
 * buffer and handed to the backend, back-pressure when the backend cannot take it.
 */

import { copyBytes, LARGE_COPY_BYTES, spanOver } from '../../iovec/copy.js';
import { ChainReader } from '../../iovec/reader.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { GuestRegion } from '../../memory/region.js';
import { KeptRanges } from '../../memory/shared-copy.js';
import { DescriptorChain } from '../../queue/chain.js';
import type { Queue } from '../../queue/queue.js';
import type { NetBackend } from './backend.js';
import {
  NET_MAX_FRAME,
  NET_WARM_AHEAD,
  type NetOffloads,
  type NetTxFrame,
  type NetTxUnsupported,
  type NetTxUnsupportedReason,
  parseTxRequest,
  txFrameScratch,
} from './request.js';
import type { NetTurn } from './rx-queue.js';
import type { NetStats } from './state.js';

export class NetTransmitter {
  /** The reason of the last transmit chain dropped as unsupported. */
  lastUnsupported: NetTxUnsupportedReason | null = null;
  /** The backend refused a frame: nothing is sent until it calls resumeTx. */
  blocked = false;
  /** Offloads the driver may ask for (set at activation). */
  host: NetOffloads = { csum: false, tso4: false, tso6: false, ecn: false };
  /** VIRTIO_F_IN_ORDER: a pass's chains are completed with one used entry (set at activation). */
  inOrder = false;

  private resumes = 0;
  private readonly chain = new DescriptorChain();
  private readonly reader = new ChainReader();
  private readonly req = txFrameScratch();
  /** The device's scratch buffer for one transmitted frame. */
  private readonly span = spanOver(new Uint8Array(NET_MAX_FRAME + 8));
  private readonly buf = this.span.bytes;
  /**
   * `buf` from each of its first eight offsets: a large frame is copied to the one whose
   * address has the guest buffer's alignment, since V8 copies out of shared memory a byte at a
   * time when the two addresses are not aligned alike (about 5x slower for 1500 bytes).
   */
  private readonly aligned = Array.from({ length: 8 }, (_, k) => this.buf.subarray(k));
  /**
   * The arrays of guest memory that frames were copied out of or lent from lately, by address:
   * `set` copies a whole array, and `subarray` allocates one (about 30 ns). A driver that
   * recycles its buffers (DPDK's mbufs) sends from the same addresses again and again.
   * Views of one guest memory only: forgotten when a frame comes from another (a new memory
   * table) and on reset, so no memory the device stopped using is kept alive through them.
   */
  private readonly recent = new KeptRanges();

  /**
   * The backend only reads what it is sent ({@link NetBackend.readsFramesOnly}): a large frame
   * in one piece goes to it as a view of guest memory, not copied, and so does a small one
   * whose buffer brought a frame of that length the time before.
   */
  private readonly lends: boolean;

  constructor(
    private readonly backend: NetBackend,
    private readonly stats: NetStats,
  ) {
    this.lends = backend.readsFramesOnly === true;
  }

  /** The backend can take frames again. */
  resume(): void {
    this.blocked = false;
    this.resumes++;
  }

  /** Sends what transmit queue `index` holds, for as long as the turn allows. */
  pass(index: number, q: Queue, link: boolean, turn: NetTurn): void {
    // Chains done this pass, all with used length 0; with IN_ORDER they are completed at the
    // end with one used entry for the last (§2.7.9, §2.8.8), else one by one.
    let done = 0;
    let last = 0;
    const batch = this.inOrder;
    const reader = this.reader;
    while (!this.blocked && turn.withinBudget(index)) {
      q.warm(NET_WARM_AHEAD);
      const c = q.popOrEnableNotification(this.chain);
      if (c === null) break;
      const parsed = parseTxRequest(c, reader, this.host, this.req);
      // parseTxRequest returns `this.req` for a frame to send (an identity test: no load of
      // `kind` from one of two shapes).
      if (parsed !== this.req) {
        // §5.1.6.2: a frame the device cannot send as described is dropped, and counted.
        this.stats.txUnsupported++;
        this.lastUnsupported = (parsed as NetTxUnsupported).reason;
      } else if (!link) {
        this.stats.txLinkDown++;
      } else {
        const req = this.req;
        const frame = this.copyFrame(reader, req, c.memory);
        const resumes = this.resumes;
        if (!this.backend.send(frame, req.length, req.header)) {
          // Back-pressure: the chain goes back to the ring and is sent after resumeTx.
          q.undoPop();
          if (this.resumes !== resumes) continue;
          this.blocked = true;
          break;
        }
        this.stats.txFrames++;
        this.stats.txBytes += req.length;
        turn.spend(req.length);
      }
      done++;
      last = c.head;
      if (!batch) q.addUsed(c.head, 0);
      else if (done % q.size === 0) q.addUsedBatch(q.size, last, 0); // a batch is at most a ring
    }
    if (done === 0) return;
    if (batch && done % q.size !== 0) q.addUsedBatch(done % q.size, last, 0);
    turn.publish(index);
  }

  /** Drops every view of guest memory kept (`recent`); `memory` is the one to keep them for. */
  forgetViews(memory: GuestMemory | null = null): void {
    this.recent.clear(memory);
  }

  /**
   * Copies the frame out of guest memory and returns the buffer it is in; for a backend that
   * only reads, a frame in one piece is returned where it lies instead (a small one from the
   * second time its buffer brings that length).
   */
  private copyFrame(reader: ChainReader, req: NetTxFrame, memory: GuestMemory | null): Uint8Array {
    const len = req.length;
    const r = req.region;
    /** The region the frame lies in, in one piece from `at`. */
    let from: GuestRegion;
    let at: number;
    if (r !== null) {
      from = r;
      at = req.at;
      if (len < LARGE_COPY_BYTES && this.lends) {
        // A small frame: a new array would cost more than the copy, so it is lent only when
        // the same buffer brings a frame of the same length again (a driver that recycles
        // its buffers), from the array made then.
        const frame = this.recent.of(memory, r.bytes, at).repeated(r.bytes, at, len);
        if (frame !== null) return frame;
      }
    } else {
      at = reader.claim(len);
      if (at < 0) {
        // Spread over several buffers.
        reader.readExact(this.buf, 0, len);
        return this.buf;
      }
      from = reader.claimedRegion!;
    }
    if (len < LARGE_COPY_BYTES) {
      copyBytes(this.span, 0, from, at, len);
      return this.buf;
    }
    const frame = this.recent.of(memory, from.bytes, at).get(from.bytes, at, len);
    // A backend that only reads gets the guest's own bytes (NetBackend.readsFramesOnly).
    if (this.lends) return frame;
    // `from.offset` is the array's `byteOffset`, known without a look at the array.
    const dst = this.aligned[(from.offset + at) & 7]!;
    dst.set(frame);
    return dst;
  }
}
