/**
 * Generators of the vhost-user socket fuzzers (fast-check), for any device:
 * - random bytes, and random headers (any request number, flags and size field) with random
 *   payloads, random fds and random cuts into several sendmsg calls;
 * - a well-formed message of every request type the codec knows, plus unknown request numbers,
 *   with random field values and real fds (memfds of every shape, eventfds, /dev/zero, a
 *   directory, a socket);
 * - the session QEMU runs up to running rings, and a random tail of what QEMU may send next.
 * The mutations of a message list and the cases built from all of these are in
 * socket-fuzz-cases.ts; a device's hostile guest in socket-fuzz-ring.ts.
 */
import fc from 'fast-check';
import { type SplitLayout, splitLayout } from '../../src/queue/split/layout.js';
import { VhostUserFlags, VhostUserProtocolFeature } from '../../src/vhost-user/index.js';
import {
  concat,
  HALF,
  memTable,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  QSIZE,
  R,
  RAM,
  REGION1_GPA,
  RING_GPA,
  u32s,
  u64,
  VERSION_1,
  vringAddr,
} from './frontend.js';
import { EMPTY, FD_KINDS, type FdKind, NEED, type Wire, wire } from './socket-fuzz-wire.js';

export const MAX_U64 = (1n << 64n) - 1n;
/** Ring 0 of every fuzz session (the only ring of the block device). */
export const RING0 = splitLayout(RING_GPA, QSIZE);
export const F_INDIRECT = 1n << 28n;
export const F_EVENT_IDX = 1n << 29n;
export const F_PACKED = 1n << 34n;
export const F_LOG_ALL = 1n << 26n;

// ---------------------------------------------------------------------------------------------
// Messages

export const u32 = fc.nat(0xffff_ffff);
export const u64Any = fc.bigInt({ min: 0n, max: MAX_U64 });
export const fdKind = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<FdKind>('ram', 'kick') },
  { weight: 3, arbitrary: fc.constantFrom(...FD_KINDS) },
);
export const fdList = fc.oneof(
  { weight: 30, arbitrary: fc.array(fdKind, { maxLength: 4 }) },
  { weight: 2, arbitrary: fc.array(fdKind, { minLength: 5, maxLength: 12 }) },
  // Up to SCM_MAX_FD: the back-end must close every one of them.
  { weight: 1, arbitrary: fc.integer({ min: 13, max: 253 }).map((k) => Array(k).fill('call')) },
);
const flagsValid = fc.constantFrom(VhostUserFlags.VERSION, NEED);
const flagsAny = fc.oneof(
  { weight: 6, arbitrary: flagsValid },
  { weight: 1, arbitrary: fc.nat(15) },
  { weight: 1, arbitrary: u32 },
);
const ringIndex = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(0, 1) },
  { weight: 1, arbitrary: fc.nat(255) },
  { weight: 1, arbitrary: u32 },
);
const ringNum = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0, 1, 2, 15, 16, 64, 65, 256, 0x8000, 0xffff) },
  { weight: 1, arbitrary: fc.nat(0x1_0000) },
  { weight: 1, arbitrary: u32 },
);
/** A 64-bit value: usually near the fuzz session's addresses, sometimes anything. */
const addrU64 = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(0, 8, 0x1000, HALF, HALF - 8, REGION1_GPA, RAM, 2 * RAM, 0x7f00_0000_0000)
      .map(BigInt),
  },
  { weight: 2, arbitrary: fc.nat(2 * RAM).map((x) => BigInt(x & ~7)) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(0x7f00_0000_0000n, 0x7e00_0000_0000n, 0x7e00_0000_0040n),
  },
  { weight: 1, arbitrary: fc.maxSafeNat().map(BigInt) },
  { weight: 1, arbitrary: u64Any },
);
const sizeU64 = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0, 8, 4096, HALF, RAM, RAM + 4096, 2 * RAM).map(BigInt) },
  { weight: 1, arbitrary: fc.nat(2 * RAM).map(BigInt) },
  { weight: 1, arbitrary: u64Any },
);
const region = fc
  .tuple(addrU64, sizeU64, addrU64, addrU64)
  .map(([gpa, size, user, offset]) => concat(u64(gpa), u64(size), u64(user), u64(offset)));
