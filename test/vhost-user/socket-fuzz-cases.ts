/**
 * Cases for the vhost-user socket fuzzers: mutations of a message sequence (bit flips, cuts,
 * wrong sizes and requests, dropped, duplicated and swapped messages, other fds) and the three
 * kinds of case the fuzzers run (random messages, well-formed messages, mutated sessions with a
 * hostile guest), built from the generators of socket-fuzz-gen.ts.
 */
import fc from 'fast-check';
import { VhostUserFlags } from '../../src/vhost-user/index.js';
import { concat } from './frontend.js';
import {
  fdList,
  negotiation,
  randomWire,
  SESSION_TAIL,
  sessionProtocol,
  u32,
  wellFormedWire,
} from './socket-fuzz-gen.js';
import type { FdKind, FuzzCase, Wire } from './socket-fuzz-wire.js';

export type Mutation =
  | { op: 'flip'; msg: number; bit: number }
  | { op: 'truncate'; msg: number; keep: number }
  | { op: 'extend'; msg: number; extra: Uint8Array }
  | { op: 'size'; msg: number; size: number }
  | { op: 'request'; msg: number; request: number }
  | { op: 'needReply'; msg: number }
  | { op: 'fds'; msg: number; fds: FdKind[] }
  | { op: 'duplicate'; msg: number }
  | { op: 'swap'; msg: number; other: number }
  | { op: 'drop'; msg: number }
  | { op: 'cut'; msg: number; splits: number[]; fdPiece: number };

export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), msg: fc.nat(), bit: fc.nat() }),
  fc.record({ op: fc.constant('truncate' as const), msg: fc.nat(), keep: fc.nat() }),
  fc.record({
    op: fc.constant('extend' as const),
    msg: fc.nat(),
    extra: fc.uint8Array({ minLength: 1, maxLength: 40 }),
  }),
  fc.record({
    op: fc.constant('size' as const),
    msg: fc.nat(),
    size: fc.oneof(fc.nat(300), u32),
  }),
  fc.record({ op: fc.constant('request' as const), msg: fc.nat(), request: fc.nat(45) }),
  fc.record({ op: fc.constant('needReply' as const), msg: fc.nat() }),
  fc.record({ op: fc.constant('fds' as const), msg: fc.nat(), fds: fdList }),
  fc.record({ op: fc.constant('duplicate' as const), msg: fc.nat() }),
  fc.record({ op: fc.constant('swap' as const), msg: fc.nat(), other: fc.nat() }),
  fc.record({ op: fc.constant('drop' as const), msg: fc.nat() }),
  fc.record({
    op: fc.constant('cut' as const),
    msg: fc.nat(),
    splits: fc.array(fc.nat(60), { minLength: 1, maxLength: 3 }),
    fdPiece: fc.nat(3),
  }),
);

export function mutate(wires: Wire[], m: Mutation): Wire[] {
  if (wires.length === 0) return wires;
  const out = wires.slice();
  const i = m.msg % out.length;
  const w = out[i]!;
  const setU32 = (bytes: Uint8Array, at: number, value: number): Uint8Array => {
    const copy = bytes.slice();
    if (copy.length >= at + 4) new DataView(copy.buffer).setUint32(at, value, true);
    return copy;
  };
  switch (m.op) {
    case 'flip': {
      if (w.bytes.length === 0) break;
      const bytes = w.bytes.slice();
      const bit = m.bit % (bytes.length * 8);
      bytes[bit >> 3]! ^= 1 << (bit & 7);
      out[i] = { ...w, bytes };
      break;
    }
    case 'truncate':
      out[i] = { ...w, bytes: w.bytes.slice(0, m.keep % (w.bytes.length + 1)) };
      break;
    case 'extend':
      out[i] = { ...w, bytes: concat(w.bytes, m.extra) };
      break;
    case 'size':
      out[i] = { ...w, bytes: setU32(w.bytes, 8, m.size) };
      break;
    case 'request':
      out[i] = { ...w, bytes: setU32(w.bytes, 0, m.request) };
      break;
    case 'needReply': {
      const flags = w.bytes.length >= 8 ? new DataView(w.bytes.buffer).getUint32(4, true) : 0;
      out[i] = { ...w, bytes: setU32(w.bytes, 4, flags ^ VhostUserFlags.NEED_REPLY) };
      break;
    }
    case 'fds':
      out[i] = { ...w, fds: m.fds };
      break;
    case 'duplicate':
      out.splice(i, 0, w);
      break;
    case 'swap': {
      const j = m.other % out.length;
      out[i] = out[j]!;
      out[j] = w;
      break;
    }
    case 'drop':
      out.splice(i, 1);
      break;
    case 'cut':
      out[i] = { ...w, splits: m.splits, fdPiece: m.fdPiece };
      break;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Cases

/** (a) Random messages, after a negotiation or not. */
export const randomCase: fc.Arbitrary<FuzzCase<never>> = fc
  .tuple(fc.boolean(), fc.array(randomWire, { minLength: 1, maxLength: 6 }))
  .map(([negotiated, wires]) => ({
    wires: [...(negotiated ? negotiation() : []), ...wires],
    hostile: null,
  }));

/** (b) Well-formed messages, after no prelude, a negotiation, or `ring` (running rings). */
export function wellFormedCase(ring: Wire[]): fc.Arbitrary<FuzzCase<never>> {
  return fc
    .tuple(
      fc.constantFrom('none', 'negotiated', 'ring'),
      fc.array(wellFormedWire, { minLength: 1, maxLength: 8 }),
    )
    .map(([prelude, wires]) => ({
      wires: [
        ...(prelude === 'negotiated' ? negotiation() : []),
        ...(prelude === 'ring' ? ring : []),
        ...wires,
      ],
      hostile: null,
    }));
}

/**
 * (c) A session (`open` of the negotiated features) broken by mutations, sometimes with a
 * hostile guest on top; or a valid session whose rings run, then a hostile guest. `negotiated`
 * tells the guest what the session negotiated.
 */
export function sessionCase<H>(options: {
  features: fc.Arbitrary<bigint>;
  open: (features: bigint, protocol: bigint) => Wire[];
  hostile: fc.Arbitrary<H>;
  negotiated: (h: H, features: bigint) => H;
}): fc.Arbitrary<FuzzCase<H>> {
  const { features, open, hostile, negotiated } = options;
  return fc.oneof(
    {
      weight: 3,
      arbitrary: fc
        .record({
          features,
          protocol: sessionProtocol,
          tail: fc.array(fc.constantFrom(...SESSION_TAIL), { maxLength: 4 }),
          mutations: fc.array(mutation, { minLength: 1, maxLength: 4 }),
          hostile: fc.option(hostile, { nil: null }),
        })
        .map(({ features: f, protocol, tail, mutations, hostile: h }) => ({
          wires: mutations.reduce(mutate, [...open(f, protocol), ...tail]),
          hostile: h === null ? null : negotiated(h, f),
        })),
    },
    {
      weight: 2,
      arbitrary: fc
        .record({
          features,
          protocol: sessionProtocol,
          tail: fc.array(fc.constantFrom(...SESSION_TAIL), { maxLength: 1 }),
          hostile,
        })
        .map(({ features: f, protocol, tail, hostile: h }) => ({
          wires: [...open(f, protocol), ...tail],
          hostile: negotiated(h, f),
        })),
    },
  );
}
