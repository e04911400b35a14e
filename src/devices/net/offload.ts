import {
  ETH_HLEN,
  type NetHeader,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
} from './request.js';

/**
 * Software versions of the offloads a receiving driver did not negotiate: completing a
 * partial checksum (NEEDS_CSUM, §5.1.6.2) and cutting a TCP segmentation offload frame into
 * MSS-sized segments (GSO_TCPV4 / GSO_TCPV6). Both work on frames in device memory, never on
 * guest memory, and check every offset against the frame before using it: the frame came from
 * another guest.
 */

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const IPPROTO_TCP = 6;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

/** Big-endian 16-bit ones' complement sum of `buf[start, end)` added to `sum` (unfolded). */
export function onesSum(buf: Uint8Array, start: number, end: number, sum: number): number {
  let s = sum;
  let i = start;
  for (; i + 1 < end; i += 2) s += (buf[i]! << 8) | buf[i + 1]!;
  if (i < end) s += buf[i]! << 8;
  return s;
}

/** Folds a ones' complement sum to 16 bits. */
export function foldSum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

function readU16(buf: Uint8Array, at: number): number {
  return (buf[at]! << 8) | buf[at + 1]!;
}

function writeU16(buf: Uint8Array, at: number, v: number): void {
  buf[at] = (v >>> 8) & 0xff;
  buf[at + 1] = v & 0xff;
}

/**
 * Completes a partial checksum in place (§5.1.6.2, NEEDS_CSUM): the ones' complement sum from
 * `csumStart` to the end of the frame, whose checksum field holds the pseudo-header sum, is
 * stored complemented at `csumStart + csumOffset`. A result of 0 is stored as 0xffff (the same
 * value in ones' complement, and what UDP requires). Returns false, touching nothing, when the
 * field lies outside the frame.
 */
export function completeChecksum(
  buf: Uint8Array,
  off: number,
  len: number,
  csumStart: number,
  csumOffset: number,
): boolean {
  const field = csumStart + csumOffset;
  if (field + 2 > len) return false;
  const sum = foldSum(onesSum(buf, off + csumStart, off + len, 0));
  const c = ~sum & 0xffff;
  writeU16(buf, off + field, c === 0 ? 0xffff : c);
  return true;
}

/** What {@link parseTcpGso} learned about a TSO frame, for {@link buildTcpSegment}. */
export interface TcpGso {
  /** Offset of the IP header. */
  l3: number;
  ipv6: boolean;
  /** Offset of the TCP header. */
  l4: number;
  /** Offset of the first payload byte (end of the headers copied into each segment). */
  payload: number;
  payloadLength: number;
  mss: number;
  /** First segment's IPv4 identification, TCP sequence number and TCP flags. */
  ipId: number;
  seq: number;
  /** Segments the frame makes. */
  segments: number;
}

/** A fresh {@link TcpGso} to fill in. */
export function tcpGsoScratch(): TcpGso {
  return {
    l3: 0,
    ipv6: false,
    l4: 0,
    payload: 0,
    payloadLength: 0,
    mss: 0,
    ipId: 0,
    seq: 0,
    segments: 0,
  };
}

/**
 * Parses the headers of a TCP segmentation offload frame at `buf[off, off + len)` described
 * by `h` (GSO_TCPV4 or GSO_TCPV6, ECN bit allowed) into `out`. The headers are read from the
 * frame itself: `hdr_len` is only a hint and `csum_start` is trusted only to skip IPv6
 * extension headers (§5.1.6.2.2). Returns false for anything that is not a well-formed
 * Ethernet (optionally 802.1Q-tagged) + IPv4/IPv6 + TCP frame with an MSS.
 */