const featureMask = (bits: number) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.array(fc.nat(bits - 1), { maxLength: 8 }) },
    { weight: 1, arbitrary: fc.array(fc.nat(63), { maxLength: 8 }) },
  );
export const maskOf = (bits: number[]): bigint => bits.reduce((m, b) => m | (1n << BigInt(b)), 0n);

/** Splits and the piece that carries the fds, for any wire. */
const cutting = fc.record({
  splits: fc.oneof(
    { weight: 6, arbitrary: fc.constant<number[]>([]) },
    { weight: 1, arbitrary: fc.array(fc.nat(300), { minLength: 1, maxLength: 3 }) },
  ),
  fdPiece: fc.nat(3),
});

function withCut(w: Wire, cut: { splits: number[]; fdPiece: number }): Wire {
  return { ...w, splits: cut.splits, fdPiece: cut.fdPiece };
}

/** (b) A well-formed message of every request type, random field values. */
export const wellFormedWire: fc.Arbitrary<Wire> = fc
  .tuple(
    fc.oneof(
      fc
        .tuple(
          fc.constantFrom(
            R.GET_FEATURES,
            R.GET_PROTOCOL_FEATURES,
            R.SET_OWNER,
            R.RESET_OWNER,
            R.RESET_DEVICE,
            R.GET_QUEUE_NUM,
            R.GET_MAX_MEM_SLOTS,
            R.GET_STATUS,
          ),
          flagsValid,
        )
        .map(([r, f]) => wire(r, EMPTY, f)),
      fc
        .tuple(flagsValid, featureMask(40), fc.boolean())
        .map(([f, bits, usual]) =>
          wire(R.SET_FEATURES, u64(usual ? maskOf(bits) | VERSION_1 : maskOf(bits)), f),
        ),
      fc
        .tuple(flagsValid, featureMask(20))
        .map(([f, bits]) => wire(R.SET_PROTOCOL_FEATURES, u64(maskOf(bits)), f)),
      fc
        .tuple(flagsValid, fc.array(fc.tuple(region, fdKind), { maxLength: 9 }))
        .map(([f, regions]) =>
          wire(
            R.SET_MEM_TABLE,
            concat(u32s(regions.length, 0), ...regions.map(([r]) => r)),
            f,
            regions.map(([, k]) => k),
          ),
        ),
      fc
        .tuple(flagsValid, fc.constantFrom(0n, 1n), region, fdKind, fc.boolean())
        .map(([f, pad, r, k, add]) =>
          add
            ? wire(R.ADD_MEM_REG, concat(u64(pad), r), f, [k])
            : wire(R.REM_MEM_REG, concat(u64(pad), r), f, pad === 0n ? [] : [k]),
        ),
      fc
        .tuple(
          fc.constantFrom(
            R.SET_VRING_NUM,
            R.SET_VRING_BASE,
            R.GET_VRING_BASE,
            R.SET_VRING_ENABLE,
            R.VRING_KICK,
          ),
          flagsValid,
          ringIndex,
          ringNum,
        )
        .map(([r, f, index, num]) => wire(r, u32s(index, num), f)),
      fc
        .tuple(flagsValid, ringIndex, fc.oneof(fc.constantFrom(0, 1), u32), addrU64, addrU64)
        .chain(([f, index, ringFlags, a, b]) =>
          fc
            .tuple(fc.constantFrom(a, b, a + 0x100n), fc.constantFrom(a, b, b + 0x200n), addrU64)
            .map(([c, d, log]) =>
              wire(
                R.SET_VRING_ADDR,
                concat(u32s(index, ringFlags), u64(a), u64(c), u64(d), u64(log)),
                f,
              ),
            ),
        ),
      fc
        .tuple(
          fc.constantFrom(R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR),
          flagsValid,
          fc.oneof(
            { weight: 8, arbitrary: fc.constantFrom(0, 1) },
            { weight: 1, arbitrary: fc.nat(255) },
          ),
          fc.boolean(),
          fdKind,
        )
        .map(([r, f, index, noFd, k]) =>
          wire(r, u64(index | (noFd ? 0x100 : 0)), f, noFd ? [] : [k]),
        ),
      fc
        .tuple(
          fc.constantFrom(R.GET_CONFIG, R.SET_CONFIG),
          flagsValid,
          fc.oneof(fc.nat(300), u32),
          fc.nat(256),
          fc.oneof(fc.constantFrom(0, 1), u32),
        )
        .chain(([r, f, offset, size, cfgFlags]) =>
          fc
            .uint8Array({ minLength: size, maxLength: size })
            .map((bytes) => wire(r, concat(u32s(offset, size, cfgFlags), bytes), f)),
        ),
      fc
        .tuple(flagsValid, sizeU64, sizeU64, fdKind)
        .map(([f, size, offset, k]) =>
          wire(R.SET_LOG_BASE, concat(u64(size), u64(offset)), f, [k]),
        ),
      fc.tuple(flagsValid, fdKind).map(([f, k]) => wire(R.SET_LOG_FD, EMPTY, f, [k])),
      fc
        .tuple(flagsValid, sizeU64, sizeU64, ringNum, ringNum, fdKind, fc.boolean())
        .map(([f, size, offset, queues, qsize, k, set]) => {
          const payload = concat(
            u64(size),
            u64(offset),
            new Uint8Array(new Uint16Array([queues & 0xffff, qsize & 0xffff]).buffer),
            new Uint8Array(4),
          );
          return set
            ? wire(R.SET_INFLIGHT_FD, payload, f, [k])
            : wire(R.GET_INFLIGHT_FD, payload, f);
        }),
      fc.tuple(flagsValid, fdKind).map(([f, k]) => wire(R.SET_BACKEND_REQ_FD, EMPTY, f, [k])),
      fc
        .tuple(flagsValid, fc.oneof(fc.nat(255).map(BigInt), u64Any))
        .map(([f, status]) => wire(R.SET_STATUS, u64(status), f)),
      // Requests virtq does not implement and numbers no spec assigns.
      fc
        .tuple(
          fc.oneof(
            fc.constantFrom(19, 20, 22, 23, 26, 27, 28, 29, 30, 33, 0, 41, 42, 255),
            fc.integer({ min: 41, max: 0xffff }),
            u32,
          ),
          flagsValid,
          fc.uint8Array({ maxLength: 64 }),
          fc.array(fdKind, { maxLength: 2 }),
        )
        .map(([r, f, payload, fds]) => wire(r, payload, f, fds)),
    ),
    cutting,
  )
  .map(([w, cut]) => withCut(w, cut));

