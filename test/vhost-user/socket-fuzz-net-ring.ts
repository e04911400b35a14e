/**
 * How the net socket fuzzer's guest lays chains out on its two rings (ring 0 receives, ring 1
 * transmits), split or packed, over the hostile ring contents of socket-fuzz-ring.ts.
 */
import { featureBit } from '../../src/devices/device.js';
import { VIRTIO_NET_F_MRG_RXBUF } from '../../src/devices/net/index.js';
import { splitLayout } from '../../src/queue/split/layout.js';
import { QSIZE, RING_GPA } from './frontend.js';
import { RING0 } from './socket-fuzz-gen.js';
import { NET_MAC } from './socket-fuzz-process.js';
import {
  DESC_INDIRECT,
  DESC_NEXT,
  DESC_WRITE,
  PACKED_AVAIL,
  putDesc,
  type RingWrites,
  writeRing,
} from './socket-fuzz-ring.js';
import { ramOffset } from './socket-fuzz-wire.js';

export const F_MRG_RXBUF = featureBit(VIRTIO_NET_F_MRG_RXBUF);
/** The virtio-net header with VERSION_1 (num_buffers included). */
export const HDR = 12;
/** Ring 1 (transmit), after ring 0 (receive) in region 1. */
export const TX_RING = splitLayout(RING_GPA + 0x1000, QSIZE);
export const RINGS = [RING0, TX_RING];
/** Where ring k's chains keep their buffers (region 0), and their indirect tables. */
const DATA = [0x4_0000, 0x1_0000];
const TABLES = [0x3_0800, 0x3_0000];

/** A chain as a driver lays one out, bent: its buffers, how it links, its virtio header. */
export interface NetChain {
  /** Buffer lengths and directions (transmit wants readable, receive writable). */
  parts: { len: number; writable: boolean }[];
  indirect: boolean;
  /** The last descriptor links back to the first. */
  loop: boolean;
  /** The virtio header at the start of the first buffer (transmit). */
  header: Uint8Array;
}

export interface NetRingWrites extends RingWrites {
  chains: NetChain[];
  /** Only the chains are written, none of the hostile ring contents around them. */
  quiet: boolean;
}

/**
 * Lays `chains` out on ring `k`, returns how many it made available. Split: heads 0, 4, 8, 12.
 * Packed: in consecutive slots from 0, AVAIL set for the first lap (wrap counter 1), the
 * buffer id in every descriptor; a looping chain's last descriptor says NEXT, so the list runs
 * on into whatever follows it.
 */
export function writeChains(ram: DataView, k: number, chains: NetChain[], packed: boolean): number {
  const ring = RINGS[k]!;
  const desc = ramOffset(ring.desc)!;
  const avail = ramOffset(ring.avail)!;
  let slot = 0;
  // Packed: slot 0's flags are written last, as a driver publishes a batch by its first head
  // (§2.8.21.1). A device polling the ring meanwhile must not see a half-written list: a
  // looping chain read before the slot after it was written ends there, a chain that was never
  // on the ring.
  let firstFlags: number | null = null;
  chains.forEach((ch, i) => {
    const area = DATA[k]! + 0x4000 * i;
    new Uint8Array(ram.buffer, area, ch.header.length).set(ch.header);
    // An Ethernet header after the virtio one: to us, from us, local experimental EtherType.
    new Uint8Array(ram.buffer, area + HDR, 14).set([...NET_MAC, ...NET_MAC, 0x88, 0xb5]);
    const table = TABLES[k]! + 0x100 * i;
    const parts = ch.parts.map((p, j) => ({ addr: area + 0x800 * j, len: p.len, p }));
    const dirFlag = (w: boolean) => (w ? DESC_WRITE : 0);
    if (packed) {
      const avail1 = PACKED_AVAIL;
      if (ch.indirect) {
        // A packed indirect table: consecutive descriptors, no NEXT (§2.8.19).
        parts.forEach((d, j) => {
          putDesc(ram, table + 16 * j, { ...d, flags: i, next: dirFlag(d.p.writable) });
        });
        const flags = DESC_INDIRECT | avail1 | (ch.loop ? DESC_NEXT : 0);
        if (slot === 0) firstFlags = flags;
        putDesc(ram, desc + 16 * (slot % QSIZE), {
          addr: table,
          len: 16 * parts.length,
          flags: i,
          next: slot === 0 ? 0 : flags,
        });
        slot += 1;
      } else {
        parts.forEach((d, j) => {
          const last = j === parts.length - 1;
          const flags = (last && !ch.loop ? 0 : DESC_NEXT) | dirFlag(d.p.writable) | avail1;
          const first = slot + j === 0;
          if (first) firstFlags = flags;
          // id (u16 at 12) and flags (u16 at 14) of the packed layout.
          putDesc(ram, desc + 16 * ((slot + j) % QSIZE), {
            ...d,
            flags: i,
            next: first ? 0 : flags,
          });
        });
        slot += parts.length;
      }
      return;
    }
    const head = 4 * i;
    const base = ch.indirect ? table : desc + 16 * head;
    const first = ch.indirect ? 0 : head;
    parts.forEach((d, j) => {
      const last = j === parts.length - 1;
      const next = last ? first : first + j + 1;
      const flags = (last && !ch.loop ? 0 : DESC_NEXT) | dirFlag(d.p.writable);
      putDesc(ram, base + 16 * j, { addr: d.addr, len: d.len, flags, next });
    });
    if (ch.indirect) {
      putDesc(ram, desc + 16 * head, {
        addr: table,
        len: 16 * parts.length,
        flags: DESC_INDIRECT,
        next: 0,
      });
    }
    ram.setUint16(avail + 4 + 2 * i, head, true);
  });
  if (firstFlags !== null) ram.setUint16(desc + 14, firstFlags, true);
  return chains.length;
}

export function writeNetRing(ram: DataView, k: number, w: NetRingWrites, packed: boolean): void {
  // A quiet guest writes its chains and nothing else: the frames reach the device.
  writeRing(ram, RINGS[k]!, w.quiet ? only(w.chains) : w, () =>
    writeChains(ram, k, w.chains, packed),
  );
}

/** Ring contents with nothing but `chains` on them. */
export function only(chains: NetChain[]): NetRingWrites {
  return {
    descs: [],
    availFlags: 0,
    availIdx: null,
    heads: [],
    usedIdx: null,
    noise: [],
    chains,
    quiet: true,
  };
}
