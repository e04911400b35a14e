/**
 * A protocol fuzzer for the vhost-user back-end over a real Unix socket: random and mutated
 * messages, with real fds, against a VhostUserBackend serving a block device; after every
 * case the back-end must still serve a clean front-end (negotiation, memory table, a ring, a
 * block write and read-back), hold no fd it did not hold before, and never have logged an
 * internal error.
 *
 * The back-end runs in a child process (socket-fuzz-process.ts), so that a crash or a hang
 * fails the case that caused it; the wire model, the generators, the hostile ring contents and
 * the runner are shared with the network device's fuzzer (socket-fuzz-*.ts). Here: what is
 * the block device's (its chains, its clean session, its GET_CONFIG capacity).
 *
 * Generators (fast-check):
 * - `random`: random bytes, and random headers (any request number, flags and size field) with
 *   random payloads, random fds and random cuts into several sendmsg calls, optionally after a
 *   valid negotiation.
 * - `well-formed`: a message of every request type the codec knows, plus unknown request
 *   numbers, with random field values and real fds (memfds of every shape, eventfds,
 *   /dev/zero, a directory, a socket), after no prelude, a negotiation, or a running ring.
 * - `mutated session`: the session QEMU runs (split or packed ring, EVENT_IDX, INDIRECT_DESC),
 *   with a random tail (ring stop, enable toggles, memory hot-plug, resets, config access),
 *   then bit flips, truncations, extensions, wrong size fields, wrong, missing or extra fds,
 *   NEED_REPLY toggled, duplicated, swapped and dropped messages and messages cut into pieces;
 *   and, for some, hostile ring contents written into the shared guest memory and kicked.
 *
 * Environment: VIRTQ_SOCKET_FUZZ_RUNS=n runs n cases per generator (defaults below, about 30 s
 * in all); VIRTQ_SOCKET_FUZZ_SEED=s changes the seed (default fixed); a failure prints the seed
 * and fast-check's path: VIRTQ_SOCKET_FUZZ_SEED=s VIRTQ_SOCKET_FUZZ_PATH=p replays that case
 * (add `-t '<generator name>'`), VIRTQ_SOCKET_FUZZ_SHRINK=1 shrinks it to a minimal one.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VhostUserProtocolFeature } from '../../src/vhost-user/index.js';
import {
  concat,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  QSIZE,
  R,
  RING_GPA,
  u32s,
  u64,
  VERSION_1,
} from './frontend.js';
import { randomCase, sessionCase, wellFormedCase } from './socket-fuzz-cases.js';
import {
  F_EVENT_IDX,
  F_INDIRECT,
  F_LOG_ALL,
  F_PACKED,
  featureSet,
  MAX_U64,
  negotiation,
  RING0,
  session,
  u32,
  u64Any,
} from './socket-fuzz-gen.js';
import { DISK_BYTES } from './socket-fuzz-process.js';
import {
  DESC_INDIRECT,
  DESC_NEXT,
  DESC_WRITE,
  type Desc,
  PACKED_AVAIL,
  putDesc,
  type RingWrites,
  ringWritesModel,
  writeRing,
} from './socket-fuzz-ring.js';
import { nativeAddonTest, nativeOk, socketFuzzSuite } from './socket-fuzz-runner.js';
import { EMPTY, MUST_ANSWER, NEED, ramOffset, type Wire, wire } from './socket-fuzz-wire.js';

/** Cases per generator in the default run (about 30 s on a 2-core machine). */
const DEFAULT_RUNS = { random: 400, wellFormed: 450, session: 450 };

/** A block request laid out as a driver would, with at most one field corrupted. */
interface Chain {
  type: number;
  sector: bigint;
  dataLen: number;
  dataWritable: boolean;
  /** Through an indirect table (split rings). */
  indirect: boolean;
  /** A u32 of the chain's first ring descriptor overwritten. */
  corrupt: { at: number; value: number } | null;
}

interface BlockRingWrites extends RingWrites {
  /** Plausible requests, written over `descs`; split: heads 0, 3, 6...; packed: in order. */
  chains: Chain[];
  headers: { at: number; type: number; sector: bigint }[];
}

interface Hostile {
  /** The session negotiated VIRTIO_F_RING_PACKED (chains are written in that format). */
  packed: boolean;
  first: BlockRingWrites;
  /** Written after the first kick, while the back-end may be reading the ring. */
  again: BlockRingWrites | null;
  kicks: number;
}