export function parseTcpGso(
  buf: Uint8Array,
  off: number,
  len: number,
  h: NetHeader,
  out: TcpGso,
): boolean {
  const gso = h.gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (h.gsoSize === 0 || len < ETH_HLEN) return false;
  let l3 = ETH_HLEN;
  let ethertype = readU16(buf, off + 12);
  if (ethertype === ETHERTYPE_VLAN) {
    if (len < ETH_HLEN + 4) return false;
    ethertype = readU16(buf, off + 16);
    l3 += 4;
  }
  let l4: number;
  if (gso === VIRTIO_NET_HDR_GSO_TCPV4) {
    if (ethertype !== ETHERTYPE_IPV4 || l3 + 20 > len) return false;
    const vihl = buf[off + l3]!;
    const ihl = (vihl & 0x0f) * 4;
    if (vihl >> 4 !== 4 || ihl < 20 || l3 + ihl > len) return false;
    if (buf[off + l3 + 9] !== IPPROTO_TCP) return false;
    l4 = l3 + ihl;
    out.ipv6 = false;
    out.ipId = readU16(buf, off + l3 + 4);
  } else if (gso === VIRTIO_NET_HDR_GSO_TCPV6) {
    if (ethertype !== ETHERTYPE_IPV6 || l3 + 40 > len) return false;
    if (buf[off + l3]! >> 4 !== 6) return false;
    if (buf[off + l3 + 6] === IPPROTO_TCP) l4 = l3 + 40;
    else if (h.csumStart > l3 + 40)
      l4 = h.csumStart; // extension headers in between
    else return false;
    out.ipv6 = true;
    out.ipId = 0;
  } else {
    return false;
  }
  if (l4 + 20 > len) return false;
  const doff = (buf[off + l4 + 12]! >> 4) * 4;
  if (doff < 20 || l4 + doff > len) return false;
  out.l3 = l3;
  out.l4 = l4;
  out.payload = l4 + doff;
  out.payloadLength = len - out.payload;
  out.mss = h.gsoSize;
  out.seq =
    (buf[off + l4 + 4]! * 0x1000000 + readU16(buf, off + l4 + 5) * 0x100 + buf[off + l4 + 7]!) >>>
    0;
  out.segments = Math.max(1, Math.ceil(out.payloadLength / out.mss));
  return true;
}

/**
 * Writes segment `index` of the TSO frame `src[off, ...)` described by `g` into `dst` (from 0)
 * and returns its length: the headers, then up to `mss` payload bytes, with the IP length
 * (and IPv4 identification and header checksum), the TCP sequence number, the FIN/PSH flags
 * (last segment only) and CWR (first segment only) adjusted, and the TCP checksum computed in
 * full. `dst` must hold `g.payload + g.mss` bytes.
 */
export function buildTcpSegment(
  src: Uint8Array,
  off: number,
  g: TcpGso,
  index: number,
  dst: Uint8Array,
): number {
  const start = index * g.mss;
  const n = Math.min(g.mss, g.payloadLength - start);
  const hdr = g.payload;
  dst.set(src.subarray(off, off + hdr), 0);
  dst.set(src.subarray(off + hdr + start, off + hdr + start + n), hdr);
  const len = hdr + n;
  const l3 = g.l3;
  const l4 = g.l4;
  const tcpLen = len - l4;
  let pseudo: number;
  if (g.ipv6) {
    writeU16(dst, l3 + 4, len - l3 - 40);
    pseudo = onesSum(dst, l3 + 8, l3 + 40, 0) + tcpLen + IPPROTO_TCP;
  } else {
    const ihl = (dst[l3]! & 0x0f) * 4;
    writeU16(dst, l3 + 2, len - l3);
    writeU16(dst, l3 + 4, (g.ipId + index) & 0xffff);
    writeU16(dst, l3 + 10, 0);
    writeU16(dst, l3 + 10, ~foldSum(onesSum(dst, l3, l3 + ihl, 0)) & 0xffff);
    pseudo = onesSum(dst, l3 + 12, l3 + 20, 0) + tcpLen + IPPROTO_TCP;
  }
  const seq = (g.seq + start) >>> 0;
  dst[l4 + 4] = seq >>> 24;
  dst[l4 + 5] = (seq >>> 16) & 0xff;
  dst[l4 + 6] = (seq >>> 8) & 0xff;
  dst[l4 + 7] = seq & 0xff;
  let flags = dst[l4 + 13]!;
  if (index + 1 < g.segments) flags &= ~(TCP_FIN | TCP_PSH);
  if (index > 0) flags &= ~TCP_CWR;
  dst[l4 + 13] = flags;
  writeU16(dst, l4 + 16, 0);
  writeU16(dst, l4 + 16, ~foldSum(onesSum(dst, l4, len, pseudo)) & 0xffff);
  return len;
}

/** True when `gsoType` (ECN bit included) is one of the TCP segmentation types. */
export function isTcpGso(gsoType: number): boolean {
  const gso = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  return gso === VIRTIO_NET_HDR_GSO_TCPV4 || gso === VIRTIO_NET_HDR_GSO_TCPV6;
}
