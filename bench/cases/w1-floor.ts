/**
 * virtq beside the floor: its W1 device loop and the minimal JavaScript loop of
 * bench/lib/w1-floor.ts (the same checks, no library), alternating in one process five times
 * so that machine load falls on both alike. Reports virtq / floor on the best runs: how much
 * of virtq's cost per chain is its own and how much the engine's.
 * Output: `virtq W1-floor L=<L> evidx=<0|1> virtq_ns=<f> floor_ns=<f> ratio=<virtq/floor>`.
 */

import { alternate, type BenchCase, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import { VirtqW1Device, verifyW1, W1_BATCH, W1_CHAIN_LENGTHS, W1Ring } from '../lib/w1.js';
import { FloorW1Device } from '../lib/w1-floor.js';

function floorCase(chainLength: number, eventIdx: boolean): BenchCase {
  const evidx = eventIdx ? 1 : 0;
  return {
    name: `w1-floor/L=${chainLength}/evidx=${evidx}`,
    run(ctx) {
      const virtq = new VirtqW1Device(new W1Ring(chainLength, eventIdx));
      const floor = new FloorW1Device(new W1Ring(chainLength, eventIdx));
      const [mv, mf] = alternate([(r) => virtq.run(r), (r) => floor.run(r)]) as [
        ReturnType<typeof alternate>[number],
        ReturnType<typeof alternate>[number],
      ];
      // Both walked every chain: their checksums match the closed form.
      verifyW1(virtq);
      verifyW1(floor);
      ctx.log(`w1-floor L=${chainLength} evidx=${evidx} virtq: ${describeRuns(mv, W1_BATCH)}`);
      ctx.log(`w1-floor L=${chainLength} evidx=${evidx} floor: ${describeRuns(mf, W1_BATCH)}`);
      const v = nsPerUnit(mv, W1_BATCH);
      const f = nsPerUnit(mf, W1_BATCH);
      return `virtq W1-floor L=${chainLength} evidx=${evidx} virtq_ns=${fmt(v)} floor_ns=${fmt(f)} ratio=${fmt(v / f)}`;
    },
  };
}

export const cases: BenchCase[] = W1_CHAIN_LENGTHS.flatMap((l) => [
  floorCase(l, false),
  floorCase(l, true),
]);