function writeChains(ram: DataView, chains: Chain[], packed: boolean): number {
  const desc = ramOffset(RING0.desc)!;
  const put = (off: number, d: Desc) => putDesc(ram, off, d);
  let slot = 0;
  chains.forEach((ch, i) => {
    const hdr = 0x1000 + 0x40 * i;
    const status = 0x3000 + i;
    const data = 0x4000 + 0x2000 * i;
    ram.setUint32(hdr, ch.type, true);
    ram.setUint32(hdr + 4, 0, true);
    ram.setBigUint64(hdr + 8, ch.sector, true);
    ram.setUint8(status, 0xff);
    const parts = [
      { addr: hdr, len: 16, write: false },
      ...(ch.dataLen > 0 ? [{ addr: data, len: ch.dataLen, write: ch.dataWritable }] : []),
      { addr: status, len: 1, write: true },
    ];
    const first = slot;
    if (packed) {
      // Packed: consecutive slots, the buffer id in every one, AVAIL set for wrap counter 1.
      parts.forEach((p, k) => {
        const last = k === parts.length - 1;
        const flags = (last ? 0 : DESC_NEXT) | (p.write ? DESC_WRITE : 0) | PACKED_AVAIL;
        // id (u16 at 12) and flags (u16 at 14) of the packed layout.
        put(desc + 16 * ((slot + k) % QSIZE), { addr: p.addr, len: p.len, flags: i, next: flags });
      });
      slot += parts.length;
    } else if (ch.indirect) {
      const table = 0x20000 + 0x100 * i;
      parts.forEach((p, k) => {
        const last = k === parts.length - 1;
        const flags = (last ? 0 : DESC_NEXT) | (p.write ? DESC_WRITE : 0);
        put(table + 16 * k, { addr: p.addr, len: p.len, flags, next: k + 1 });
      });
      put(desc + 16 * (3 * i), {
        addr: table,
        len: 16 * parts.length,
        flags: DESC_INDIRECT,
        next: 0,
      });
    } else {
      parts.forEach((p, k) => {
        const last = k === parts.length - 1;
        const flags = (last ? 0 : DESC_NEXT) | (p.write ? DESC_WRITE : 0);
        put(desc + 16 * (3 * i + k), { addr: p.addr, len: p.len, flags, next: 3 * i + k + 1 });
      });
    }
    if (!packed) ram.setUint16(ramOffset(RING0.avail)! + 4 + 2 * i, 3 * i, true);
    if (ch.corrupt !== null) {
      const at = packed ? first : 3 * i;
      ram.setUint32(desc + 16 * (at % QSIZE) + 4 * (ch.corrupt.at % 4), ch.corrupt.value, true);
    }
  });
  return chains.length;
}

function writeBlockRing(ram: DataView, w: BlockRingWrites, packed: boolean): void {
  writeRing(ram, RING0, w, () => {
    const published = writeChains(ram, w.chains, packed);
    for (const h of w.headers) {
      ram.setUint32(h.at, h.type, true);
      ram.setUint32(h.at + 4, 0, true);
      ram.setBigUint64(h.at + 8, h.sector, true);
    }
    return published;
  });
}

const ring = ringWritesModel(RING0);
const ringWrites: fc.Arbitrary<BlockRingWrites> = fc.record({
  descs: ring.descs,
  chains: fc.array(
    fc.record({
      type: fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(0, 1, 4, 8, 11, 13) },
        { weight: 1, arbitrary: u32 },
      ),
      sector: fc.oneof(
        { weight: 4, arbitrary: fc.nat(140).map(BigInt) },
        { weight: 1, arbitrary: u64Any },
      ),
      dataLen: fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(0, 16, 20, 512, 1024, 4096, 8192) },
        { weight: 1, arbitrary: fc.nat(8192) },
      ),
      dataWritable: fc.boolean(),
      indirect: fc.boolean(),
      corrupt: fc.option(fc.record({ at: fc.nat(3), value: u32 }), { nil: null, freq: 4 }),
    }),
    { maxLength: 5 },
  ),
  availFlags: ring.availFlags,
  availIdx: ring.availIdx,
  heads: ring.heads,
  usedIdx: ring.usedIdx,
  headers: fc.array(
    fc.record({
      at: fc.constantFrom(0x1000, 0x2000, 0x3000),
      type: fc.oneof(fc.constantFrom(0, 1, 4, 8, 11, 13, 14, 16, 18), u32),
      sector: fc.oneof(fc.constantFrom(0n, 1n, 127n, 128n, 1n << 53n, MAX_U64), u64Any),
    }),
    { maxLength: 3 },
  ),
  noise: ring.noise,
});
const hostile: fc.Arbitrary<Hostile> = fc.record({
  packed: fc.constant(false),
  first: ringWrites,
  again: fc.option(ringWrites, { nil: null, freq: 1 }),
  kicks: fc.integer({ min: 1, max: 3 }),
});

const blockSessionCase = sessionCase({
  features: featureSet([F_EVENT_IDX, F_INDIRECT, F_PACKED, F_LOG_ALL]),
  open: (features, protocol) => session(features, protocol),
  hostile,
  negotiated: (h, features) => ({ ...h, packed: (features & F_PACKED) !== 0n }),
});

