/**
 * Direct against indirect chains on the W1 workload, for each ring format. Direct is W1 (split)
 * or its packed counterpart (bench/lib/w1-variants.ts); indirect carries the same L buffers per
 * chain through one indirect descriptor pointing at a table of L entries (VIRTIO 1.2 §2.7.5.3,
 * §2.8.7), so the device walks the same descriptors and sums the same checksum. B = 16,
 * EVENT_IDX on. Direct and indirect run in turn, five times, in one process; each reports its
 * best run. A process runs one ring format only.
 *
 * Output: `virtq indirect ring=<split|packed> L=<L> evidx=1 direct_ns=<f> indirect_ns=<f>
 * indirect_over_direct=<f>`, ns per chain, the ratio indirect / direct (below 1: indirect
 * chains are cheaper for the device).
 */

import {
  alternate,
  type BenchCase,
  describeRuns,
  fmt,
  nsPerUnit,
  type Step,
} from '../lib/harness.js';
import { VirtqW1Device, verifyW1, W1_BATCH, W1Ring } from '../lib/w1.js';
import {
  IndirectW1Ring,
  PackedW1Device,
  PackedW1Ring,
  verifyW1Variant,
} from '../lib/w1-variants.js';

/** The two steps (direct, indirect) of a ring format, and their verification. */
function devices(ring: 'split' | 'packed', chainLength: number): [Step[], () => void] {
  if (ring === 'split') {
    const direct = new VirtqW1Device(new W1Ring(chainLength, true));
    const indirect = new VirtqW1Device(new IndirectW1Ring(chainLength, true));
    return [
      [(r) => direct.run(r), (r) => indirect.run(r)],
      () => {
        verifyW1(direct);
        verifyW1(indirect);
      },
    ];
  }
  const direct = new PackedW1Device(new PackedW1Ring(chainLength, true));
  const indirect = new PackedW1Device(new PackedW1Ring(chainLength, true, { indirect: true }));
  return [
    [(r) => direct.run(r), (r) => indirect.run(r)],
    () => {
      verifyW1Variant(direct, 'W1 packed');
      verifyW1Variant(indirect, 'W1 packed indirect');
    },
  ];
}

function indirectCase(ring: 'split' | 'packed', chainLength: number): BenchCase {
  return {
    name: `indirect/ring=${ring}/L=${chainLength}/evidx=1`,
    run(ctx) {
      const [steps, verify] = devices(ring, chainLength);
      const ms = alternate(steps);
      verify();
      const [direct, indirect] = ms.map((m) => nsPerUnit(m, W1_BATCH)) as [number, number];
      ['direct', 'indirect'].forEach((label, k) => {
        ctx.log(
          `indirect ring=${ring} L=${chainLength} ${label}: ${describeRuns(ms[k]!, W1_BATCH)}`,
        );
      });
      return (
        `virtq indirect ring=${ring} L=${chainLength} evidx=1 direct_ns=${fmt(direct)}` +
        ` indirect_ns=${fmt(indirect)} indirect_over_direct=${fmt(indirect / direct)}`
      );
    },
  };
}

export const cases: BenchCase[] = (['split', 'packed'] as const).flatMap((ring) =>
  [4, 16].map((l) => indirectCase(ring, l)),
);
