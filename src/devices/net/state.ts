import { SnapshotError } from '../../errors.js';
import { StateReader } from '../../queue/state.js';
import { readSavedChain, type SavedChain } from '../saved-chain.js';
import { ETH_HLEN, NET_MAX_FRAME } from './request.js';

/** Counters of a network device (JSON-safe). */
export interface NetStats {
  /** Frames handed to the backend, and their bytes (virtio header excluded). */
  txFrames: number;
  txBytes: number;
  /** Transmit chains dropped because their header or frame was unsupported (§5.1.6.2). */
  txUnsupported: number;
  /** Transmit chains dropped because the link was down. */
  txLinkDown: number;
  /** Frames (or software segments) written to receive buffers, and their bytes. */
  rxFrames: number;
  rxBytes: number;
  /** Frames dropped: larger than the receive buffers can ever hold. */
  rxTooBig: number;
  /** Frames dropped: larger than the negotiated MTU allows (§5.1.4.1). */
  rxOverMtu: number;
  /** Frames dropped: malformed (bad length, offload fields that do not fit the frame). */
  rxMalformed: number;
  /** Frames dropped because the link was down. */
  rxLinkDown: number;
  /** Receive chains returned unused because they were unsupported (too small, readable). */
  rxBadBuffers: number;
  /** Frames whose checksum the device completed, and frames it segmented, in software. */
  rxSoftwareChecksums: number;
  rxSoftwareSegmented: number;
  /**
   * Frames dropped because they waited for a receive queue the driver stopped using (fewer
   * pairs set with VQ_PAIRS_SET) and the first receive queue had no room for them.
   */
  rxQueueDropped: number;
  /**
   * Receive chains returned unused, with length 0, to keep VIRTIO_F_IN_ORDER: chains held for a
   * mergeable frame when the driver made an unsupported one available after them.
   */
  rxInOrderReturned: number;
}

export function emptyNetStats(): NetStats {
  return {
    txFrames: 0,
    txBytes: 0,
    txUnsupported: 0,
    txLinkDown: 0,
    rxFrames: 0,
    rxBytes: 0,
    rxTooBig: 0,
    rxOverMtu: 0,
    rxMalformed: 0,
    rxLinkDown: 0,
    rxBadBuffers: 0,
    rxSoftwareChecksums: 0,
    rxSoftwareSegmented: 0,
    rxQueueDropped: 0,
    rxInOrderReturned: 0,
  };
}

/** A frame waiting in the device for receive buffers. */
export interface NetSavedFrame {
  /** Frame bytes, base64. */
  data: string;
  /** flags, gsoType, hdrLen, gsoSize, csumStart, csumOffset. */
  header: [number, number, number, number, number, number];
}

/**
 * A receive chain the device popped and holds, not yet used (mergeable buffers); its buffers
 * are all device-writable.
 */
export type NetSavedChain = SavedChain;

/**
 * Device-specific saved state of a network device. Frames queued inside the device (received
 * from the backend, not yet written to guest buffers) are part of it, in order, so a restored
 * device delivers each of them exactly once; so are the receive chains it had popped but not
 * yet used, and the progress of a frame it was segmenting in software.
 */
export interface NetState extends NetSavedRxQueue {
  mac: string;
  linkUp: boolean;
  stats: NetStats;
  /** Queue pairs the driver set with VQ_PAIRS_SET (absent: 1). */
  activePairs?: number;
  /**
   * The receive queues after the first (multiqueue devices: one per further pair, in order);
   * the first receive queue's state is {@link pending}, {@link segmentsDone} and {@link heldRx}.
   */
  rxQueues?: NetSavedRxQueue[];
}

/** One receive queue's saved state. */
export interface NetSavedRxQueue {
  pending: NetSavedFrame[];
  /** Segments of the oldest pending frame already delivered (software segmentation), or 0. */
  segmentsDone: number;
  heldRx: NetSavedChain[];
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = new Int16Array(128).fill(-1);
for (let i = 0; i < 64; i++) B64_INDEX[B64.charCodeAt(i)] = i;

/** Standard base64 (with padding) of `bytes[off, off + len)`. */
export function toBase64(bytes: Uint8Array, off = 0, len = bytes.length - off): string {
  const parts: string[] = [];
  let chunk = '';
  const end = off + len;
  for (let i = off; i < end; i += 3) {
    const b0 = bytes[i]!;
    const b1 = i + 1 < end ? bytes[i + 1]! : 0;
    const b2 = i + 2 < end ? bytes[i + 2]! : 0;
    chunk +=
      B64[b0 >> 2]! +
      B64[((b0 & 3) << 4) | (b1 >> 4)]! +
      (i + 1 < end ? B64[((b1 & 15) << 2) | (b2 >> 6)]! : '=') +
      (i + 2 < end ? B64[b2 & 63]! : '=');
    if (chunk.length >= 8192) {
      parts.push(chunk);
      chunk = '';
    }
  }
  parts.push(chunk);
  return parts.join('');
}

/** Decodes standard padded base64; null when `text` is not that. */
export function fromBase64(text: string): Uint8Array | null {
  if (text.length % 4 !== 0) return null;
  const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < text.length; i += 4) {
    const last = i + 4 === text.length;
    const c0 = B64_INDEX[text.charCodeAt(i)] ?? -1;
    const c1 = B64_INDEX[text.charCodeAt(i + 1)] ?? -1;
    const p2 = last && pad === 2;
    const p3 = last && pad >= 1;
    const c2 = p2 ? 0 : (B64_INDEX[text.charCodeAt(i + 2)] ?? -1);
    const c3 = p3 ? 0 : (B64_INDEX[text.charCodeAt(i + 3)] ?? -1);
    if (c0 < 0 || c1 < 0 || c2 < 0 || c3 < 0) return null;
    out[o++] = (c0 << 2) | (c1 >> 4);
    if (!p2) out[o++] = ((c1 & 15) << 4) | (c2 >> 2);
    if (!p3) out[o++] = ((c2 & 3) << 6) | c3;
  }
  return out;
}

