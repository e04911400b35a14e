import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isVirtqError, VhostUserError, type VhostUserErrorCode } from '../../src/errors.js';
import {
  announcedMessageSize,
  decodeHeader,
  decodeMessage,
  encodeAckReply,
  encodeConfigErrorReply,
  encodeConfigReply,
  encodeInflightReply,
  encodeReply,
  encodeU64Reply,
  encodeVringStateReply,
  protocolFeatureMask,
  requestName,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD_SIZE,
  VhostUserFlags,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from '../../src/vhost-user/index.js';

const R = VhostUserRequest;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const TWO_53 = 2n ** 53n;

// ---------------------------------------------------------------------------------------------
// A front-end side encoder, written independently of the codec, used to hand-build messages.

class Bytes {
  private readonly parts: number[] = [];
  u8(v: number): this {
    this.parts.push(v & 0xff);
    return this;
  }
  u16(v: number): this {
    return this.u8(v).u8(v >>> 8);
  }
  u32(v: number): this {
    return this.u16(v & 0xffff).u16(Math.floor(v / 0x10000) & 0xffff);
  }
  u64(v: number | bigint): this {
    const b = BigInt(v);
    return this.u32(Number(b & 0xffff_ffffn)).u32(Number((b >> 32n) & 0xffff_ffffn));
  }
  raw(bytes: Uint8Array): this {
    for (const b of bytes) this.parts.push(b);
    return this;
  }
  get length(): number {
    return this.parts.length;
  }
  done(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

/** Header + payload, with the size field taken from the payload unless overridden. */
function frame(request: number, payload: Uint8Array, flags = 1, size = payload.length): Uint8Array {
  return new Bytes().u32(request).u32(flags).u32(size).raw(payload).done();
}

interface Region {
  guestPhysAddr: number | bigint;
  size: number | bigint;
  userAddr: number | bigint;
  mmapOffset: number | bigint;
}

function region(b: Bytes, r: Region): Bytes {
  return b.u64(r.guestPhysAddr).u64(r.size).u64(r.userAddr).u64(r.mmapOffset);
}

function memTable(regions: readonly Region[], count = regions.length): Uint8Array {
  const b = new Bytes().u32(count).u32(0);
  for (const r of regions) region(b, r);
  return b.done();
}

function singleRegion(r: Region): Uint8Array {
  return region(new Bytes().u64(0), r).done();
}

const u64 = (v: number | bigint): Uint8Array => new Bytes().u64(v).done();
const state = (index: number, num: number): Uint8Array => new Bytes().u32(index).u32(num).done();

/** Payload of the message `m` as a front-end would send it (padding zero). */
function payloadOf(m: VhostUserMessage): Uint8Array {
  switch (m.kind) {
    case 'GET_FEATURES':
    case 'GET_PROTOCOL_FEATURES':
    case 'SET_OWNER':
    case 'RESET_OWNER':
    case 'RESET_DEVICE':
    case 'GET_QUEUE_NUM':
    case 'GET_MAX_MEM_SLOTS':
    case 'GET_STATUS':
    case 'SET_LOG_FD':
    case 'SET_BACKEND_REQ_FD':
      return new Uint8Array(0);
    case 'SET_FEATURES':
    case 'SET_PROTOCOL_FEATURES':
      return u64(m.features);
    case 'SET_STATUS':
      return u64(m.status);
    case 'SET_MEM_TABLE':
      return memTable(m.regions);
    case 'ADD_MEM_REG':
    case 'REM_MEM_REG':
      return singleRegion(m.region);
    case 'SET_VRING_NUM':
    case 'SET_VRING_BASE':
    case 'GET_VRING_BASE':
    case 'SET_VRING_ENABLE':
    case 'VRING_KICK':
      return state(m.state.index, m.state.num);
    case 'SET_VRING_ADDR': {
      const a = m.addr;
      return new Bytes()
        .u32(a.index)
        .u32(a.flags)
        .u64(a.descUserAddr)
        .u64(a.usedUserAddr)
        .u64(a.availUserAddr)
        .u64(a.logGuestAddr)
        .done();
    }
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR':
      return u64(m.file.index | (m.file.noFd ? 0x100 : 0));
    case 'GET_CONFIG':
    case 'SET_CONFIG': {
      const c = m.config;
      return new Bytes().u32(c.offset).u32(c.size).u32(c.flags).raw(c.payload).done();
    }
    case 'SET_LOG_BASE':
      return new Bytes().u64(m.log.mmapSize).u64(m.log.mmapOffset).done();
    case 'GET_INFLIGHT_FD':
    case 'SET_INFLIGHT_FD': {
      const i = m.inflight;
      return new Bytes()
        .u64(i.mmapSize)
        .u64(i.mmapOffset)
        .u16(i.numQueues)
        .u16(i.queueSize)
        .u32(0)
        .done();
    }
  }
}

function encodeRequest(m: VhostUserMessage): Uint8Array {
  return frame(m.request, payloadOf(m), m.flags);
}

/** Payload byte ranges that are padding, which the codec ignores. */
function paddingOf(kind: string): [number, number] | null {
  switch (kind) {
    case 'SET_MEM_TABLE':
      return [4, 8];
    case 'ADD_MEM_REG':
    case 'REM_MEM_REG':
      return [0, 8];
    case 'GET_INFLIGHT_FD':
    case 'SET_INFLIGHT_FD':
      return [20, 24];
    default:
      return null;
  }
}

function expectError(
  bytes: Uint8Array,
  fds: number[],
  code: VhostUserErrorCode,
  request?: number,
): VhostUserError {
  let caught: unknown;
  try {
    decodeMessage(bytes, fds);
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(VhostUserError);
  const err = caught as VhostUserError;
  expect(err.code, err.message).toBe(code);
  expect(err.fds).toEqual(fds);
  if (request !== undefined) expect(err.request).toBe(request);
  expect(isVirtqError(err, code)).toBe(true);
  return err;
}

const base = (flags = 1, fds: number[] = []) => ({
  flags,
  needReply: (flags & 8) !== 0,
  fds,
});

// ---------------------------------------------------------------------------------------------

describe('protocol constants', () => {
  it('names request codes and feature bits as in the spec', () => {
    expect(R.GET_FEATURES).toBe(1);
    expect(R.SET_MEM_TABLE).toBe(5);
    expect(R.GET_PROTOCOL_FEATURES).toBe(15);
    expect(R.GET_CONFIG).toBe(24);
    expect(R.GET_INFLIGHT_FD).toBe(31);
    expect(R.RESET_DEVICE).toBe(34);
    expect(R.ADD_MEM_REG).toBe(37);
    expect(R.REM_MEM_REG).toBe(38);
    expect(requestName(36)).toBe('GET_MAX_MEM_SLOTS');
    expect(requestName(0)).toBeUndefined();
    expect(VhostUserProtocolFeature.MQ).toBe(0);
    expect(VhostUserProtocolFeature.REPLY_ACK).toBe(3);
    expect(VhostUserProtocolFeature.CONFIG).toBe(9);
    expect(VhostUserProtocolFeature.INFLIGHT_SHMFD).toBe(12);
    expect(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS).toBe(15);
    expect(protocolFeatureMask(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS)).toBe(0x8000n);
    expect(VhostUserFlags).toMatchObject({ VERSION: 1, REPLY: 4, NEED_REPLY: 8 });
  });
});

describe('decodeMessage: every request', () => {
  const regionA = {
    guestPhysAddr: 0,
    size: 0x8000_0000,
    userAddr: 0x7f00_0000_0000,
    mmapOffset: 0,
  };
  const regionB = {
    guestPhysAddr: 0x1_0000_0000,
    size: 0x4000_0000,
    userAddr: 0x7e00_0000_0000,
    mmapOffset: 0x8000_0000,
  };

  const cases: { name: string; bytes: Uint8Array; fds: number[]; expected: VhostUserMessage }[] = [
    ...(
      [
        'GET_FEATURES',
        'GET_PROTOCOL_FEATURES',
        'SET_OWNER',
        'RESET_OWNER',
        'RESET_DEVICE',
        'GET_QUEUE_NUM',
        'GET_MAX_MEM_SLOTS',
        'GET_STATUS',
      ] as const
    ).map((kind) => ({
      name: kind,
      bytes: frame(R[kind], new Uint8Array(0)),
      fds: [],
      expected: { ...base(), kind, request: R[kind] } as VhostUserMessage,
    })),
    {
      name: 'SET_FEATURES (full 64 bits)',
      bytes: frame(R.SET_FEATURES, u64(0xffff_ffff_ffff_ffffn)),
      fds: [],
      expected: {
        ...base(),
        kind: 'SET_FEATURES',
        request: R.SET_FEATURES,
        features: 0xffff_ffff_ffff_ffffn,
      },
    },
    {
      name: 'SET_PROTOCOL_FEATURES with NEED_REPLY',
      bytes: frame(R.SET_PROTOCOL_FEATURES, u64(0x8209n), 9),
      fds: [],
      expected: {
        ...base(9),
        kind: 'SET_PROTOCOL_FEATURES',
        request: R.SET_PROTOCOL_FEATURES,
        features: 0x8209n,
      },
    },
    {
      name: 'SET_STATUS',
      bytes: frame(R.SET_STATUS, u64(0x0f)),
      fds: [],
      expected: { ...base(), kind: 'SET_STATUS', request: R.SET_STATUS, status: 0x0f },
    },
    {
      name: 'SET_MEM_TABLE (two regions)',
      bytes: frame(R.SET_MEM_TABLE, memTable([regionA, regionB])),
      fds: [40, 41],
      expected: {
        ...base(1, [40, 41]),
        kind: 'SET_MEM_TABLE',
        request: R.SET_MEM_TABLE,
        regions: [
          { ...regionA, fd: 40 },
          { ...regionB, fd: 41 },
        ],
      },
    },
    {
      name: 'ADD_MEM_REG',
      bytes: frame(R.ADD_MEM_REG, singleRegion(regionB)),
      fds: [7],
      expected: {
        ...base(1, [7]),
        kind: 'ADD_MEM_REG',
        request: R.ADD_MEM_REG,
        region: { ...regionB, fd: 7 },
      },
    },
    {
      name: 'REM_MEM_REG',
      bytes: frame(R.REM_MEM_REG, singleRegion(regionA)),
      fds: [],
      expected: { ...base(), kind: 'REM_MEM_REG', request: R.REM_MEM_REG, region: regionA },
    },
    {
      name: 'REM_MEM_REG with the tolerated stray fd',
      bytes: frame(R.REM_MEM_REG, singleRegion(regionA)),
      fds: [9],
      expected: { ...base(1, [9]), kind: 'REM_MEM_REG', request: R.REM_MEM_REG, region: regionA },
    },
    ...(['SET_VRING_NUM', 'SET_VRING_BASE', 'GET_VRING_BASE'] as const).map((kind) => ({
      name: kind,
      bytes: frame(R[kind], state(3, 0xffff_ffff)),
      fds: [],
      expected: {
        ...base(),
        kind,
        request: R[kind],
        state: { index: 3, num: 0xffff_ffff },
      } as VhostUserMessage,
    })),
    {
      name: 'SET_VRING_ENABLE',
      bytes: frame(R.SET_VRING_ENABLE, state(1, 1)),
      fds: [],
      expected: {
        ...base(),
        kind: 'SET_VRING_ENABLE',
        request: R.SET_VRING_ENABLE,
        state: { index: 1, num: 1 },
      },
    },
    {
      name: 'VRING_KICK',
      bytes: frame(R.VRING_KICK, state(2, 0)),
      fds: [],
      expected: {
        ...base(),
        kind: 'VRING_KICK',
        request: R.VRING_KICK,
        state: { index: 2, num: 0 },
      },
    },
    {
      name: 'SET_VRING_ADDR',
      bytes: frame(
        R.SET_VRING_ADDR,
        new Bytes()
          .u32(5)
          .u32(1)
          .u64(0x7f00_0000_1000)
          .u64(0x7f00_0000_3000)
          .u64(0x7f00_0000_2000)
          .u64(MAX_SAFE)
          .done(),
      ),
      fds: [],
      expected: {
        ...base(),
        kind: 'SET_VRING_ADDR',
        request: R.SET_VRING_ADDR,
        addr: {
          index: 5,
          flags: 1,
          descUserAddr: 0x7f00_0000_1000,
          usedUserAddr: 0x7f00_0000_3000,
          availUserAddr: 0x7f00_0000_2000,
          logGuestAddr: MAX_SAFE,
        },
      },
    },
    ...(['SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR'] as const).flatMap((kind) => [
      {
        name: `${kind} with an fd`,
        bytes: frame(R[kind], u64(0xff)),
        fds: [12],
        expected: {
          ...base(1, [12]),
          kind,
          request: R[kind],
          file: { index: 0xff, noFd: false, fd: 12 },
        } as VhostUserMessage,
      },
      {
        name: `${kind} with NOFD`,
        bytes: frame(R[kind], u64(0x101)),
        fds: [],
        expected: {
          ...base(),
          kind,
          request: R[kind],
          file: { index: 1, noFd: true, fd: null },
        } as VhostUserMessage,
      },
    ]),
    {
      name: 'GET_CONFIG',
      bytes: frame(R.GET_CONFIG, new Bytes().u32(0).u32(4).u32(0).u32(0).done()),
      fds: [],
      expected: {
        ...base(),
        kind: 'GET_CONFIG',
        request: R.GET_CONFIG,
        config: { offset: 0, size: 4, flags: 0, payload: new Uint8Array(4) },
      },
    },
    {
      name: 'SET_CONFIG (migration, 256 bytes)',
      bytes: frame(
        R.SET_CONFIG,
        new Bytes()
          .u32(0x10)
          .u32(256)
          .u32(1)
          .raw(Uint8Array.from({ length: 256 }, (_, i) => i))
          .done(),
      ),
      fds: [],
      expected: {
        ...base(),
        kind: 'SET_CONFIG',
        request: R.SET_CONFIG,
        config: {
          offset: 0x10,
          size: 256,
          flags: 1,
          payload: Uint8Array.from({ length: 256 }, (_, i) => i),
        },
      },
    },
    {
      name: 'SET_LOG_BASE',
      bytes: frame(R.SET_LOG_BASE, new Bytes().u64(0x10_0000).u64(0x1000).done()),
      fds: [30],
      expected: {
        ...base(1, [30]),
        kind: 'SET_LOG_BASE',
        request: R.SET_LOG_BASE,
        log: { mmapSize: 0x10_0000, mmapOffset: 0x1000 },
        fd: 30,
      },
    },
    {
      name: 'SET_LOG_FD',
      bytes: frame(R.SET_LOG_FD, new Uint8Array(0)),
      fds: [31],
      expected: { ...base(1, [31]), kind: 'SET_LOG_FD', request: R.SET_LOG_FD, fd: 31 },
    },
    {
      name: 'SET_BACKEND_REQ_FD',
      bytes: frame(R.SET_BACKEND_REQ_FD, new Uint8Array(0)),
      fds: [32],
      expected: {
        ...base(1, [32]),
        kind: 'SET_BACKEND_REQ_FD',
        request: R.SET_BACKEND_REQ_FD,
        fd: 32,
      },
    },
    {
      name: 'GET_INFLIGHT_FD',
      bytes: frame(
        R.GET_INFLIGHT_FD,
        new Bytes().u64(0).u64(0).u16(2).u16(256).u32(0xdead_beef).done(),
      ),
      fds: [],
      expected: {
        ...base(),
        kind: 'GET_INFLIGHT_FD',
        request: R.GET_INFLIGHT_FD,
        inflight: { mmapSize: 0, mmapOffset: 0, numQueues: 2, queueSize: 256 },
      },
    },
    {
      name: 'SET_INFLIGHT_FD',
      bytes: frame(R.SET_INFLIGHT_FD, new Bytes().u64(0x2000).u64(0).u16(1).u16(128).u32(0).done()),
      fds: [33],
      expected: {
        ...base(1, [33]),
        kind: 'SET_INFLIGHT_FD',
        request: R.SET_INFLIGHT_FD,
        inflight: { mmapSize: 0x2000, mmapOffset: 0, numQueues: 1, queueSize: 128 },
        fd: 33,
      },
    },
  ];

  it.each(cases)('$name', ({ bytes, fds, expected }) => {
    const m = decodeMessage(bytes, fds);
    expect(m).toEqual(expected);
    expect(m.fds).not.toBe(fds);
  });

  it('covers every request the brief names', () => {
    const kinds = new Set(cases.map((c) => c.expected.kind));
    for (const k of [
      'GET_FEATURES',
      'SET_FEATURES',
      'GET_PROTOCOL_FEATURES',
      'SET_PROTOCOL_FEATURES',
      'SET_OWNER',
      'RESET_OWNER',
      'RESET_DEVICE',
      'GET_QUEUE_NUM',
      'SET_MEM_TABLE',
      'GET_MAX_MEM_SLOTS',
      'ADD_MEM_REG',
      'REM_MEM_REG',
      'SET_VRING_NUM',
      'SET_VRING_ADDR',
      'SET_VRING_BASE',
      'GET_VRING_BASE',
      'SET_VRING_KICK',
      'SET_VRING_CALL',
      'SET_VRING_ERR',
      'SET_VRING_ENABLE',
      'GET_CONFIG',
      'SET_CONFIG',
      'SET_LOG_BASE',
      'SET_LOG_FD',
      'GET_INFLIGHT_FD',
      'SET_INFLIGHT_FD',
    ]) {
      expect(kinds.has(k as VhostUserMessage['kind']), k).toBe(true);
    }
  });

  it('round-trips through the test encoder', () => {
    for (const c of cases) assertConsistent(c.expected, c.bytes, c.fds);
  });

  it('accepts a view into a larger buffer', () => {
    const inner = frame(R.SET_VRING_NUM, state(0, 256));
    const outer = new Uint8Array(inner.length + 7);
    outer.set(inner, 5);
    const m = decodeMessage(outer.subarray(5, 5 + inner.length), []);
    expect(m).toMatchObject({ kind: 'SET_VRING_NUM', state: { index: 0, num: 256 } });
  });

  it('copies the config payload out of the input buffer', () => {
    const bytes = frame(R.SET_CONFIG, new Bytes().u32(0).u32(2).u32(0).u8(1).u8(2).done());
    const m = decodeMessage(bytes, []);
    bytes.fill(0xee);
    expect(m.kind === 'SET_CONFIG' && Array.from(m.config.payload)).toEqual([1, 2]);
  });
});

describe('headers and framing', () => {
  it('reads the three header fields and the announced length', () => {
    const bytes = frame(R.SET_VRING_ADDR, new Uint8Array(40), 9);
    expect(decodeHeader(bytes)).toEqual({ request: 9, flags: 9, size: 40 });
    expect(announcedMessageSize(bytes.subarray(0, 12))).toBe(52);
    expect(VHOST_USER_HEADER_SIZE).toBe(12);
  });

  it('needs the whole header', () => {
    const err = (() => {
      try {
        decodeHeader(new Uint8Array(11), [3]);
      } catch (e) {
        return e as VhostUserError;
      }
      throw new Error('no error');
    })();
    expect(err.code).toBe('VHOST_BAD_HEADER');
    expect(err.request).toBe(-1);
    expect(err.fds).toEqual([3]);
    expectError(new Uint8Array(0), [], 'VHOST_BAD_HEADER', -1);
  });

  it('rejects a header announcing more than any request carries', () => {
    const header = new Bytes()
      .u32(R.SET_CONFIG)
      .u32(1)
      .u32(VHOST_USER_MAX_PAYLOAD_SIZE + 1)
      .done();
    expect(() => announcedMessageSize(header)).toThrow(VhostUserError);
    expect(announcedMessageSize(new Bytes().u32(1).u32(1).u32(268).done())).toBe(280);
    expectError(frame(R.SET_OWNER, new Uint8Array(0), 1, 0xffff_ffff), [4], 'VHOST_BAD_SIZE');
  });

  it.each([0, 2, 3, 0x7, 0xa])('rejects version bits in flags %i', (flags) => {
    expectError(frame(R.GET_FEATURES, new Uint8Array(0), flags), [5], 'VHOST_BAD_VERSION', 1);
  });

  it('rejects the REPLY flag and undefined flag bits on a request', () => {
    expectError(frame(R.GET_FEATURES, new Uint8Array(0), 5), [], 'VHOST_BAD_HEADER', 1);
    expectError(frame(R.GET_FEATURES, new Uint8Array(0), 0x11), [6], 'VHOST_BAD_HEADER');
    expectError(frame(R.GET_FEATURES, new Uint8Array(0), 0x8000_0001), [], 'VHOST_BAD_HEADER');
  });

  it('rejects bytes that disagree with the size field', () => {
    const good = frame(R.SET_FEATURES, u64(1));
    expectError(good.subarray(0, good.length - 1), [], 'VHOST_BAD_SIZE');
    expectError(Uint8Array.from([...good, 0]), [8], 'VHOST_BAD_SIZE');
  });

  it('rejects unknown and unsupported request codes', () => {
    for (const code of [0, 41, 1000, 0xffff_ffff, R.SEND_RARP, R.IOTLB_MSG, R.POSTCOPY_ADVISE]) {
      const err = expectError(frame(code, new Uint8Array(0)), [1, 2], 'VHOST_UNKNOWN_REQUEST');
      expect(err.request).toBe(code);
    }
  });

  it('rejects an fds argument that is not a list of descriptors (host misuse)', () => {
    const bytes = frame(R.GET_FEATURES, new Uint8Array(0));
    expect(() => decodeMessage(bytes, [-1])).toThrow(TypeError);
    expect(() => decodeMessage(bytes, [1.5])).toThrow(TypeError);
    expect(() => decodeMessage(bytes, null as unknown as number[])).toThrow(TypeError);
  });
});

describe('payload size and fd count of each request', () => {
  const fixed: [keyof typeof R, number, number][] = [
    ['GET_FEATURES', 0, 0],
    ['SET_FEATURES', 8, 0],
    ['GET_PROTOCOL_FEATURES', 0, 0],
    ['SET_PROTOCOL_FEATURES', 8, 0],
    ['SET_OWNER', 0, 0],
    ['RESET_OWNER', 0, 0],
    ['RESET_DEVICE', 0, 0],
    ['GET_QUEUE_NUM', 0, 0],
    ['GET_MAX_MEM_SLOTS', 0, 0],
    ['GET_STATUS', 0, 0],
    ['SET_STATUS', 8, 0],
    ['ADD_MEM_REG', 40, 1],
    ['REM_MEM_REG', 40, 0],
    ['SET_VRING_NUM', 8, 0],
    ['SET_VRING_BASE', 8, 0],
    ['GET_VRING_BASE', 8, 0],
    ['SET_VRING_ENABLE', 8, 0],
    ['VRING_KICK', 8, 0],
    ['SET_VRING_ADDR', 40, 0],
    ['SET_VRING_KICK', 8, 1],
    ['SET_VRING_CALL', 8, 1],
    ['SET_VRING_ERR', 8, 1],
    ['SET_LOG_BASE', 16, 1],
    ['SET_LOG_FD', 0, 1],
    ['SET_BACKEND_REQ_FD', 0, 1],
    ['GET_INFLIGHT_FD', 24, 0],
    ['SET_INFLIGHT_FD', 24, 1],
  ];

  /** A payload of `size` bytes that is valid for `kind` when `size` is right. */
  function validPayload(kind: keyof typeof R, size: number): Uint8Array {
    const p = new Uint8Array(size);
    if ((kind === 'ADD_MEM_REG' || kind === 'REM_MEM_REG') && size >= 24) p[16] = 1; // size 1
    return p;
  }

  it.each(fixed)('%s carries exactly %i payload bytes and %i fd(s)', (kind, size, nfds) => {
    const fds = Array.from({ length: nfds }, (_, i) => 100 + i);
    expect(decodeMessage(frame(R[kind], validPayload(kind, size)), fds).kind).toBe(kind);
    for (const wrong of [size - 1, size + 1, size + 8, 0].filter((s) => s >= 0 && s !== size)) {
      expectError(frame(R[kind], validPayload(kind, wrong)), fds, 'VHOST_BAD_SIZE', R[kind]);
    }
    // REM_MEM_REG tolerates one stray fd (see below), so it takes two to be too many.
    const tooMany = kind === 'REM_MEM_REG' ? [200, 201] : [...fds, 200];
    expectError(frame(R[kind], validPayload(kind, size)), tooMany, 'VHOST_BAD_FDS', R[kind]);
    if (nfds > 0) {
      expectError(frame(R[kind], validPayload(kind, size)), [], 'VHOST_BAD_FDS', R[kind]);
    }
  });

  it('REM_MEM_REG tolerates one fd but not two', () => {
    const bytes = frame(R.REM_MEM_REG, validPayload('REM_MEM_REG', 40));
    expect(decodeMessage(bytes, [3]).fds).toEqual([3]);
    expectError(bytes, [3, 4], 'VHOST_BAD_FDS');
  });
});

describe('SET_MEM_TABLE validation', () => {
  const r = (guestPhysAddr: number, size: number): Region => ({
    guestPhysAddr,
    size,
    userAddr: 0x7f00_0000_0000 + guestPhysAddr,
    mmapOffset: 0,
  });
  const fdsFor = (n: number) => Array.from({ length: n }, (_, i) => 10 + i);

  it('accepts 1 to 8 adjacent regions', () => {
    for (let n = 1; n <= 8; n++) {
      const regions = Array.from({ length: n }, (_, i) => r(i * 0x1000, 0x1000));
      const m = decodeMessage(frame(R.SET_MEM_TABLE, memTable(regions)), fdsFor(n));
      expect(m.kind === 'SET_MEM_TABLE' && m.regions.map((x) => x.fd)).toEqual(fdsFor(n));
    }
  });

  it('rejects a region count outside 1..8', () => {
    expectError(frame(R.SET_MEM_TABLE, memTable([])), [], 'VHOST_BAD_PAYLOAD');
    const nine = Array.from({ length: 9 }, (_, i) => r(i * 0x1000, 0x1000));
    // Nine regions exceed every payload size the header may announce.
    expectError(frame(R.SET_MEM_TABLE, memTable(nine)), fdsFor(9), 'VHOST_BAD_SIZE');
    expectError(
      frame(R.SET_MEM_TABLE, memTable(nine.slice(0, 8), 9)),
      fdsFor(9),
      'VHOST_BAD_PAYLOAD',
    );
    expectError(frame(R.SET_MEM_TABLE, memTable([], 0xffff_ffff)), [], 'VHOST_BAD_PAYLOAD');
  });

  it('rejects a size that does not match the region count', () => {
    const two = [r(0, 0x1000), r(0x1000, 0x1000)];
    expectError(frame(R.SET_MEM_TABLE, memTable(two, 1)), fdsFor(1), 'VHOST_BAD_SIZE');
    expectError(frame(R.SET_MEM_TABLE, memTable(two, 3)), fdsFor(3), 'VHOST_BAD_SIZE');
    expectError(frame(R.SET_MEM_TABLE, new Uint8Array(4)), [], 'VHOST_BAD_SIZE');
    const padded = Uint8Array.from([...memTable(two), 0, 0, 0, 0]);
    expectError(frame(R.SET_MEM_TABLE, padded), fdsFor(2), 'VHOST_BAD_SIZE');
  });

  it('needs exactly one fd per region', () => {
    const two = memTable([r(0, 0x1000), r(0x1000, 0x1000)]);
    expectError(frame(R.SET_MEM_TABLE, two), fdsFor(1), 'VHOST_BAD_FDS');
    expectError(frame(R.SET_MEM_TABLE, two), fdsFor(3), 'VHOST_BAD_FDS');
    expectError(frame(R.SET_MEM_TABLE, two), [], 'VHOST_BAD_FDS');
  });

  it('rejects overlapping guest ranges, in either order', () => {
    const cases: Region[][] = [
      [r(0, 0x2000), r(0x1000, 0x1000)],
      [r(0x1000, 0x1000), r(0, 0x2000)],
      [r(0, 0x1000), r(0, 0x1000)],
      [r(0x1000, 0x1000), r(0x3000, 0x1000), r(0, 0x10000)],
    ];
    for (const regions of cases) {
      expectError(
        frame(R.SET_MEM_TABLE, memTable(regions)),
        fdsFor(regions.length),
        'VHOST_BAD_PAYLOAD',
      );
    }
  });

  it('rejects zero-size regions and values at or above 2^53', () => {
    const ok = r(0, 0x1000);
    const bad: Region[] = [
      { ...ok, size: 0 },
      { ...ok, guestPhysAddr: TWO_53 },
      { ...ok, size: TWO_53 },
      { ...ok, userAddr: TWO_53 },
      { ...ok, mmapOffset: 0xffff_ffff_ffff_ffffn },
      { ...ok, guestPhysAddr: MAX_SAFE },
      { ...ok, userAddr: MAX_SAFE - 0xfff },
      { ...ok, mmapOffset: MAX_SAFE - 0x800 },
    ];
    for (const x of bad) {
      expectError(frame(R.SET_MEM_TABLE, memTable([x])), [1], 'VHOST_BAD_PAYLOAD');
      expectError(frame(R.ADD_MEM_REG, singleRegion(x)), [1], 'VHOST_BAD_PAYLOAD');
      expectError(frame(R.REM_MEM_REG, singleRegion(x)), [], 'VHOST_BAD_PAYLOAD');
    }
    const edge = { ...ok, guestPhysAddr: MAX_SAFE - 0x1000 };
    expect(decodeMessage(frame(R.SET_MEM_TABLE, memTable([edge])), [1]).kind).toBe('SET_MEM_TABLE');
  });
});

describe('payload rules of the other requests', () => {
  it('vring fd messages: NOFD decides the fd count, other bits are reserved', () => {
    for (const kind of ['SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR'] as const) {
      expectError(frame(R[kind], u64(0x100)), [3], 'VHOST_BAD_FDS');
      expectError(frame(R[kind], u64(0)), [], 'VHOST_BAD_FDS');
      expectError(frame(R[kind], u64(0)), [3, 4], 'VHOST_BAD_FDS');
      expectError(frame(R[kind], u64(0x200)), [3], 'VHOST_BAD_PAYLOAD');
      expectError(frame(R[kind], u64(1n << 63n)), [3], 'VHOST_BAD_PAYLOAD');
    }
  });

  it('SET_VRING_ADDR: only the log flag, addresses below 2^53', () => {
    const addr = (flags: number, desc: number | bigint, log: number | bigint = 0) =>
      frame(
        R.SET_VRING_ADDR,
        new Bytes().u32(0).u32(flags).u64(desc).u64(0).u64(0).u64(log).done(),
      );
    expect(decodeMessage(addr(1, 0x1000), []).kind).toBe('SET_VRING_ADDR');
    expectError(addr(2, 0x1000), [], 'VHOST_BAD_PAYLOAD');
    expectError(addr(0x8000_0000, 0x1000), [], 'VHOST_BAD_PAYLOAD');
    expectError(addr(0, TWO_53), [], 'VHOST_BAD_PAYLOAD');
    expectError(addr(0, 0, 0xffff_ffff_ffff_f000n), [], 'VHOST_BAD_PAYLOAD');
  });

  it('SET_VRING_ENABLE takes 0 or 1; VRING_KICK num is reserved', () => {
    expect(decodeMessage(frame(R.SET_VRING_ENABLE, state(0, 0)), []).kind).toBe('SET_VRING_ENABLE');
    expectError(frame(R.SET_VRING_ENABLE, state(0, 2)), [], 'VHOST_BAD_PAYLOAD');
    expectError(frame(R.VRING_KICK, state(0, 1)), [], 'VHOST_BAD_PAYLOAD');
  });

  it('SET_STATUS carries an 8-bit status', () => {
    expectError(frame(R.SET_STATUS, u64(0x100)), [], 'VHOST_BAD_PAYLOAD');
  });

  it('GET/SET_CONFIG: size at most 256 and exactly filling the payload', () => {
    for (const kind of ['GET_CONFIG', 'SET_CONFIG'] as const) {
      const cfg = (size: number, actual = size) =>
        frame(R[kind], new Bytes().u32(0).u32(size).u32(0).raw(new Uint8Array(actual)).done());
      expect(decodeMessage(cfg(0), []).kind).toBe(kind);
      expectError(cfg(257), [], 'VHOST_BAD_SIZE');
      expectError(cfg(8, 7), [], 'VHOST_BAD_SIZE');
      expectError(cfg(8, 9), [], 'VHOST_BAD_SIZE');
      expectError(cfg(0xffff_ffff, 0), [], 'VHOST_BAD_SIZE');
      expectError(frame(R[kind], new Uint8Array(11)), [], 'VHOST_BAD_SIZE');
      expectError(cfg(4), [7], 'VHOST_BAD_FDS');
    }
  });

  it('SET_LOG_BASE and the inflight messages: safe sizes and offsets', () => {
    expectError(
      frame(R.SET_LOG_BASE, new Bytes().u64(TWO_53).u64(0).done()),
      [3],
      'VHOST_BAD_PAYLOAD',
    );
    expectError(
      frame(R.SET_LOG_BASE, new Bytes().u64(MAX_SAFE).u64(1).done()),
      [3],
      'VHOST_BAD_PAYLOAD',
    );
    expectError(
      frame(R.SET_INFLIGHT_FD, new Bytes().u64(0).u64(TWO_53).u16(1).u16(1).u32(0).done()),
      [3],
      'VHOST_BAD_PAYLOAD',
    );
  });

  it('errors carry a copy of the fds and read as VirtqErrors', () => {
    const fds = [1, 2, 3];
    const err = expectError(frame(R.SET_LOG_FD, new Uint8Array(0)), fds, 'VHOST_BAD_FDS');
    expect(err.fds).not.toBe(fds);
    expect(err.name).toBe('VhostUserError');
    expect(err.message).toContain('SET_LOG_FD');
  });
});

describe('reply encoders', () => {
  const header = (request: number, size: number) =>
    Array.from(new Bytes().u32(request).u32(5).u32(size).done());

  it('u64 replies and REPLY_ACK', () => {
    expect(Array.from(encodeU64Reply(R.GET_FEATURES, 0x1_4000_0000n))).toEqual([
      ...header(1, 8),
      0,
      0,
      0,
      0x40,
      1,
      0,
      0,
      0,
    ]);
    expect(Array.from(encodeU64Reply(R.GET_QUEUE_NUM, 2))).toEqual([...header(17, 8), ...u64(2)]);
    expect(Array.from(encodeAckReply(R.SET_MEM_TABLE))).toEqual([...header(5, 8), ...u64(0)]);
    expect(Array.from(encodeAckReply(R.SET_VRING_ADDR, 1))).toEqual([...header(9, 8), ...u64(1)]);
    expect(Array.from(encodeU64Reply(R.GET_PROTOCOL_FEATURES, 0xffff_ffff_ffff_ffffn))).toEqual([
      ...header(15, 8),
      ...new Array(8).fill(0xff),
    ]);
  });

  it('vring state reply (GET_VRING_BASE)', () => {
    expect(Array.from(encodeVringStateReply(R.GET_VRING_BASE, { index: 1, num: 0x1234 }))).toEqual([
      ...header(11, 8),
      1,
      0,
      0,
      0,
      0x34,
      0x12,
      0,
      0,
    ]);
  });

  it('config reply and its empty error form', () => {
    const bytes = encodeConfigReply({ offset: 4, flags: 0, payload: Uint8Array.of(9, 8, 7) });
    expect(Array.from(bytes)).toEqual([
      ...header(24, 15),
      ...new Bytes().u32(4).u32(3).u32(0).done(),
      9,
      8,
      7,
    ]);
    expect(Array.from(encodeConfigErrorReply())).toEqual(header(24, 0));
    expect(() => encodeConfigReply({ offset: 0, flags: 0, payload: new Uint8Array(257) })).toThrow(
      RangeError,
    );
  });

  it('inflight reply is 24 bytes with zero tail padding', () => {
    const bytes = encodeInflightReply({
      mmapSize: 0x3000,
      mmapOffset: 0x10,
      numQueues: 2,
      queueSize: 256,
    });
    expect(Array.from(bytes)).toEqual([
      ...header(31, 24),
      ...new Bytes().u64(0x3000).u64(0x10).u16(2).u16(256).u32(0).done(),
    ]);
  });

  it('generic replies, and RangeError on impossible arguments', () => {
    expect(Array.from(encodeReply(R.SET_MEM_TABLE))).toEqual(header(5, 0));
    expect(Array.from(encodeReply(R.GET_STATUS, Uint8Array.of(1)))).toEqual([...header(40, 1), 1]);
    expect(() => encodeU64Reply(1, -1)).toThrow(RangeError);
    expect(() => encodeU64Reply(1, 2n ** 64n)).toThrow(RangeError);
    expect(() => encodeU64Reply(1, 0.5)).toThrow(RangeError);
    expect(() => encodeVringStateReply(11, { index: -1, num: 0 })).toThrow(RangeError);
    expect(() =>
      encodeInflightReply({ mmapSize: 0, mmapOffset: 0, numQueues: 0x10000, queueSize: 1 }),
    ).toThrow(RangeError);
    expect(() => encodeReply(2 ** 32)).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------------------------
// Fuzzing

const fdArb = fc.integer({ min: 0, max: 1 << 20 });
const safeArb = fc.maxSafeNat();
const u32Arb = fc.nat({ max: 0xffff_ffff });
const flagsArb = fc.constantFrom(1, 9);
/** Sizes and offsets of mappings: below 2^52, so that any two of them add up below 2^53. */
const upTo52 = fc.integer({ min: 0, max: 2 ** 52 - 1 });

const mk = <T extends object>(kind: VhostUserMessage['kind'], flags: number, fds: number[], p: T) =>
  ({
    kind,
    request: R[kind],
    flags,
    needReply: (flags & 8) !== 0,
    fds,
    ...p,
  }) as unknown as VhostUserMessage;

const noPayloadKinds = [
  'GET_FEATURES',
  'GET_PROTOCOL_FEATURES',
  'SET_OWNER',
  'RESET_OWNER',
  'RESET_DEVICE',
  'GET_QUEUE_NUM',
  'GET_MAX_MEM_SLOTS',
  'GET_STATUS',
] as const;

const regionsArb = fc
  .array(
    fc.record({
      gap: fc.integer({ min: 0, max: 2 ** 40 }),
      size: fc.integer({ min: 1, max: 2 ** 40 }),
      userAddr: upTo52,
      mmapOffset: upTo52,
      fd: fdArb,
    }),
    { minLength: 1, maxLength: 8 },
  )
  .chain((raw) =>
    fc.shuffledSubarray(raw, { minLength: raw.length, maxLength: raw.length }).map((order) => {
      let at = 0;
      const placed = raw.map((x) => {
        const guestPhysAddr = at + x.gap;
        at = guestPhysAddr + x.size;
        return {
          guestPhysAddr,
          size: x.size,
          userAddr: x.userAddr,
          mmapOffset: x.mmapOffset,
          fd: x.fd,
        };
      });
      // Regions need not be sorted by guest address.
      return order.map((x) => placed[raw.indexOf(x)]!);
    }),
  );

const validMessageArb: fc.Arbitrary<VhostUserMessage> = fc.oneof(
  fc.tuple(fc.constantFrom(...noPayloadKinds), flagsArb).map(([k, f]) => mk(k, f, [], {})),
  fc
    .tuple(
      fc.constantFrom(...(['SET_FEATURES', 'SET_PROTOCOL_FEATURES'] as const)),
      flagsArb,
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    )
    .map(([k, f, features]) => mk(k, f, [], { features })),
  fc
    .tuple(flagsArb, fc.nat({ max: 255 }))
    .map(([f, status]) => mk('SET_STATUS', f, [], { status })),
  fc.tuple(flagsArb, regionsArb).map(([f, regions]) =>
    mk(
      'SET_MEM_TABLE',
      f,
      regions.map((r) => r.fd),
      { regions },
    ),
  ),
  fc.tuple(flagsArb, regionsArb).map(([f, [r]]) => mk('ADD_MEM_REG', f, [r!.fd], { region: r })),
  fc.tuple(flagsArb, regionsArb, fc.boolean()).map(([f, [r], stray]) => {
    const { fd, ...region } = r!;
    return mk('REM_MEM_REG', f, stray ? [fd] : [], { region });
  }),
  fc
    .tuple(
      fc.constantFrom(...(['SET_VRING_NUM', 'SET_VRING_BASE', 'GET_VRING_BASE'] as const)),
      flagsArb,
      u32Arb,
      u32Arb,
    )
    .map(([k, f, index, num]) => mk(k, f, [], { state: { index, num } })),
  fc
    .tuple(flagsArb, u32Arb, fc.nat({ max: 1 }))
    .map(([f, index, num]) => mk('SET_VRING_ENABLE', f, [], { state: { index, num } })),
  fc
    .tuple(flagsArb, u32Arb)
    .map(([f, index]) => mk('VRING_KICK', f, [], { state: { index, num: 0 } })),
  fc
    .tuple(flagsArb, u32Arb, fc.nat({ max: 1 }), safeArb, safeArb, safeArb, safeArb)
    .map(([f, index, flags, descUserAddr, usedUserAddr, availUserAddr, logGuestAddr]) =>
      mk('SET_VRING_ADDR', f, [], {
        addr: { index, flags, descUserAddr, usedUserAddr, availUserAddr, logGuestAddr },
      }),
    ),
  fc
    .tuple(
      fc.constantFrom(...(['SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR'] as const)),
      flagsArb,
      fc.nat({ max: 255 }),
      fc.option(fdArb, { nil: null }),
    )
    .map(([k, f, index, fd]) =>
      mk(k, f, fd === null ? [] : [fd], { file: { index, noFd: fd === null, fd } }),
    ),
  fc
    .tuple(
      fc.constantFrom(...(['GET_CONFIG', 'SET_CONFIG'] as const)),
      flagsArb,
      u32Arb,
      u32Arb,
      fc.uint8Array({ maxLength: 256 }),
    )
    .map(([k, f, offset, flags, payload]) =>
      mk(k, f, [], { config: { offset, size: payload.length, flags, payload } }),
    ),
  fc
    .tuple(flagsArb, upTo52, upTo52, fdArb)
    .map(([f, mmapSize, mmapOffset, fd]) =>
      mk('SET_LOG_BASE', f, [fd], { log: { mmapSize, mmapOffset }, fd }),
    ),
  fc
    .tuple(fc.constantFrom(...(['SET_LOG_FD', 'SET_BACKEND_REQ_FD'] as const)), flagsArb, fdArb)
    .map(([k, f, fd]) => mk(k, f, [fd], { fd })),
  fc
    .tuple(
      fc.boolean(),
      flagsArb,
      upTo52,
      upTo52,
      fc.nat({ max: 0xffff }),
      fc.nat({ max: 0xffff }),
      fdArb,
    )
    .map(([set, f, mmapSize, mmapOffset, numQueues, queueSize, fd]) =>
      set
        ? mk('SET_INFLIGHT_FD', f, [fd], {
            inflight: { mmapSize, mmapOffset, numQueues, queueSize },
            fd,
          })
        : mk('GET_INFLIGHT_FD', f, [], {
            inflight: { mmapSize, mmapOffset, numQueues, queueSize },
          }),
    ),
);

class Inconsistent extends Error {}

function check(cond: boolean, what: string): void {
  if (!cond) throw new Inconsistent(what);
}

const isSafe = (n: number) => Number.isSafeInteger(n) && n >= 0;

function sameFds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Everything a successfully decoded message must satisfy, against the bytes it came from. */
function assertConsistent(m: VhostUserMessage, bytes: Uint8Array, fds: readonly number[]): void {
  check(sameFds(m.fds, fds), 'fds');
  check(requestName(m.request) === m.kind, 'kind/request');
  const again = encodeRequest(m);
  const pad = paddingOf(m.kind);
  if (pad !== null && again.length === bytes.length) {
    for (let i = pad[0]; i < pad[1]; i++) again[12 + i] = bytes[12 + i]!;
  }
  check(again.length === bytes.length && again.every((b, i) => b === bytes[i]), 're-encoding');
  switch (m.kind) {
    case 'SET_MEM_TABLE': {
      check(m.regions.length >= 1 && m.regions.length <= 8, 'region count');
      check(
        sameFds(
          m.regions.map((r) => r.fd),
          fds,
        ),
        'region fds',
      );
      for (const [i, a] of m.regions.entries()) {
        check(a.size > 0 && isSafe(a.guestPhysAddr + a.size), 'region range');
        check(isSafe(a.userAddr + a.size) && isSafe(a.mmapOffset + a.size), 'region range');
        for (const b of m.regions.slice(i + 1)) {
          check(
            a.guestPhysAddr + a.size <= b.guestPhysAddr ||
              b.guestPhysAddr + b.size <= a.guestPhysAddr,
            'overlap',
          );
        }
      }
      break;
    }
    case 'ADD_MEM_REG':
      check(fds.length === 1 && m.region.fd === fds[0], 'add fd');
      check(m.region.size > 0 && isSafe(m.region.guestPhysAddr + m.region.size), 'add range');
      break;
    case 'REM_MEM_REG':
      check(fds.length <= 1, 'rem fds');
      check(m.region.size > 0 && isSafe(m.region.guestPhysAddr + m.region.size), 'rem range');
      break;
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR':
      check(m.file.index <= 255, 'file index');
      check(
        m.file.noFd
          ? m.file.fd === null && fds.length === 0
          : fds.length === 1 && m.file.fd === fds[0],
        'file fd',
      );
      break;
    case 'SET_VRING_ADDR': {
      const a = m.addr;
      check(a.flags <= 1, 'ring flags');
      check(
        [a.descUserAddr, a.usedUserAddr, a.availUserAddr, a.logGuestAddr].every(isSafe),
        'ring addresses',
      );
      break;
    }
    case 'GET_CONFIG':
    case 'SET_CONFIG':
      check(m.config.size <= 256 && m.config.payload.length === m.config.size, 'config');
      break;
    case 'SET_LOG_BASE':
    case 'SET_LOG_FD':
    case 'SET_BACKEND_REQ_FD':
    case 'SET_INFLIGHT_FD':
      check(fds.length === 1 && m.fd === fds[0], 'fd');
      break;
    case 'SET_VRING_ENABLE':
      check(m.state.num <= 1, 'enable');
      break;
    default:
      check(fds.length === 0, 'no fds');
  }
}

/** Decodes and checks: either a consistent message or a VhostUserError reporting every fd. */
function probe(bytes: Uint8Array, fds: number[]): boolean {
  let m: VhostUserMessage;
  try {
    m = decodeMessage(bytes, fds);
  } catch (e) {
    if (!(e instanceof VhostUserError)) throw e;
    check(sameFds(e.fds, fds), 'error fds');
    return false;
  }
  assertConsistent(m, bytes, fds);
  return true;
}

type Mutation =
  | { t: 'size'; v: number }
  | { t: 'request'; v: number }
  | { t: 'flags'; v: number }
  | { t: 'byte'; at: number; v: number }
  | { t: 'u64'; at: number; v: bigint }
  | { t: 'addFd'; fd: number }
  | { t: 'dropFd' }
  | { t: 'truncate'; n: number }
  | { t: 'extend'; extra: Uint8Array };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({
    t: fc.constant('size' as const),
    v: fc.oneof(fc.nat({ max: 300 }), u32Arb),
  }),
  fc.record({
    t: fc.constant('request' as const),
    v: fc.oneof(fc.nat({ max: 45 }), u32Arb),
  }),
  fc.record({
    t: fc.constant('flags' as const),
    v: fc.oneof(fc.constantFrom(0, 1, 2, 3, 5, 9, 13, 0x11, 0x80000001), u32Arb),
  }),
  fc.record({ t: fc.constant('byte' as const), at: fc.nat(), v: fc.nat({ max: 255 }) }),
  fc.record({
    t: fc.constant('u64' as const),
    at: fc.nat(),
    v: fc.oneof(
      fc.constantFrom(0n, 1n, 0x100n, 0x1ffn, TWO_53 - 1n, TWO_53, 2n ** 64n - 1n),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    ),
  }),
  fc.record({ t: fc.constant('addFd' as const), fd: fdArb }),
  fc.record({ t: fc.constant('dropFd' as const) }),
  fc.record({ t: fc.constant('truncate' as const), n: fc.integer({ min: 1, max: 16 }) }),
  fc.record({
    t: fc.constant('extend' as const),
    extra: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
);

function mutate(bytes: Uint8Array, fds: number[], mutations: Mutation[]): [Uint8Array, number[]] {
  let b = bytes.slice();
  let f = fds.slice();
  for (const mu of mutations) {
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    switch (mu.t) {
      case 'size':
        if (b.length >= 12) dv.setUint32(8, mu.v, true);
        break;
      case 'request':
        if (b.length >= 4) dv.setUint32(0, mu.v, true);
        break;
      case 'flags':
        if (b.length >= 8) dv.setUint32(4, mu.v, true);
        break;
      case 'byte':
        if (b.length > 0) b[mu.at % b.length] = mu.v;
        break;
      case 'u64':
        if (b.length >= 20) {
          // An aligned u64 inside the payload, where addresses and sizes live.
          const slots = Math.floor((b.length - 12) / 8);
          if (slots > 0) dv.setBigUint64(12 + 8 * (mu.at % slots), mu.v, true);
        }
        break;
      case 'addFd':
        f.splice(f.length === 0 ? 0 : mu.fd % (f.length + 1), 0, mu.fd);
        break;
      case 'dropFd':
        f = f.slice(1);
        break;
      case 'truncate':
        b = b.slice(0, Math.max(0, b.length - mu.n));
        break;
      case 'extend':
        b = Uint8Array.from([...b, ...mu.extra]);
        break;
    }
  }
  return [b, f];
}

describe('fuzz', () => {
  it('valid messages decode to exactly what was encoded (20,000 cases)', () => {
    fc.assert(
      fc.property(validMessageArb, (m) => {
        const bytes = encodeRequest(m);
        const decoded = decodeMessage(bytes, m.fds.slice());
        expect(decoded).toEqual(m);
        assertConsistent(decoded, bytes, m.fds);
      }),
      { numRuns: 20_000 },
    );
  });

  it('mutated valid messages: only VhostUserError, never an inconsistent message, fds always reported (60,000 cases)', () => {
    let accepted = 0;
    let rejected = 0;
    fc.assert(
      fc.property(
        validMessageArb,
        fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
        (m, mus) => {
          const [bytes, fds] = mutate(encodeRequest(m), m.fds.slice(), mus);
          if (probe(bytes, fds)) accepted++;
          else rejected++;
        },
      ),
      { numRuns: 60_000 },
    );
    // Both outcomes are exercised, so the property is not vacuous.
    expect(accepted).toBeGreaterThan(1000);
    expect(rejected).toBeGreaterThan(1000);
  });

  it('random bytes and fds: only VhostUserError (40,000 cases)', () => {
    const headerish = fc
      .tuple(
        fc.oneof(fc.nat({ max: 45 }), u32Arb),
        fc.oneof(fc.constantFrom(1, 9), u32Arb),
        fc.oneof(
          fc.uint8Array({ maxLength: 300 }),
          fc
            .constantFrom(0, 8, 16, 24, 40, 72, 264, 12, 13, 268)
            .chain((n) => fc.uint8Array({ minLength: n, maxLength: n })),
        ),
        fc.boolean(),
      )
      .map(([request, flags, payload, honest]) => {
        const size = honest ? payload.length : (payload.length * 7) % 301;
        return new Bytes().u32(request).u32(flags).u32(size).raw(payload).done();
      });
    fc.assert(
      fc.property(
        fc.oneof(fc.uint8Array({ maxLength: 64 }), headerish),
        fc.array(fdArb, { maxLength: 10 }),
        (bytes, fds) => {
          probe(bytes, fds);
        },
      ),
      { numRuns: 40_000 },
    );
  });
});
