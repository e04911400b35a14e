/**
 * The receive side's frames: those waiting inside the device for the driver's receive buffers
 * (a bounded {@link FrameRing}), and the next one to deliver, adapted to what the driver
 * negotiated (VIRTIO 1.2 §5.1.6.4.1): a partial checksum completed and a segmentation offload
 * frame cut into TCP segments in software when the driver cannot take them, frames over the
 * negotiated MTU dropped.
 */

import { SnapshotError } from '../../errors.js';
import { type ByteSpan, SourceCopier, spanOver } from '../../iovec/copy.js';
import { ArrayEnd, type CopyEnd, KeptRange } from '../../memory/shared-copy.js';
import { FrameRing } from './frame-ring.js';
import { buildTcpSegment, completeChecksum, parseTcpGso, tcpGsoScratch } from './offload.js';
import {
  ETH_HLEN,
  NET_MAX_FRAME,
  type NetHeader,
  type NetOffloads,
  plainHeader,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
} from './request.js';
import { type NetState, type NetStats, toBase64 } from './state.js';

const NO_OFFLOADS: NetOffloads = { csum: false, tso4: false, tso6: false, ecn: false };
const ETHERTYPE_VLAN = 0x8100;

/** The saved frames, already validated (see `readNetState`). */
type SavedFrames = Pick<NetState, 'pending' | 'segmentsDone'>;
/** A saved frame as `readNetState` returns it: bytes decoded. */
interface ReadFrame {
  data: Uint8Array;
  header: readonly number[];
}

export class RxFrames {
  /** Frames waiting for receive buffers. */
  readonly pending: FrameRing;
  /** The frame to deliver, once {@link prepare} returned true: its header and bytes. */
  readonly header = plainHeader();
  /** Where the frame lies: `span.bytes[off, off + len)`; `span.bytes` is all of its buffer. */
  span: ByteSpan;
  off = 0;
  len = 0;
  /** A frame left the pending ring since the flag was last cleared (room for the backend). */
  freed = false;

  private readonly stats: NetStats;
  private guest: NetOffloads = NO_OFFLOADS;
  private mtuLimit = 0;
  private readonly frameHdr = plainHeader();
  // Software segmentation of the oldest pending frame.
  private readonly seg = tcpGsoScratch();
  private segActive = false;
  private segIndex = 0;
  /** Scratch for one software segment. */
  private readonly segSpan = spanOver(new Uint8Array(NET_MAX_FRAME));
  /** Views over the buffer of the frame {@link adopt} took last. */
  private readonly source = new SourceCopier();

  constructor(maxFrames: number, maxBytes: number, stats: NetStats) {
    this.pending = new FrameRing(maxFrames, maxBytes);
    this.span = this.pending.span;
    this.stats = stats;
  }

  /** What the receiving driver negotiated: its offloads and the MTU (0: none). */
  configure(guest: NetOffloads, mtuLimit: number): void {
    this.guest = guest;
    this.mtuLimit = mtuLimit;
  }

