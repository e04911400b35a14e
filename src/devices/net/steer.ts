/**
 * Receive steering for a multiqueue network device: which receive queue a frame from the
 * backend goes to. A frame's flow (IPv4 or IPv6 source and destination addresses, and the
 * TCP or UDP ports when the packet carries them unfragmented) always hashes to the same value,
 * so one flow stays on one queue and its frames keep their order, which a driver expects
 * (Linux delivers each receive queue on its own CPU). Frames that are not IP go to the first
 * pair in use.
 */

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

/** Mixes `v` (32 bits) into `h`. */
function mix(h: number, v: number): number {
  return Math.imul((h ^ v) >>> 0, 0x9e3779b1) ^ (h >>> 15);
}

function u16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function u32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

/**
 * The flow hash of the Ethernet frame `frame[0, length)` (a non-negative 31-bit integer), or
 * -1 when it is not an IP packet with its addresses inside the frame. Reads only within
 * `length`; allocates nothing.
 */
export function flowHash(frame: Uint8Array, length: number): number {
  let l3 = 14;
  if (length < l3) return -1;
  let type = u16(frame, 12);
  if (type === ETHERTYPE_VLAN) {
    if (length < 18) return -1;
    type = u16(frame, 16);
    l3 = 18;
  }
  let h = 0x811c9dc5;
  let proto: number;
  let l4: number;
  if (type === ETHERTYPE_IPV4) {
    if (length < l3 + 20) return -1;
    const ihl = (frame[l3]! & 0x0f) * 4;
    proto = frame[l3 + 9]!;
    h = mix(h, u32(frame, l3 + 12));
    h = mix(h, u32(frame, l3 + 16));
    // A fragment after the first has no ports, and the first must hash like the rest.
    const fragmented = (u16(frame, l3 + 6) & 0x3fff) !== 0;
    l4 = ihl >= 20 && !fragmented ? l3 + ihl : -1;
  } else if (type === ETHERTYPE_IPV6) {
    if (length < l3 + 40) return -1;
    proto = frame[l3 + 6]!;
    for (let at = l3 + 8; at < l3 + 40; at += 4) h = mix(h, u32(frame, at));
    l4 = l3 + 40;
  } else {
    return -1;
  }
  if ((proto === IPPROTO_TCP || proto === IPPROTO_UDP) && l4 >= 0 && length >= l4 + 4) {
    h = mix(h, proto);
    h = mix(h, u32(frame, l4));
  }
  return (h ^ (h >>> 16)) & 0x7fffffff;
}

/**
 * The pair a frame goes to among the pairs in use, `inUse` (bit k: pair k; at least one bit):
 * the first of them for a frame without a flow, else the one its flow hashes to.
 */
export function steerPair(frame: Uint8Array, length: number, inUse: number): number {
  const first = 31 - Math.clz32(inUse & -inUse);
  let count = 0;
  for (let m = inUse; m !== 0; m &= m - 1) count++;
  const h = count > 1 ? flowHash(frame, length) : -1;
  if (h < 0) return first;
  let pick = h % count;
  for (let k = first; k < 32; k++) {
    if ((inUse & (1 << k)) === 0) continue;
    if (pick === 0) return k;
    pick--;
  }
  return first;
}
