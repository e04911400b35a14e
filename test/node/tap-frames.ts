/**
 * Just enough of Ethernet, ARP, IPv4, ICMP and UDP for the tap tests' guest side: building the
 * frames a guest would send, reading the ones it receives, and answering ARP and ping.
 */
import { foldSum, onesSum } from '../../src/devices/net/offload.js';

export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const IPPROTO_ICMP = 1;
export const IPPROTO_UDP = 17;
/** Where the UDP checksum field sits in a frame without VLAN tag or IP options. */
export const UDP_CSUM_START = 34;
export const UDP_CSUM_OFFSET = 6;

export function ip(text: string): Uint8Array {
  return Uint8Array.from(text.split('.'), Number);
}

function u16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function put16(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 8;
  b[at + 1] = v & 0xff;
}

export function etherType(f: Uint8Array): number {
  return u16(f, 12);
}

function ethernet(dst: Uint8Array, src: Uint8Array, type: number, len: number): Uint8Array {
  const f = new Uint8Array(Math.max(60, 14 + len));
  f.set(dst, 0);
  f.set(src, 6);
  put16(f, 12, type);
  return f;
}

/** An ARP request (op 1) or reply (op 2) for IPv4 over Ethernet. */
export function arp(
  op: 1 | 2,
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstMac: Uint8Array,
  dstIp: Uint8Array,
): Uint8Array {
  const ethDst = op === 1 ? new Uint8Array(6).fill(0xff) : dstMac;
  const f = ethernet(ethDst, srcMac, ETHERTYPE_ARP, 28);
  put16(f, 14, 1); // Ethernet
  put16(f, 16, ETHERTYPE_IPV4);
  f[18] = 6;
  f[19] = 4;
  put16(f, 20, op);
  f.set(srcMac, 22);
  f.set(srcIp, 28);
  f.set(op === 1 ? new Uint8Array(6) : dstMac, 32);
  f.set(dstIp, 38);
  return f;
}

export interface ArpMessage {
  op: number;
  senderMac: Uint8Array;
  senderIp: string;
  targetIp: string;
}

export function parseArp(f: Uint8Array): ArpMessage | null {
  if (f.length < 42 || etherType(f) !== ETHERTYPE_ARP) return null;
  return {
    op: u16(f, 20),
    senderMac: f.slice(22, 28),
    senderIp: f.subarray(28, 32).join('.'),
    targetIp: f.subarray(38, 42).join('.'),
  };
}

/** An IPv4 frame (no options) carrying `payload`, header checksum filled in. */
function ipv4(
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstIp: Uint8Array,
  proto: number,
  payload: Uint8Array,
): Uint8Array {
  const f = ethernet(dstMac, srcMac, ETHERTYPE_IPV4, 20 + payload.length);
  f[14] = 0x45;
  put16(f, 16, 20 + payload.length);
  f[22] = 64; // TTL
  f[23] = proto;
  f.set(srcIp, 26);
  f.set(dstIp, 30);
  put16(f, 24, ~foldSum(onesSum(f, 14, 34, 0)) & 0xffff);
  f.set(payload, 34);
  return f;
}

export interface Ipv4Packet {
  proto: number;
  src: string;
  dst: string;
  /** The IP payload (without Ethernet padding). */
  payload: Uint8Array;
  headerChecksumOk: boolean;
}

export function parseIpv4(f: Uint8Array): Ipv4Packet | null {
  if (f.length < 34 || etherType(f) !== ETHERTYPE_IPV4 || f[14] !== 0x45) return null;
  const total = u16(f, 16);
  return {
    proto: f[23]!,
    src: f.subarray(26, 30).join('.'),
    dst: f.subarray(30, 34).join('.'),
    payload: f.subarray(34, 14 + total),
    headerChecksumOk: foldSum(onesSum(f, 14, 34, 0)) === 0xffff,
  };
}

