/**
 * The packed ring beside its floor: virtq's split and packed W1 loops and the two floor loops
 * (bench/lib/w1-floor.ts, bench/lib/w1-packed-floor.ts: the same checks, no library), all four
 * alternating in one process five times so that machine load falls on all alike. Reports, on
 * the best runs, virtq / floor for the packed ring and packed / split for virtq and for the
 * floors: how much of the packed ring's extra cost per chain is virtq's and how much the
 * format's, whoever writes the device.
 *
 * Output: `virtq W1-packed-floor L=<L> evidx=1 packed_ns=<f> packed_floor_ns=<f>
 * packed_over_floor=<f> split_ns=<f> split_floor_ns=<f> virtq_packed_over_split=<f>
 * floor_packed_over_split=<f>`, ns per chain.
 */

import { alternate, type BenchCase, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import { VirtqW1Device, verifyW1, W1_BATCH, W1_CHAIN_LENGTHS, W1Ring } from '../lib/w1.js';
import { FloorW1Device } from '../lib/w1-floor.js';
import { PackedFloorW1Device } from '../lib/w1-packed-floor.js';
import { PackedW1Device, PackedW1Ring, verifyW1Variant } from '../lib/w1-variants.js';

function packedFloorCase(chainLength: number): BenchCase {
  return {
    name: `packed-floor/L=${chainLength}/evidx=1`,
    run(ctx) {
      const packed = new PackedW1Device(new PackedW1Ring(chainLength, true));
      const packedFloor = new PackedFloorW1Device(new PackedW1Ring(chainLength, true));
      const split = new VirtqW1Device(new W1Ring(chainLength, true));
      const splitFloor = new FloorW1Device(new W1Ring(chainLength, true));
      const ms = alternate([
        (r) => packed.run(r),
        (r) => packedFloor.run(r),
        (r) => split.run(r),
        (r) => splitFloor.run(r),
      ]);
      // Every loop walked every chain and notified once per round.
      verifyW1Variant(packed, 'W1 packed');
      verifyW1Variant(packedFloor, 'W1 packed floor');
      verifyW1(split);
      verifyW1(splitFloor);
      const labels = ['packed', 'packed floor', 'split', 'split floor'];
      labels.forEach((label, k) => {
        ctx.log(`packed-floor L=${chainLength} ${label}: ${describeRuns(ms[k]!, W1_BATCH)}`);
      });
      const [p, pf, s, sf] = ms.map((m) => nsPerUnit(m, W1_BATCH)) as [
        number,
        number,
        number,
        number,
      ];
      return (
        `virtq W1-packed-floor L=${chainLength} evidx=1 packed_ns=${fmt(p)}` +
        ` packed_floor_ns=${fmt(pf)} packed_over_floor=${fmt(p / pf)} split_ns=${fmt(s)}` +
        ` split_floor_ns=${fmt(sf)} virtq_packed_over_split=${fmt(p / s)}` +
        ` floor_packed_over_split=${fmt(pf / sf)}`
      );
    },
  };
}

export const cases: BenchCase[] = W1_CHAIN_LENGTHS.map(packedFloorCase);
