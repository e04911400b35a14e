/**
 * Split against packed ring on the W1 workload (shared/BENCH.md), side by side in one process:
 * W1 exactly as defined there (bench/cases/w1.ts) and the same workload on a PackedQueue with
 * the equivalent packed driver loop of bench/lib/w1-variants.ts (same buffers, B = 16, chains
 * of L consecutive descriptors, EVENT_IDX on). The two run in turn, five times, so machine load
 * drifts over both alike; each reports its best run.
 *
 * Output: `virtq W1-packed L=<L> evidx=1 split_ns=<f> packed_ns=<f> packed_over_split=<f>`,
 * ns per chain, the ratio packed / split (above 1: the packed ring costs more per chain).
 */

import { alternate, type BenchCase, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import { VirtqW1Device, verifyW1, W1_BATCH, W1_CHAIN_LENGTHS, W1Ring } from '../lib/w1.js';
import { PackedW1Device, PackedW1Ring, verifyW1Variant } from '../lib/w1-variants.js';

function packedCase(chainLength: number): BenchCase {
  return {
    name: `packed-vs-split/L=${chainLength}/evidx=1`,
    run(ctx) {
      const split = new VirtqW1Device(new W1Ring(chainLength, true));
      const packed = new PackedW1Device(new PackedW1Ring(chainLength, true));
      const ms = alternate([(r) => split.run(r), (r) => packed.run(r)]);
      verifyW1(split);
      verifyW1Variant(packed, 'W1 packed');
      const [splitNs, packedNs] = ms.map((m) => nsPerUnit(m, W1_BATCH)) as [number, number];
      ['split', 'packed'].forEach((label, k) => {
        ctx.log(`packed-vs-split L=${chainLength} ${label}: ${describeRuns(ms[k]!, W1_BATCH)}`);
      });
      return (
        `virtq W1-packed L=${chainLength} evidx=1 split_ns=${fmt(splitNs)}` +
        ` packed_ns=${fmt(packedNs)} packed_over_split=${fmt(packedNs / splitNs)}`
      );
    },
  };
}

export const cases: BenchCase[] = W1_CHAIN_LENGTHS.map(packedCase);