// ---------------------------------------------------------------------------------------------

nativeAddonTest('the vhost-user socket fuzzer');

describe.runIf(nativeOk)('vhost-user back-end socket fuzzer', () => {
  const { fuzz, fuzzOne } = socketFuzzSuite<Hostile>({
    label: 'socket fuzz',
    device: 'block',
    // The clean session's write and read each signal once.
    cleanCalls: 2,
    /** A front-end as QEMU is: negotiation, memory, ring 0, a block write and read-back. */
    async clean(s) {
      const features = await s.negotiate();
      const cfg = await s.ask(R.GET_CONFIG, concat(u32s(0, 8, 0), new Uint8Array(8)));
      expect(cfg.getBigUint64(12, true)).toBe(BigInt(DISK_BYTES / 512));
      await s.acked(R.SET_FEATURES, u64((features & VERSION_1) | PROTOCOL_BIT));
      await s.memory();
      const driver = await s.ring(0, RING_GPA);

      // A write of a fresh pattern, then a read of it back, through the ring.
      const sector = (s.run * 37) % (DISK_BYTES / 512);
      const g = s.guest;
      const io = async (type: number, data: number, write: boolean): Promise<void> => {
        s.step = write ? 'block write' : 'block read';
        g.writeU32(0x1000, type);
        g.writeU32(0x1004, 0);
        g.writeU64(0x1008, sector);
        g.writeU8(0x3000, 0xff);
        const hdr = { addr: 0x1000, len: 16 };
        const status = { addr: 0x3000, len: 1 };
        const buf = { addr: data, len: 512 };
        if (write) driver.add([hdr, buf], [status]);
        else driver.add([hdr], [buf, status]);
        await s.serve(driver, 0);
        expect(driver.popUsed()).toBeGreaterThanOrEqual(0);
        expect(g.readU8(0x3000)).toBe(0);
      };
      const pattern = new Uint8Array(512).map((_, i) => (i * 13 + s.run) & 0xff);
      g.write(0x2000, pattern);
      await io(1, 0x2000, true);
      g.fill(0x4000, 512);
      await io(0, 0x4000, false);
      const back = new Uint8Array(512);
      g.read(0x4000, back);
      expect(back).toEqual(pattern);
      const base = await s.ask(R.GET_VRING_BASE, u32s(0, 0));
      expect(base.getUint32(4, true)).toBe(2);
    },
    async play(h, g) {
      writeBlockRing(g.pool.ram, h.first, h.packed);
      for (let k = 0; k < h.kicks; k++) {
        g.kick(0);
        await g.settle(2);
        if (k === 0 && h.again !== null) writeBlockRing(g.pool.ram, h.again, h.packed);
      }
    },
  });

  it('(a) random bytes and random headers', async () => {
    await fuzz('random', randomCase, DEFAULT_RUNS.random, ['badHeaders']);
  });

  it('(b) well-formed messages of every request type with random fields', async () => {
    await fuzz(
      'well-formed',
      wellFormedCase(session(VERSION_1 | PROTOCOL_BIT)),
      DEFAULT_RUNS.wellFormed,
    );
  });

  it('(c) mutated QEMU-like sessions, with hostile ring contents', async () => {
    await fuzz('mutated session', blockSessionCase, DEFAULT_RUNS.session, [
      'hostileRings',
      'fuzzCalls',
    ]);
  });

  it('answers or closes on every request the front-end waits for, however malformed', async () => {
    // Each waits-for-a-reply request: valid, refused by the device, and with a broken payload.
    const wires: Wire[] = [];
    for (const request of MUST_ANSWER) {
      wires.push(wire(request), wire(request, u32s(0xffff_ffff, 0xffff_ffff), NEED));
    }
    for (const w of wires) {
      await fuzzOne({ wires: [...negotiation(), w], hostile: null });
    }
  });

  describe('regressions found by the fuzzer', () => {
    it('closes the fd of SET_LOG_FD when the front-end goes away', async () => {
      // (b): the log eventfd stayed open after the disconnect, one fd leaked per front-end.
      const protocol = PROTOCOL_FEATURES | (1n << BigInt(VhostUserProtocolFeature.LOG_SHMFD));
      await fuzzOne({
        wires: [...negotiation(protocol), wire(R.SET_LOG_FD, EMPTY, NEED, ['call'])],
        hostile: null,
      });
    });

    it('refuses a kick fd that cannot be polled (a regular file) without an internal error', async () => {
      // (b): watch() threw EPERM (epoll refuses regular files, directories and /dev/zero), which
      // the back-end logged as an internal error.
      for (const kind of ['ram', 'small', 'dir', 'devzero', 'devnull'] as const) {
        await fuzzOne({
          wires: [...negotiation(), wire(R.SET_VRING_KICK, u64(0), NEED, [kind])],
          hostile: null,
        });
      }
    });
  });
});
