import type { ChainReader } from '../../iovec/reader.js';
import type { GuestRegion } from '../../memory/region.js';
import type { DescriptorChain } from '../../queue/chain.js';
import { featureBit, hasFeature } from '../device.js';

/** Network device feature bits (VIRTIO 1.2 §5.1.3). */
export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_GUEST_UFO = 10;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_HOST_UFO = 14;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_CTRL_VLAN = 19;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;
export const VIRTIO_NET_F_GUEST_USO4 = 54;
export const VIRTIO_NET_F_GUEST_USO6 = 55;
export const VIRTIO_NET_F_HOST_USO = 56;

/** `status` bits of the configuration space (§5.1.4). */
export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

/** Offsets of the configuration fields virtq implements (§5.1.4, struct virtio_net_config). */
export const NET_CONFIG_MAC = 0;
export const NET_CONFIG_STATUS = 6;
export const NET_CONFIG_MAX_VIRTQUEUE_PAIRS = 8;
export const NET_CONFIG_MTU = 10;
/** Bytes of configuration space: mac, status, max_virtqueue_pairs, mtu. */
export const NET_CONFIG_SIZE = 12;

/** `flags` of struct virtio_net_hdr (§5.1.6). */
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
/** `gso_type` of struct virtio_net_hdr (§5.1.6). */
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_UDP_L4 = 5;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/**
 * Size of struct virtio_net_hdr with VIRTIO_F_VERSION_1 and none of HASH_REPORT, UDP tunnel
 * GSO, OUT_NET_HEADER or IPSEC (which virtq never offers): 12 bytes, `num_buffers` included
 * (§5.1.6, §5.1.6.3.1).
 */
export const VIRTIO_NET_HDR_SIZE = 12;

/** Ethernet header length (destination, source, EtherType). */
export const ETH_HLEN = 14;
/**
 * Largest frame virtq carries, without the virtio header: Ethernet header, an 802.1Q tag,
 * the IPv6 header and the largest IPv6 payload (§5.1.6.3: 65589 bytes, plus 4 for the tag).
 */
export const NET_MAX_FRAME = 65593;

/**
 * Chains the device reads ahead of its pops (`Queue.warm`), in both directions. 16, 32 and 64
 * measured alike against testpmd (docs/PERFORMANCE.md).
 */
export const NET_WARM_AHEAD = 32;

/**
 * The offload features virtq implements: checksum offload and TCP segmentation offload in
 * both directions, with ECN. A device offers those of them its frame backend can carry.
 */
export const NET_OFFLOAD_FEATURES =
  featureBit(VIRTIO_NET_F_CSUM) |
  featureBit(VIRTIO_NET_F_GUEST_CSUM) |
  featureBit(VIRTIO_NET_F_GUEST_TSO4) |
  featureBit(VIRTIO_NET_F_GUEST_TSO6) |
  featureBit(VIRTIO_NET_F_GUEST_ECN) |
  featureBit(VIRTIO_NET_F_HOST_TSO4) |
  featureBit(VIRTIO_NET_F_HOST_TSO6) |
  featureBit(VIRTIO_NET_F_HOST_ECN);

/**
 * §5.1.3.1 "Feature bit requirements": each feature, and the features of which it needs at
 * least one.
 */
const REQUIREMENTS: readonly (readonly [number, readonly number[]])[] = [
  [VIRTIO_NET_F_GUEST_TSO4, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_TSO6, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_ECN, [VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]],
  [VIRTIO_NET_F_GUEST_UFO, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_USO4, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_USO6, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_HOST_TSO4, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_TSO6, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_ECN, [VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6]],
  [VIRTIO_NET_F_HOST_UFO, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_USO, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_CTRL_RX, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_CTRL_VLAN, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_GUEST_ANNOUNCE, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_MQ, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_CTRL_MAC_ADDR, [VIRTIO_NET_F_CTRL_VQ]],
];

/**
 * The first feature of `features` whose requirement (§5.1.3.1) is missing, or -1 when the set
 * is consistent.
 */
export function missingNetRequirement(features: bigint): number {
  for (const [bit, needs] of REQUIREMENTS) {
    if (!hasFeature(features, bit)) continue;
    if (!needs.some((n) => hasFeature(features, n))) return bit;
  }
  return -1;
}

/** The fields of struct virtio_net_hdr that travel with a frame (num_buffers excluded). */
export interface NetHeader {
  flags: number;
  gsoType: number;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
}

/** A header of a plain, fully checksummed frame (all zero). */
export function plainHeader(): NetHeader {
  return { flags: 0, gsoType: 0, hdrLen: 0, gsoSize: 0, csumStart: 0, csumOffset: 0 };
}

/** Which offloads one direction may use, as booleans for the per-frame path. */
export interface NetOffloads {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  ecn: boolean;
}

