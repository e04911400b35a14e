/**
 * The scatter-gather layer (src/iovec) against a plain memcpy.
 *
 * Copy cases: one chain whose readable part and writable part are each `size` bytes in
 * descriptors of `descBytes`, popped once; a round resets the reader or writer on it and
 * moves every byte: chain -> Uint8Array (read), Uint8Array -> chain (write, dirty marking
 * included), readable part -> writable part (copy). The baseline is one `Uint8Array.set` of
 * `size` bytes between two plain arrays. The four run in turn (harness `alternate`); the
 * ratios are iovec / memcpy on the best runs. Several descriptors are either adjacent (each
 * starts where the one before ends: served as one piece) or scattered (every other 4 KiB
 * page: one piece each).
 * Output: `virtq iovec size=<bytes> descs=<n> layout=<single|adjacent|scattered>
 * memcpy_ns=<f> read_ns=<f> read_ratio=<f> write_ns=<f> write_ratio=<f> copy_ns=<f>
 * copy_ratio=<f>` (one line).
 *
 * Header case: a reader reset on a chain with a 12-byte header, read as three u32 and again
 * with readExact into a 12-byte scratch. Reports ns per header, and how many GCs started and
 * how much the young generation grew during 2^22 headers: no GC and a few KiB of growth (the
 * measuring itself) when reading headers allocates nothing, where 16 bytes per header would
 * be 64 MiB and several scavenges.
 * Output: `virtq iovec-header ns_per_header=<f> young_growth_bytes=<n> gcs=<n> checksum=<n>`.
 */