  /**
   * Sets the frame to deliver to the next pending frame or software segment; drops the frames
   * that cannot be delivered. False when nothing is pending.
   */
  prepare(): boolean {
    const ring = this.pending;
    const out = this.header;
    while (ring.length > 0) {
      const off = ring.offsetAt(0);
      const len = ring.lengthAt(0);
      if (this.segActive) {
        const n = buildTcpSegment(ring.data, off, this.seg, this.segIndex, this.segSpan.bytes);
        if (this.overMtu(this.segSpan.bytes, 0, n)) {
          this.stats.rxOverMtu++;
          this.advance();
          continue;
        }
        setPlain(out);
        this.set(this.segSpan, 0, n);
        return true;
      }
      const h = ring.headerAt(0, this.frameHdr);
      if (h.gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
        if (this.guestTakesGso(h.gsoType) && h.flags !== 0) {
          copyHeader(h, out);
          this.set(ring.span, off, len);
          return true;
        }
        // §5.1.6.4.1: no GSO type the driver did not negotiate: segment in software.
        if (!parseTcpGso(ring.data, off, len, h, this.seg)) {
          this.drop('rxMalformed');
          continue;
        }
        this.stats.rxSoftwareSegmented++;
        this.segActive = true;
        this.segIndex = 0;
        continue;
      }
      if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 && !this.guest.csum) {
        // §5.1.6.4.1: without GUEST_CSUM, flags are 0 and the packet fully checksummed.
        if (!completeChecksum(ring.data, off, len, h.csumStart, h.csumOffset)) {
          this.drop('rxMalformed');
          continue;
        }
        ring.setOldestFlags(0);
        h.flags = 0;
        this.stats.rxSoftwareChecksums++;
      }
      if (this.overMtu(ring.data, off, len)) {
        this.drop('rxOverMtu');
        continue;
      }
      if (h.flags !== 0 && h.csumStart + h.csumOffset + 2 > len) {
        this.drop('rxMalformed');
        continue;
      }
      copyHeader(h, out);
      out.gsoType = VIRTIO_NET_HDR_GSO_NONE;
      this.set(ring.span, off, len);
      return true;
    }
    return false;
  }

  /**
   * Makes `frame[0, length)` the frame to deliver, where it lies (a backend's buffer), when it
   * needs nothing {@link prepare} would do to it: no offload in its header, within the MTU.
   * False otherwise: it goes through the pending ring.
   */
  adopt(frame: Uint8Array, length: number, header: NetHeader | null): boolean {
    if (header !== null && (header.flags !== 0 || header.gsoType !== VIRTIO_NET_HDR_GSO_NONE)) {
      return false;
    }
    if (this.mtuLimit !== 0 && this.overMtu(frame, 0, length)) return false;
    const source = this.source;
    source.use(frame);
    setPlain(this.header);
    this.set(source.span, source.offset, length);
    return true;
  }

  /** Done with the frame to deliver (delivered or dropped): on to the next segment or frame. */
  advance(): void {
    if (this.segActive) {
      this.segIndex++;
      if (this.segIndex < this.seg.segments) return;
      this.segActive = false;
      this.segIndex = 0;
    }
    this.pending.shift();
    this.freed = true;
  }

  /**
   * Hands every waiting frame to `dest` (another receive queue's frames), oldest first, as far
   * as they fit there; returns how many frames were dropped instead. A frame being segmented in
   * software, some of its segments already delivered here, is dropped with its other segments.
   */
  moveInto(dest: RxFrames): number {
    const ring = this.pending;
    let dropped = 0;
    if (this.segActive) {
      this.segActive = false;
      this.segIndex = 0;
      ring.shift();
      dropped++;
    }
    const hdr = this.frameHdr;
    while (ring.length > 0) {
      const off = ring.offsetAt(0);
      const len = ring.lengthAt(0);
      ring.headerAt(0, hdr);
      if (!dest.pending.push(ring.data.subarray(off, off + len), len, hdr)) dropped++;
      ring.shift();
      this.freed = true;
    }
    return dropped;
  }

  /** The frames and segmentation progress, for a snapshot. */
  save(): SavedFrames {
    const ring = this.pending;
    const hdr = plainHeader();
    const pending = [];
    for (let i = 0; i < ring.length; i++) {
      ring.headerAt(i, hdr);
      pending.push({
        data: toBase64(ring.data, ring.offsetAt(i), ring.lengthAt(i)),
        header: [
          hdr.flags,
          hdr.gsoType,
          hdr.hdrLen,
          hdr.gsoSize,
          hdr.csumStart,
          hdr.csumOffset,
        ] as [number, number, number, number, number, number],
      });
    }
    return { pending, segmentsDone: this.segActive ? this.segIndex : 0 };
  }

  /**
   * Checks saved frames against this device (they fit its ring; segmentation progress matches
   * the oldest frame) and returns the commit that replaces what it holds; changes nothing.
   */
  prepareRestore(
    frames: readonly ReadFrame[],
    segmentsDone: number,
    at = 'device.net',
  ): () => void {
    // A fresh ring places frames one after another from offset 0.
    let total = 0;
    frames.forEach((f, i) => {
      total += f.data.length;
      if (total > this.pending.capacity) {
        throw new SnapshotError(`${at}.pending.${i}`, "does not fit the device's pending ring");
      }
    });
    const hdr = plainHeader();
    if (segmentsDone > 0) {
      const f = frames[0]!;
      setHeader(hdr, f.header);
      const seg = tcpGsoScratch();
      if (!parseTcpGso(f.data, 0, f.data.length, hdr, seg) || segmentsDone >= seg.segments) {
        throw new SnapshotError(`${at}.segmentsDone`, 'does not match the oldest pending frame');
      }
    }
    return () => {
      const ring = this.pending;
      ring.clear();
      for (const f of frames) {
        setHeader(hdr, f.header);
        ring.push(f.data, f.data.length, hdr);
      }
      this.segActive = false;
      this.segIndex = 0;
      if (segmentsDone > 0) {
        ring.headerAt(0, hdr);
        parseTcpGso(ring.data, ring.offsetAt(0), ring.lengthAt(0), hdr, this.seg);
        this.segActive = true;
        this.segIndex = segmentsDone;
      }
    };
  }

  /** The array of the last {@link frameEnd}. */
  private readonly frameRange = new KeptRange();
  private readonly frameCopyEnd = new ArrayEnd();

  /**
   * The frame to deliver, `span.bytes[off, off + len)`, as its own array and the source end of
   * a copy (`copyArrayAt`). The same range gives the same array, so a backend that offers
   * every frame from one place (`generate`, a fixed-size frame buffer) gets it made once.
   */
  frameEnd(): CopyEnd {
    const bytes = this.frameRange.get(this.span.bytes, this.off, this.len);
    // Every span here starts at byte 0 of its buffer, so the frame starts at byte `off` of it.
    return this.frameCopyEnd.of(bytes, this.off, this.span.shared);
  }

  private set(span: ByteSpan, off: number, len: number): void {
    this.span = span;
    this.off = off;
    this.len = len;
  }

  /** Drops the oldest pending frame, counted under `reason`. */
  private drop(reason: 'rxMalformed' | 'rxOverMtu'): void {
    this.stats[reason]++;
    this.pending.shift();
    this.freed = true;
  }

  /** True when the receiving driver negotiated what a frame of `gsoType` needs (§5.1.6.4.1). */
  private guestTakesGso(gsoType: number): boolean {
    const gso = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    const g = this.guest;
    const ok =
      (gso === VIRTIO_NET_HDR_GSO_TCPV4 && g.tso4) || (gso === VIRTIO_NET_HDR_GSO_TCPV6 && g.tso6);
    return ok && (gso === gsoType || g.ecn);
  }

  /** True when a frame without GSO is longer than the negotiated MTU allows (§5.1.4.1). */
  private overMtu(buf: Uint8Array, off: number, len: number): boolean {
    if (this.mtuLimit === 0) return false;
    const tag = ((buf[off + 12]! << 8) | buf[off + 13]!) === ETHERTYPE_VLAN ? 4 : 0;
    return len > this.mtuLimit + ETH_HLEN + tag;
  }
}

function setHeader(h: NetHeader, f: readonly number[]): void {
  h.flags = f[0]!;
  h.gsoType = f[1]!;
  h.hdrLen = f[2]!;
  h.gsoSize = f[3]!;
  h.csumStart = f[4]!;
  h.csumOffset = f[5]!;
}

function setPlain(h: NetHeader): void {
  h.flags = 0;
  h.gsoType = 0;
  h.hdrLen = 0;
  h.gsoSize = 0;
  h.csumStart = 0;
  h.csumOffset = 0;
}

function copyHeader(from: NetHeader, to: NetHeader): void {
  to.flags = from.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM;
  to.gsoType = from.gsoType;
  to.hdrLen = from.hdrLen;
  to.gsoSize = from.gsoSize;
  to.csumStart = from.flags !== 0 ? from.csumStart : 0;
  to.csumOffset = from.flags !== 0 ? from.csumOffset : 0;
}