/** Offloads the driver may ask of the device on transmit (HOST_* and CSUM). */
export function hostOffloads(features: bigint): NetOffloads {
  return {
    csum: hasFeature(features, VIRTIO_NET_F_CSUM),
    tso4: hasFeature(features, VIRTIO_NET_F_HOST_TSO4),
    tso6: hasFeature(features, VIRTIO_NET_F_HOST_TSO6),
    ecn: hasFeature(features, VIRTIO_NET_F_HOST_ECN),
  };
}

/** Offloads the driver accepts on receive (GUEST_*). */
export function guestOffloads(features: bigint): NetOffloads {
  return {
    csum: hasFeature(features, VIRTIO_NET_F_GUEST_CSUM),
    tso4: hasFeature(features, VIRTIO_NET_F_GUEST_TSO4),
    tso6: hasFeature(features, VIRTIO_NET_F_GUEST_TSO6),
    ecn: hasFeature(features, VIRTIO_NET_F_GUEST_ECN),
  };
}

// ---- transmit requests ----

/** Why a transmitted frame is dropped instead of sent. */
export type NetTxUnsupportedReason =
  /** The chain's device-readable part is shorter than struct virtio_net_hdr. */
  | 'header-too-short'
  /** Less than an Ethernet header after the virtio header. */
  | 'frame-too-short'
  /** More than {@link NET_MAX_FRAME} bytes after the virtio header. */
  | 'frame-too-long'
  /** NEEDS_CSUM without VIRTIO_NET_F_CSUM. */
  | 'csum-not-negotiated'
  /** NEEDS_CSUM with a checksum field outside the frame. */
  | 'csum-outside-frame'
  /** A GSO type whose HOST_* feature was not negotiated (or that virtq does not know). */
  | 'gso-not-negotiated'
  /** The ECN bit without VIRTIO_NET_F_HOST_ECN. */
  | 'ecn-not-negotiated'
  /** A GSO type without NEEDS_CSUM, or with a gso_size of 0. */
  | 'gso-malformed';

/**
 * A frame to send: its header was read into `header`. When `region` is set, the frame lies in
 * one piece at `region.bytes[at, at + length)`; else the reader stands at its first byte.
 */
export interface NetTxFrame {
  kind: 'frame';
  header: NetHeader;
  /** Frame bytes (the chain's readable part after the virtio header). */
  length: number;
  /** The region holding the whole frame, or null (read it through the reader). */
  region: GuestRegion | null;
  /** Where the frame starts in `region.bytes` (meaningful with `region`). */
  at: number;
}

/** A transmit chain the device drops and counts (§5.1.6.2). */
export interface NetTxUnsupported {
  kind: 'unsupported';
  reason: NetTxUnsupportedReason;
}

export type NetTxRequest = NetTxFrame | NetTxUnsupported;

const TX_UNSUPPORTED: { readonly [R in NetTxUnsupportedReason]: NetTxUnsupported } = {
  'header-too-short': { kind: 'unsupported', reason: 'header-too-short' },
  'frame-too-short': { kind: 'unsupported', reason: 'frame-too-short' },
  'frame-too-long': { kind: 'unsupported', reason: 'frame-too-long' },
  'csum-not-negotiated': { kind: 'unsupported', reason: 'csum-not-negotiated' },
  'csum-outside-frame': { kind: 'unsupported', reason: 'csum-outside-frame' },
  'gso-not-negotiated': { kind: 'unsupported', reason: 'gso-not-negotiated' },
  'ecn-not-negotiated': { kind: 'unsupported', reason: 'ecn-not-negotiated' },
  'gso-malformed': { kind: 'unsupported', reason: 'gso-malformed' },
};

/**
 * Reads the virtio header of a transmit chain (in place when header and frame are the chain's
 * one readable buffer, else through `reader`, reset over the chain) and checks it against what
 * the driver negotiated (`allowed`). Returns `out`, filled in (the frame in one piece, or the
 * reader at its first byte), or one of the shared unsupported values. Allocates
 * nothing. Flag bits other than NEEDS_CSUM are ignored (§5.1.6.2.2: the device MUST ignore
 * flag bits it does not recognise) and dropped from the header.
 */