/** An ICMP echo request (type 8) or reply (type 0) frame. */
export function icmpEcho(
  type: 0 | 8,
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstIp: Uint8Array,
  id: number,
  seq: number,
  data: Uint8Array,
): Uint8Array {
  const m = new Uint8Array(8 + data.length);
  m[0] = type;
  put16(m, 4, id);
  put16(m, 6, seq);
  m.set(data, 8);
  put16(m, 2, ~foldSum(onesSum(m, 0, m.length, 0)) & 0xffff);
  return ipv4(dstMac, srcMac, srcIp, dstIp, IPPROTO_ICMP, m);
}

export interface IcmpEcho {
  type: number;
  id: number;
  seq: number;
  data: Uint8Array;
  checksumOk: boolean;
}

export function parseIcmpEcho(p: Ipv4Packet): IcmpEcho | null {
  if (p.proto !== IPPROTO_ICMP || p.payload.length < 8) return null;
  const m = p.payload;
  return {
    type: m[0]!,
    id: u16(m, 4),
    seq: u16(m, 6),
    data: m.subarray(8),
    checksumOk: foldSum(onesSum(m, 0, m.length, 0)) === 0xffff,
  };
}

/** The IPv4 pseudo-header sum of a UDP datagram of `udpLength` bytes (unfolded). */
function pseudoSum(srcIp: Uint8Array, dstIp: Uint8Array, udpLength: number): number {
  return onesSum(srcIp, 0, 4, 0) + onesSum(dstIp, 0, 4, 0) + IPPROTO_UDP + udpLength;
}

/**
 * A UDP datagram frame. `partial`: the checksum field holds only the pseudo-header sum, as a
 * driver leaves it with NEEDS_CSUM (csum_start {@link UDP_CSUM_START}, csum_offset
 * {@link UDP_CSUM_OFFSET}); otherwise the full checksum.
 */
export function udp(
  dstMac: Uint8Array,
  srcMac: Uint8Array,
  srcIp: Uint8Array,
  dstIp: Uint8Array,
  srcPort: number,
  dstPort: number,
  data: Uint8Array,
  partial: boolean,
): Uint8Array {
  const d = new Uint8Array(8 + data.length);
  put16(d, 0, srcPort);
  put16(d, 2, dstPort);
  put16(d, 4, d.length);
  d.set(data, 8);
  const pseudo = pseudoSum(srcIp, dstIp, d.length);
  const c = partial
    ? foldSum(pseudo)
    : ~foldSum(onesSum(d, 0, d.length, pseudo)) & 0xffff || 0xffff;
  put16(d, 6, c);
  return ipv4(dstMac, srcMac, srcIp, dstIp, IPPROTO_UDP, d);
}

export interface UdpDatagram {
  srcPort: number;
  dstPort: number;
  data: Uint8Array;
  /** The checksum field as received. */
  checksum: number;
  /** The checksum verifies over the pseudo-header, header and data. */
  checksumOk: boolean;
}

export function parseUdp(f: Uint8Array): UdpDatagram | null {
  const p = parseIpv4(f);
  if (p === null || p.proto !== IPPROTO_UDP || p.payload.length < 8) return null;
  const d = p.payload;
  const sum = onesSum(d, 0, d.length, pseudoSum(ip(p.src), ip(p.dst), d.length));
  return {
    srcPort: u16(d, 0),
    dstPort: u16(d, 2),
    data: d.subarray(8, u16(d, 4)),
    checksum: u16(d, 6),
    checksumOk: foldSum(sum) === 0xffff,
  };
}

/**
 * What a guest at `myMac`/`myIp` answers to frame `f`: an ARP reply to a request for its
 * address, an echo reply to an echo request sent to it; else null.
 */
export function answer(f: Uint8Array, myMac: Uint8Array, myIp: Uint8Array): Uint8Array | null {
  const me = myIp.join('.');
  const a = parseArp(f);
  if (a !== null) {
    if (a.op !== 1 || a.targetIp !== me) return null;
    return arp(2, myMac, myIp, a.senderMac, ip(a.senderIp));
  }
  const p = parseIpv4(f);
  if (p === null || p.dst !== me) return null;
  const e = parseIcmpEcho(p);
  if (e === null || e.type !== 8) return null;
  return icmpEcho(0, f.slice(6, 12), myMac, myIp, ip(p.src), e.id, e.seq, e.data);
}
