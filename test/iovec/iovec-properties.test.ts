import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ChainReader,
  ChainWriter,
  DIRTY_PAGE_SIZE,
  type GuestMemory,
  IovecError,
  type RegionSpec,
  U64_UNSAFE,
} from '../../src/index.js';
import { trackedMemory } from '../tracked-memory.js';
import { Env } from './env.js';

/** Data starts 1 KiB below a page boundary, so chains often cross pages as well as regions. */
const DATA_BASE = 0x4c00;
const RING_BYTES = 0x4000;
const MAX_LEN = 300;

interface Shape {
  readable: { len: number; gap: number }[];
  writable: { len: number; gap: number }[];
  /** Where to cut the data area into regions, in thousandths of its size. */
  cuts: number[];
  indirect: boolean;
  seed: number;
}

type Op =
  | { op: 'read'; which: number; n: number; exact: boolean; at: number }
  | { op: 'skip'; which: number; n: number; exact: boolean; writer: boolean }
  | { op: 'readInt'; which: number; width: 0 | 1 | 2 | 3 | 4 }
  | { op: 'split'; which: number; off: number; writer: boolean }
  | { op: 'write'; which: number; n: number; exact: boolean; at: number }
  | { op: 'fill'; which: number; n: number; value: number }
  | { op: 'writeInt'; which: number; width: 0 | 1 | 2 | 3 | 4; value: bigint }
  | { op: 'copy'; which: number; other: number; n: number; exact: boolean };

// Half the buffers start where the previous one ends, so descriptors that continue each other
// (served as one piece) are common.
const buffer = fc.record({
  len: fc.nat(MAX_LEN),
  gap: fc.oneof(fc.constant(0), fc.nat(24)),
});
const shapeArb: fc.Arbitrary<Shape> = fc
  .record({
    readable: fc.array(buffer, { maxLength: 6 }),
    writable: fc.array(buffer, { maxLength: 6 }),
    cuts: fc.array(fc.integer({ min: 1, max: 999 }), { maxLength: 2 }),
    indirect: fc.boolean(),
    seed: fc.nat(),
  })
  .filter((s) => s.readable.length + s.writable.length > 0);

const which = fc.nat(7);
const len = fc.nat(MAX_LEN + 40);
const width = fc.constantFrom(0, 1, 2, 3, 4) as fc.Arbitrary<0 | 1 | 2 | 3 | 4>;
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    op: fc.constant('read' as const),
    which,
    n: len,
    exact: fc.boolean(),
    at: fc.nat(8),
  }),
  fc.record({
    op: fc.constant('skip' as const),
    which,
    n: len,
    exact: fc.boolean(),
    writer: fc.boolean(),
  }),
  fc.record({ op: fc.constant('readInt' as const), which, width }),
  fc.record({ op: fc.constant('split' as const), which, off: len, writer: fc.boolean() }),
  fc.record({
    op: fc.constant('write' as const),
    which,
    n: len,
    exact: fc.boolean(),
    at: fc.nat(8),
  }),
  fc.record({ op: fc.constant('fill' as const), which, n: len, value: fc.nat(255) }),
  fc.record({
    op: fc.constant('writeInt' as const),
    which,
    width,
    value: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  }),
  fc.record({
    op: fc.constant('copy' as const),
    which,
    other: which,
    n: len,
    exact: fc.boolean(),
  }),
);

/** Byte `addr` of the initial memory: a hash of the address and the seed. */
function initialByte(addr: number, seed: number): number {
  return Math.imul(addr ^ seed, 0x9e3779b1) >>> 24;
}

interface Built {
  env: Env;
  memory: GuestMemory;
  /** Guest address of each byte of the readable part, in stream order. */
  readAddrs: number[];
  /** Guest address of each byte of the writable part, in stream order. */
  writeAddrs: number[];
}

/** Lays the buffers out one after another, cuts the data area into regions and pops the chain. */
function build(s: Shape): Built {
  let cursor = DATA_BASE;
  const place = (bufs: { len: number; gap: number }[]) =>
    bufs.map((b) => {
      const addr = cursor + b.gap;
      cursor = addr + b.len;
      return { addr, len: b.len };
    });
  const readable = place(s.readable);
  const writable = place(s.writable);
  const area = Math.ceil((cursor - DATA_BASE + 8) / 8) * 8;
  const cuts = [
    ...new Set(
      s.cuts.map((c) => Math.round((c * area) / 1000 / 8) * 8).filter((c) => c > 0 && c < area),
    ),
  ].sort((a, b) => a - b);
  const edges = [0, ...cuts, area];
  const specs: RegionSpec[] = [
    { base: 0, length: RING_BYTES, buffer: new ArrayBuffer(RING_BYTES) },
  ];
  for (let i = 0; i + 1 < edges.length; i++) {
    const length = edges[i + 1]! - edges[i]!;
    specs.push({ base: DATA_BASE + edges[i]!, length, buffer: new ArrayBuffer(length) });
  }
  const memory = trackedMemory(specs);
  for (const r of memory.regions) {
    if (r.base === 0) continue;
    for (let i = 0; i < r.length; i++) r.bytes[i] = initialByte(r.base + i, s.seed);
  }
  const env = new Env(memory, 16);
  env.pop(readable, writable, s.indirect);
  memory.clearDirty();
  const addrs = (bufs: { addr: number; len: number }[]) =>
    bufs.flatMap((b) => Array.from({ length: b.len }, (_, i) => b.addr + i));
  return { env, memory, readAddrs: addrs(readable), writeAddrs: addrs(writable) };
}