export function parseTxRequest(
  chain: DescriptorChain,
  reader: ChainReader,
  allowed: NetOffloads,
  out: NetTxFrame,
): NetTxRequest {
  const h = out.header;
  let flags: number;
  let gsoType: number;
  let length: number;
  /** The header's bytes when they lie in one piece, from `at`; null: read through `reader`. */
  let v: DataView | null;
  let at: number;
  const r = chain.regionAt(0);
  if (
    chain.writableStart > 0 &&
    r !== null &&
    chain.readableLength === chain.lens[0] &&
    chain.lens[0]! >= VIRTIO_NET_HDR_SIZE
  ) {
    // What Linux and DPDK send: header and frame in the first (and only readable) buffer, in
    // one region, read in place from the chain's own arrays (no reader bound).
    v = r.view;
    at = chain.addrs[0]! - r.base;
    length = chain.lens[0]! - VIRTIO_NET_HDR_SIZE;
    out.region = r;
    out.at = at + VIRTIO_NET_HDR_SIZE;
  } else {
    out.region = null;
    reader.reset(chain);
    if (reader.remaining < VIRTIO_NET_HDR_SIZE) return TX_UNSUPPORTED['header-too-short'];
    at = reader.claim(VIRTIO_NET_HDR_SIZE);
    v = at >= 0 ? reader.claimedRegion!.view : null;
    length = reader.remaining;
  }
  if (v !== null) {
    // The header in one piece, read in place (each field read once).
    flags = v.getUint8(at) & VIRTIO_NET_HDR_F_NEEDS_CSUM;
    gsoType = v.getUint8(at + 1);
    h.hdrLen = v.getUint16(at + 2, true);
    h.gsoSize = v.getUint16(at + 4, true);
    h.csumStart = v.getUint16(at + 6, true);
    h.csumOffset = v.getUint16(at + 8, true);
  } else {
    flags = reader.readU8() & VIRTIO_NET_HDR_F_NEEDS_CSUM;
    gsoType = reader.readU8();
    h.hdrLen = reader.readU16();
    h.gsoSize = reader.readU16();
    h.csumStart = reader.readU16();
    h.csumOffset = reader.readU16();
    reader.skipExact(2); // num_buffers: unused on transmit (§5.1.6.2)
    length = reader.remaining;
  }
  h.flags = flags;
  h.gsoType = gsoType;
  if (length < ETH_HLEN) return TX_UNSUPPORTED['frame-too-short'];
  if (length > NET_MAX_FRAME) return TX_UNSUPPORTED['frame-too-long'];
  if (flags !== 0) {
    // §5.1.6.2.1: without VIRTIO_NET_F_CSUM the driver MUST set flags to zero.
    if (!allowed.csum) return TX_UNSUPPORTED['csum-not-negotiated'];
    if (h.csumStart + h.csumOffset + 2 > length) return TX_UNSUPPORTED['csum-outside-frame'];
  }
  const gso = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
  if (gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
    // §5.1.6.2.1: a GSO type only with its HOST_* feature; the ECN bit only with HOST_ECN.
    if (gso === VIRTIO_NET_HDR_GSO_TCPV4) {
      if (!allowed.tso4) return TX_UNSUPPORTED['gso-not-negotiated'];
    } else if (gso === VIRTIO_NET_HDR_GSO_TCPV6) {
      if (!allowed.tso6) return TX_UNSUPPORTED['gso-not-negotiated'];
    } else return TX_UNSUPPORTED['gso-not-negotiated'];
    if (gso !== gsoType && !allowed.ecn) return TX_UNSUPPORTED['ecn-not-negotiated'];
    // §5.1.6.2.1: a GSO frame MUST carry NEEDS_CSUM and the MSS in gso_size.
    if (flags === 0 || h.gsoSize === 0) return TX_UNSUPPORTED['gso-malformed'];
  }
  out.length = length;
  return out;
}

/** A fresh, reusable {@link NetTxFrame} for {@link parseTxRequest}. */
export function txFrameScratch(): NetTxFrame {
  return { kind: 'frame', header: plainHeader(), length: 0, region: null, at: 0 };
}

// ---- receive buffers ----

/** Why a receive chain is returned unused (with a used length of 0). */
export type NetRxUnsupportedReason =
  /** The chain has device-readable descriptors: a receive buffer is written, never read. */
  | 'readable-descriptors'
  /** Fewer writable bytes than struct virtio_net_hdr (§5.1.6.3.1). */
  | 'smaller-than-header';

export interface NetRxBuffer {
  kind: 'buffer';
  /** Writable bytes. */
  capacity: number;
}

export interface NetRxUnsupported {
  kind: 'unsupported';
  reason: NetRxUnsupportedReason;
}

export type NetRxRequest = NetRxBuffer | NetRxUnsupported;

const RX_UNSUPPORTED: { readonly [R in NetRxUnsupportedReason]: NetRxUnsupported } = {
  'readable-descriptors': { kind: 'unsupported', reason: 'readable-descriptors' },
  'smaller-than-header': { kind: 'unsupported', reason: 'smaller-than-header' },
};

/** Classifies a receive chain (allocation-free: `out` is returned filled in). */
export function parseRxBuffer(chain: DescriptorChain, out: NetRxBuffer): NetRxRequest {
  if (chain.readableLength > 0) return RX_UNSUPPORTED['readable-descriptors'];
  // §5.1.6.3.1: every receive buffer holds at least struct virtio_net_hdr.
  if (chain.writableLength < VIRTIO_NET_HDR_SIZE) return RX_UNSUPPORTED['smaller-than-header'];
  out.capacity = chain.writableLength;
  return out;
}