/** Limits a saved state is checked against (the restoring device's). */
export interface NetStateLimits {
  maxPending: number;
  /** Per receive queue: most chains held (its size, 0 when inactive). */
  maxHeld: readonly number[];
}

/** One receive queue's saved state, read back and validated, frames decoded. */
export interface NetRxQueueRead {
  pending: { data: Uint8Array; header: number[] }[];
  segmentsDone: number;
  heldRx: NetSavedChain[];
}

/** A {@link NetState} read back and validated, frames decoded. */
export interface NetStateRead {
  mac: Uint8Array;
  linkUp: boolean;
  stats: NetStats;
  activePairs: number;
  /** Every receive queue, the first one first. */
  rx: NetRxQueueRead[];
}

export function readNetState(value: unknown, limits: NetStateLimits): NetStateRead {
  const r = StateReader.root(value, 'device.net');
  const v = value as Record<string, unknown>;
  const macText = v.mac;
  if (typeof macText !== 'string' || !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(macText)) {
    throw new SnapshotError('device.net.mac', 'expected "xx:xx:xx:xx:xx:xx"');
  }
  const mac = Uint8Array.from(macText.split(':'), (p) => Number.parseInt(p, 16));
  const linkUp = r.bool('linkUp');
  const sr = StateReader.root(v.stats, 'device.net.stats');
  const stats = emptyNetStats();
  const savedStats = (typeof v.stats === 'object' && v.stats !== null ? v.stats : {}) as Record<
    string,
    unknown
  >;
  for (const k of Object.keys(stats) as (keyof NetStats)[]) {
    // A counter added after the state was written reads as 0.
    if ((k === 'rxQueueDropped' || k === 'rxInOrderReturned') && savedStats[k] === undefined) {
      continue;
    }
    stats[k] = sr.int(k, 0, Number.MAX_SAFE_INTEGER);
  }
  const pairs = limits.maxHeld.length;
  const activePairs = v.activePairs === undefined ? 1 : r.int('activePairs', 1, pairs);
  const rx = [readRxQueue(value, 'device.net', limits.maxPending, limits.maxHeld[0]!)];
  const more = v.rxQueues === undefined ? [] : r.array('rxQueues', pairs - 1);
  if (more.length !== pairs - 1)
    throw new SnapshotError('device.net.rxQueues', `expected ${pairs - 1} receive queues`);
  more.forEach((q, i) => {
    rx.push(readRxQueue(q, `device.net.rxQueues.${i}`, limits.maxPending, limits.maxHeld[i + 1]!));
  });
  return { mac, linkUp, stats, activePairs, rx };
}

function readRxQueue(
  value: unknown,
  at: string,
  maxPending: number,
  maxHeld: number,
): NetRxQueueRead {
  const r = StateReader.root(value, at);
  const rawPending = r.array('pending', maxPending);
  const pending = rawPending.map((f, i) => {
    const path = `${at}.pending.${i}`;
    const fr = StateReader.root(f, path);
    const data = (f as { data?: unknown }).data;
    const bytes = typeof data === 'string' ? fromBase64(data) : null;
    if (bytes === null) throw new SnapshotError(`${path}.data`, 'expected base64');
    if (bytes.length < ETH_HLEN || bytes.length > NET_MAX_FRAME) {
      throw new SnapshotError(`${path}.data`, `a frame of ${bytes.length} bytes`);
    }
    const header = fr.array('header', 6);
    if (header.length !== 6) throw new SnapshotError(`${path}.header`, 'expected 6 fields');
    const hr = StateReader.root({ ...header }, `${path}.header`);
    const fields = [0, 1, 2, 3, 4, 5].map((k) => hr.int(String(k), 0, k < 2 ? 0xff : 0xffff));
    return { data: bytes, header: fields };
  });
  const segmentsDone = r.int('segmentsDone', 0, NET_MAX_FRAME);
  if (segmentsDone > 0 && pending.length === 0) {
    throw new SnapshotError(`${at}.segmentsDone`, 'segmentation progress without a pending frame');
  }
  const rawHeld = r.array('heldRx', maxHeld);
  const seen = new Set<number>();
  const heldRx = rawHeld.map((c, i) => {
    const path = `${at}.heldRx.${i}`;
    const held = readSavedChain(c, path, maxHeld);
    if (seen.has(held.head))
      throw new SnapshotError(`${path}.head`, `head ${held.head} appears twice`);
    seen.add(held.head);
    return held;
  });
  return { pending, segmentsDone, heldRx };
}