import { PerformanceObserver, performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { getHeapSpaceStatistics } from 'node:v8';
import { type DriverBuffer, RawSplitRing, SplitDriver } from '../../src/driver/index.js';
import { ChainReader, ChainWriter } from '../../src/iovec/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import type { DescriptorChain } from '../../src/queue/index.js';
import {
  alternate,
  type BenchCase,
  bestOf,
  describeRuns,
  fmt,
  nsPerUnit,
  type Step,
} from '../lib/harness.js';

const DATA = 0x10000;

/** Pops one chain of `readable` then `writable` buffers from a fresh split queue. */
function popChain(memorySize: number, readable: DriverBuffer[], writable: DriverBuffer[]) {
  const memory = GuestMemory.create(memorySize);
  const size = 64;
  const driver = new SplitDriver(memory, { size, base: 0 });
  const queue = new RawSplitRing(memory, 0, size, driver.layout).createQueue();
  driver.add(readable, writable);
  driver.publish();
  const chain = queue.pop();
  if (chain === null) throw new Error('no chain');
  return { memory, chain };
}

/** `size / descBytes` buffers of `descBytes`, one every `stride` bytes from `from`. */
function buffers(from: number, size: number, descBytes: number, stride: number): DriverBuffer[] {
  return Array.from({ length: size / descBytes }, (_, i) => ({
    addr: from + i * stride,
    len: descBytes,
  }));
}

/**
 * `stride === descBytes`: the buffers follow each other (the reader serves them as one piece);
 * `stride > descBytes`: they are scattered, one piece each.
 */
function copyCase(size: number, descBytes: number, stride: number): BenchCase {
  const descs = size / descBytes;
  const layout = descs === 1 ? 'single' : stride === descBytes ? 'adjacent' : 'scattered';
  return {
    name: `iovec/size=${size}/descs=${descs}/${layout}`,
    run(ctx) {
      const span = (descs - 1) * stride + descBytes;
      const readable = buffers(DATA, size, descBytes, stride);
      const writable = buffers(DATA + span + 0x1000, size, descBytes, stride);
      const { memory, chain } = popChain(DATA + 2 * span + 0x2000, readable, writable);
      for (const r of memory.regions) for (let i = 0; i < r.length; i++) r.bytes[i] = i * 7;
      const src = new Uint8Array(size).fill(3);
      const dst = new Uint8Array(size);
      const reader = new ChainReader();
      const writer = new ChainWriter();
      const steps: Step[] = [
        (rounds) => {
          for (let i = 0; i < rounds; i++) dst.set(src);
        },
        (rounds) => {
          for (let i = 0; i < rounds; i++) reader.reset(chain).readExact(dst);
        },
        (rounds) => {
          for (let i = 0; i < rounds; i++) writer.reset(chain).writeExact(src);
        },
        (rounds) => {
          for (let i = 0; i < rounds; i++) {
            if (reader.reset(chain).copyTo(writer.reset(chain)) !== size) throw new Error('short');
          }
        },
      ];
      const ms = alternate(steps, { chunk: 64 });
      const [memcpy, read, write, copy] = ms.map((m) => nsPerUnit(m, 1)) as [
        number,
        number,
        number,
        number,
      ];
      ['memcpy', 'read', 'write', 'copy'].forEach((label, k) => {
        ctx.log(`iovec size=${size} descs=${descs} ${layout} ${label}: ${describeRuns(ms[k]!, 1)}`);
      });
      return (
        `virtq iovec size=${size} descs=${descs} layout=${layout} memcpy_ns=${fmt(memcpy)}` +
        ` read_ns=${fmt(read)} read_ratio=${fmt(read / memcpy)}` +
        ` write_ns=${fmt(write)} write_ratio=${fmt(write / memcpy)}` +
        ` copy_ns=${fmt(copy)} copy_ratio=${fmt(copy / memcpy)}`
      );
    },
  };
}

function youngUsed(): number {
  let n = 0;
  for (const s of getHeapSpaceStatistics()) {
    if (s.space_name === 'new_space' || s.space_name === 'new_large_object_space') {
      n += s.space_used_size;
    }
  }
  return n;
}

const headerCase: BenchCase = {
  name: 'iovec-header',
  async run(ctx) {
    const { memory, chain } = popChain(
      DATA + 0x4000,
      [
        { addr: DATA, len: 12 },
        { addr: DATA + 0x100, len: 4096 },
      ],
      [{ addr: DATA + 0x2000, len: 4096 }],
    );
    // Header fields below 2^30: V8 keeps those as small integers everywhere. A u32 of 2^30 or
    // more is a heap number whenever it crosses a call V8 did not inline, which allocates in
    // any JS code, this reader or GuestMemory.readU32 alike.
    for (let i = 0; i < 12; i++) memory.writeU8(DATA + i, 0x10 + i);
    const reader = new ChainReader();
    const scratch = new Uint8Array(12);
    let checksum = 0;
    const readHeaders = (c: DescriptorChain, rounds: number) => {
      for (let i = 0; i < rounds; i++) {
        reader.reset(c);
        // Kept below 2^30 so it stays a small integer: a larger one is a heap number in V8
        // and would allocate on every assignment, hiding what the reader does.
        checksum = (checksum + reader.readU32() + reader.readU32() + reader.readU32()) & 0x3fffffff;
        reader.reset(c).readExact(scratch);
        checksum = (checksum + scratch[0]!) & 0x3fffffff;
      }
    };
    const m = bestOf((rounds) => readHeaders(chain, rounds));
    ctx.log(`iovec-header: ${describeRuns(m, 1)}`);

    // Count only the GCs that start during the loop (the timers around it allocate too).
    const starts: number[] = [];
    const observer = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) starts.push(e.startTime);
    });
    observer.observe({ entryTypes: ['gc'] });
    await sleep(10);
    const before = youngUsed();
    const t0 = performance.now();
    readHeaders(chain, 1 << 22);
    const t1 = performance.now();
    const growth = youngUsed() - before;
    await sleep(10);
    observer.disconnect();
    const gcs = starts.filter((t) => t >= t0 && t <= t1).length;
    return `virtq iovec-header ns_per_header=${fmt(nsPerUnit(m, 1))} young_growth_bytes=${growth} gcs=${gcs} checksum=${checksum}`;
  },
};

export const cases: BenchCase[] = [
  copyCase(4096, 4096, 4096),
  copyCase(65536, 65536, 65536),
  copyCase(65536, 4096, 4096),
  copyCase(65536, 4096, 8192),
  headerCase,
];