/** (a) Random bytes, or a random header (any request, flags, size) over a random payload. */
export const randomWire: fc.Arbitrary<Wire> = fc.oneof(
  fc
    .record({ bytes: fc.uint8Array({ maxLength: 320 }), fds: fdList, cut: cutting })
    .map(({ bytes, fds, cut }) => withCut({ bytes, fds, splits: [], fdPiece: 0 }, cut)),
  fc
    .record({
      request: fc.oneof(fc.nat(45), u32),
      flags: flagsAny,
      payload: fc.uint8Array({ maxLength: 300 }),
      size: fc.oneof(
        { weight: 3, arbitrary: fc.constant(-1) },
        { weight: 1, arbitrary: fc.nat(300) },
        { weight: 1, arbitrary: u32 },
      ),
      fds: fdList,
      cut: cutting,
    })
    .map(({ request, flags, payload, size, fds, cut }) => {
      const bytes = concat(u32s(request, flags, size < 0 ? payload.length : size), payload);
      return withCut({ bytes, fds, splits: [], fdPiece: 0 }, cut);
    }),
);

export function negotiation(protocol: bigint = PROTOCOL_FEATURES): Wire[] {
  return [
    wire(R.GET_FEATURES),
    wire(R.GET_PROTOCOL_FEATURES),
    wire(R.SET_PROTOCOL_FEATURES, u64(protocol)),
    wire(R.GET_QUEUE_NUM),
    wire(R.SET_OWNER, EMPTY, NEED),
  ];
}