/** Runs an exact operation (returns nothing) and reports the count it must have moved. */
function exactly(n: number, f: () => void): number {
  f();
  return n;
}

/** A cursor under test beside its model: the stream positions [pos, end) it still covers. */
interface Slot<T> {
  real: T;
  pos: number;
  end: number;
  consumed: number;
}

function expectShort(f: () => unknown): void {
  expect(f).toThrow(IovecError);
}

function leBytes(value: bigint, n: number): number[] {
  return Array.from({ length: n }, (_, i) => Number((value >> BigInt(8 * i)) & 0xffn));
}

const WIDTHS = [1, 2, 4, 8, 8] as const;

describe('iovec properties', () => {
  it('random reads, skips, splits, writes and copies agree with a flat-array model', () => {
    fc.assert(
      fc.property(shapeArb, fc.array(opArb, { maxLength: 40 }), (shape, ops) => {
        const { env, memory, readAddrs, writeAddrs } = build(shape);
        const chain = env.chain;
        // The model: the readable stream's bytes, and what every guest byte should hold.
        const readFlat = readAddrs.map((a) => initialByte(a, shape.seed));
        const expected = new Map<number, number>();
        const written = new Set<number>();
        const put = (addr: number, v: number) => {
          expected.set(addr, v & 0xff);
          written.add(addr);
        };

        const readers: Slot<ChainReader>[] = [
          { real: new ChainReader(chain), pos: 0, end: readAddrs.length, consumed: 0 },
        ];
        const writers: Slot<ChainWriter>[] = [
          { real: new ChainWriter(chain), pos: 0, end: writeAddrs.length, consumed: 0 },
        ];
        let step = 0;

        for (const o of ops) {
          step++;
          const r = readers[o.which % readers.length]!;
          const w = writers[o.which % writers.length]!;
          switch (o.op) {
            case 'read': {
              const left = r.end - r.pos;
              const dst = new Uint8Array(o.at + o.n + 3).fill(0xee);
              if (o.exact && o.n > left) {
                expectShort(() => r.real.readExact(dst, o.at, o.n));
                expect(dst.every((b) => b === 0xee)).toBe(true);
                break;
              }
              const k = o.exact
                ? exactly(o.n, () => r.real.readExact(dst, o.at, o.n))
                : r.real.read(dst, o.at, o.n);
              expect(k).toBe(Math.min(o.n, left));
              expect(Array.from(dst.subarray(o.at, o.at + k))).toEqual(
                readFlat.slice(r.pos, r.pos + k),
              );
              expect(dst.subarray(0, o.at).every((b) => b === 0xee)).toBe(true);
              expect(dst.subarray(o.at + k).every((b) => b === 0xee)).toBe(true);
              r.pos += k;
              r.consumed += k;
              break;
            }
            case 'skip': {
              const s = o.writer ? w : r;
              const left = s.end - s.pos;
              if (o.exact && o.n > left) {
                expectShort(() => s.real.skipExact(o.n));
                break;
              }
              const k = o.exact ? exactly(o.n, () => s.real.skipExact(o.n)) : s.real.skip(o.n);
              expect(k).toBe(Math.min(o.n, left));
              s.pos += k;
              s.consumed += k;
              break;
            }
            case 'readInt': {
              const n = WIDTHS[o.width];
              const left = r.end - r.pos;
              const reads = [
                () => r.real.readU8(),
                () => r.real.readU16(),
                () => r.real.readU32(),
                () => r.real.readU64(),
                () => r.real.readBigU64(),
              ];
              const read = reads[o.width]!;
              if (n > left) {
                expectShort(read);
                break;
              }
              let want = 0n;
              for (let i = n - 1; i >= 0; i--) want = (want << 8n) | BigInt(readFlat[r.pos + i]!);
              const got = read();
              if (o.width === 3 && want >= 1n << 53n) expect(got).toBe(U64_UNSAFE);
              else expect(BigInt(got)).toBe(want);
              r.pos += n;
              r.consumed += n;
              break;
            }
            case 'split': {
              if (o.writer) {
                const left = w.end - w.pos;
                if (o.off > left) {
                  expectShort(() => w.real.split(o.off));
                  break;
                }
                const back = w.real.split(o.off);
                writers.push({ real: back, pos: w.pos + o.off, end: w.end, consumed: 0 });
                w.end = w.pos + o.off;
              } else {
                const left = r.end - r.pos;
                if (o.off > left) {
                  expectShort(() => r.real.split(o.off));
                  break;
                }
                const back = r.real.split(o.off);
                readers.push({ real: back, pos: r.pos + o.off, end: r.end, consumed: 0 });
                r.end = r.pos + o.off;
              }
              break;
            }
            case 'write': {
              const left = w.end - w.pos;
              const src = Uint8Array.from({ length: o.at + o.n }, (_, i) => (i * 7 + step) & 0xff);
              if (o.exact && o.n > left) {
                expectShort(() => w.real.writeExact(src, o.at, o.n));
                break;
              }
              const k = o.exact
                ? exactly(o.n, () => w.real.writeExact(src, o.at, o.n))
                : w.real.write(src, o.at, o.n);
              expect(k).toBe(Math.min(o.n, left));
              for (let i = 0; i < k; i++) put(writeAddrs[w.pos + i]!, src[o.at + i]!);
              w.pos += k;
              w.consumed += k;
              break;
            }
            case 'fill': {
              const k = w.real.fill(o.n, o.value);
              expect(k).toBe(Math.min(o.n, w.end - w.pos));
              for (let i = 0; i < k; i++) put(writeAddrs[w.pos + i]!, o.value);
              w.pos += k;
              w.consumed += k;
              break;
            }
            case 'writeInt': {
              const n = WIDTHS[o.width];
              const left = w.end - w.pos;
              const v53 = o.value & ((1n << 53n) - 1n);
              const writes = [
                () => w.real.writeU8(Number(o.value & 0xffn)),
                () => w.real.writeU16(Number(o.value & 0xffffn)),
                () => w.real.writeU32(Number(o.value & 0xffffffffn)),
                () => w.real.writeU64(Number(v53)),
                () => w.real.writeBigU64(o.value),
              ];
              const write = writes[o.width]!;
              if (n > left) {
                expectShort(write);
                break;
              }
              write();
              const bytes = leBytes(o.width === 3 ? v53 : o.value, n);
              for (let i = 0; i < n; i++) put(writeAddrs[w.pos + i]!, bytes[i]!);
              w.pos += n;
              w.consumed += n;
              break;
            }
            case 'copy': {
              const dst = writers[o.other % writers.length]!;
              const fit = Math.min(r.end - r.pos, dst.end - dst.pos);
              if (o.exact && o.n > fit) {
                expectShort(() => r.real.copyToExact(dst.real, o.n));
                break;
              }
              const k = o.exact
                ? exactly(o.n, () => r.real.copyToExact(dst.real, o.n))
                : r.real.copyTo(dst.real, o.n);
              expect(k).toBe(Math.min(o.n, fit));
              for (let i = 0; i < k; i++) put(writeAddrs[dst.pos + i]!, readFlat[r.pos + i]!);
              r.pos += k;
              r.consumed += k;
              dst.pos += k;
              dst.consumed += k;
              break;
            }
          }
          for (const s of readers) {
            expect(s.real.remaining).toBe(s.end - s.pos);
            expect(s.real.bytesRead).toBe(s.consumed);
          }
          for (const s of writers) {
            expect(s.real.remaining).toBe(s.end - s.pos);
            expect(s.real.bytesWritten).toBe(s.consumed);
          }
        }

        // Every byte of guest memory is what the model says: written where it wrote, untouched
        // everywhere else (the rings included).
        for (const reg of memory.regions) {
          if (reg.base === 0) continue;
          for (let i = 0; i < reg.length; i++) {
            const a = reg.base + i;
            const want = expected.get(a) ?? initialByte(a, shape.seed);
            if (reg.bytes[i] !== want) {
              expect({ addr: a, got: reg.bytes[i] }).toEqual({ addr: a, got: want });
            }
          }
        }
        // Exactly the pages written are dirty.
        const pages = [...new Set([...written].map((a) => Math.floor(a / DIRTY_PAGE_SIZE)))];
        expect([...new Set(memory.dirtyPages())]).toEqual(pages.sort((a, b) => a - b));
      }),
      { numRuns: 300 },
    );
  });

  it('a reader split at every offset reads the same bytes as one unsplit read', () => {
    fc.assert(
      fc.property(shapeArb, fc.array(fc.nat(MAX_LEN * 6), { maxLength: 4 }), (shape, offsets) => {
        const { env, readAddrs } = build(shape);
        const whole = new Uint8Array(readAddrs.length);
        expect(new ChainReader(env.chain).read(whole)).toBe(readAddrs.length);
        expect(Array.from(whole)).toEqual(readAddrs.map((a) => initialByte(a, shape.seed)));
        // Cut the stream at sorted offsets; reading the parts in order gives the whole.
        const cuts = [...new Set(offsets.map((o) => o % (readAddrs.length + 1)))].sort(
          (a, b) => a - b,
        );
        const parts: ChainReader[] = [];
        let rest = new ChainReader(env.chain);
        let at = 0;
        for (const c of cuts) {
          const next = rest.split(c - at);
          parts.push(rest);
          rest = next;
          at = c;
        }
        parts.push(rest);
        const joined = new Uint8Array(readAddrs.length);
        let k = 0;
        for (const p of parts) k += p.read(joined, k);
        expect(k).toBe(readAddrs.length);
        expect(joined).toEqual(whole);
      }),
      { numRuns: 200 },
    );
  });
});
