/**
 * W1 of shared/BENCH.md, exactly as defined there: L in {1, 4, 16} x EVENT_IDX off/on.
 * Output: `virtq W1 L=<L> evidx=<0|1> ns_per_chain=<float> checksum=<n>`.
 */

import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import { VirtqW1Device, verifyW1, W1_BATCH, W1_CHAIN_LENGTHS, W1Ring } from '../lib/w1.js';

function w1Case(chainLength: number, eventIdx: boolean): BenchCase {
  const evidx = eventIdx ? 1 : 0;
  return {
    name: `w1/L=${chainLength}/evidx=${evidx}`,
    run(ctx) {
      const ring = new W1Ring(chainLength, eventIdx);
      const device = new VirtqW1Device(ring);
      const m = bestOf((rounds) => device.run(rounds));
      // The checksum covers every chain of the case (warm-up and all runs) and is checked
      // against its closed form, so a wrong walk cannot print a plausible figure.
      verifyW1(device);
      ctx.log(`w1 L=${chainLength} evidx=${evidx}: ${describeRuns(m, W1_BATCH)}`);
      return `virtq W1 L=${chainLength} evidx=${evidx} ns_per_chain=${fmt(nsPerUnit(m, W1_BATCH))} checksum=${device.checksum}`;
    },
  };
}

export const cases: BenchCase[] = W1_CHAIN_LENGTHS.flatMap((l) => [
  w1Case(l, false),
  w1Case(l, true),
]);