/**
 * The session QEMU runs up to running rings over the 'ram' memfd: ring k at `rings[k]`, with
 * the eventfds 'kick' and 'call' for ring 0, 'kick1' and 'call1' for ring 1.
 */
export function session(
  features: bigint,
  protocol: bigint = PROTOCOL_FEATURES,
  rings: readonly SplitLayout[] = [RING0],
): Wire[] {
  const packed = (features & F_PACKED) !== 0n;
  return [
    ...negotiation(protocol),
    wire(R.GET_CONFIG, concat(u32s(0, 8, 0), new Uint8Array(8))),
    wire(R.SET_FEATURES, u64(features), NEED),
    wire(R.SET_MEM_TABLE, memTable(), NEED, ['ram', 'ram']),
    ...rings.flatMap((ring, k) => [
      wire(R.SET_VRING_NUM, u32s(k, QSIZE), NEED),
      wire(R.SET_VRING_BASE, u32s(k, packed ? 0x8000 : 0), NEED),
      wire(R.SET_VRING_ADDR, vringAddr(k, ring.desc, ring.avail, ring.used), NEED),
      wire(R.SET_VRING_CALL, u64(k), NEED, [k === 0 ? 'call' : 'call1']),
      wire(R.SET_VRING_KICK, u64(k), NEED, [k === 0 ? 'kick' : 'kick1']),
      wire(R.SET_VRING_ENABLE, u32s(k, 1), NEED),
    ]),
  ];
}

/** Negotiated features: VERSION_1 and PROTOCOL_FEATURES, and any subset of `optional`. */
export function featureSet(optional: readonly bigint[]): fc.Arbitrary<bigint> {
  return fc
    .tuple(...optional.map(() => fc.boolean()))
    .map((on) => optional.reduce((f, bit, i) => (on[i] ? f | bit : f), VERSION_1 | PROTOCOL_BIT));
}

export const sessionProtocol = fc
  .subarray([
    VhostUserProtocolFeature.RESET_DEVICE,
    VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS,
    VhostUserProtocolFeature.LOG_SHMFD,
    VhostUserProtocolFeature.INFLIGHT_SHMFD,
  ])
  .map((bits) => PROTOCOL_FEATURES | maskOf(bits));

/** What QEMU may send once the ring runs. */
export const SESSION_TAIL: Wire[] = [
  wire(R.GET_VRING_BASE, u32s(0, 0)),
  wire(R.SET_VRING_ENABLE, u32s(0, 0), NEED),
  wire(R.SET_VRING_ENABLE, u32s(0, 1), NEED),
  wire(R.SET_VRING_KICK, u64(0), NEED, ['kick']),
  wire(R.SET_VRING_CALL, u64(0x100), NEED),
  // Memory hot-plug: a third region, then its removal; a whole new table under a running ring.
  wire(
    R.ADD_MEM_REG,
    concat(u64(0), u64(0x20_0000), u64(4096), u64(0x7d00_0000_0000), u64(0)),
    NEED,
    ['small'],
  ),
  wire(
    R.REM_MEM_REG,
    concat(u64(0), u64(0x20_0000), u64(4096), u64(0x7d00_0000_0000), u64(0)),
    NEED,
  ),
  wire(R.SET_MEM_TABLE, memTable(), NEED, ['ram', 'ram']),
  wire(R.GET_CONFIG, concat(u32s(0, 60, 0), new Uint8Array(60))),
  wire(R.SET_CONFIG, concat(u32s(20, 1, 0), new Uint8Array([1])), NEED),
  wire(R.SET_LOG_BASE, concat(u64(4096), u64(0)), NEED, ['small']),
  wire(R.GET_INFLIGHT_FD, concat(u64(0), u64(0), u32s(1 | (QSIZE << 16)), new Uint8Array(4))),
  wire(R.GET_STATUS),
  wire(R.RESET_DEVICE, EMPTY, NEED),
  wire(R.RESET_OWNER),
];
