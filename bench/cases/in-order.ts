/**
 * In-order batch publication (VIRTIO_F_IN_ORDER, VIRTIO 1.2 §2.7.9, §2.8.8) on the W1
 * workload, for each ring format: a round of B = 16 chains of L = 1 completed
 *
 * - per chain: `addUsed` for each chain, as W1 does (bench/lib/w1.ts, or its packed
 *   counterpart in bench/lib/w1-variants.ts);
 * - through an InOrderCompleter without collapsing: `popped` and `complete` per chain, then
 *   one `flush()` that adds a used entry per chain;
 * - through an InOrderCompleter collapsed: the same calls, and `flush()` writes one used
 *   entry for the whole round (`addUsedBatch`).
 *
 * Each variant publishes once per round and calls `prepareKick` once; EVENT_IDX on. The three
 * run in turn, five times, in one process (one ring format per process); each reports its
 * best run.
 *
 * Output: `virtq in-order ring=<split|packed> B=16 L=1 evidx=1 per_chain_ns=<f>
 * uncollapsed_ns=<f> collapsed_ns=<f> collapsed_over_per_chain=<f>`, ns per chain, the ratio
 * collapsed / per chain (below 1: the collapsed batch is cheaper).
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
  InOrderW1Device,
  PackedW1Device,
  PackedW1Ring,
  verifyW1Variant,
} from '../lib/w1-variants.js';

const L = 1;

function devices(ring: 'split' | 'packed'): [Step[], () => void] {
  const label = `W1 ${ring} in-order`;
  if (ring === 'split') {
    const perChain = new VirtqW1Device(new W1Ring(L, true));
    const uncollapsed = new InOrderW1Device(new W1Ring(L, true), false);
    const collapsed = new InOrderW1Device(new W1Ring(L, true), true);
    return [
      [(r) => perChain.run(r), (r) => uncollapsed.run(r), (r) => collapsed.run(r)],
      () => {
        verifyW1(perChain);
        verifyW1Variant(uncollapsed, label);
        verifyW1Variant(collapsed, label);
      },
    ];
  }
  const perChain = new PackedW1Device(new PackedW1Ring(L, true));
  const uncollapsed = new InOrderW1Device(new PackedW1Ring(L, true), false);
  const collapsed = new InOrderW1Device(new PackedW1Ring(L, true, { collapsed: true }), true);
  return [
    [(r) => perChain.run(r), (r) => uncollapsed.run(r), (r) => collapsed.run(r)],
    () => {
      verifyW1Variant(perChain, 'W1 packed');
      verifyW1Variant(uncollapsed, label);
      verifyW1Variant(collapsed, label);
    },
  ];
}

function inOrderCase(ring: 'split' | 'packed'): BenchCase {
  return {
    name: `in-order/ring=${ring}/L=${L}/evidx=1`,
    run(ctx) {
      const [steps, verify] = devices(ring);
      const ms = alternate(steps);
      verify();
      const [perChain, uncollapsed, collapsed] = ms.map((m) => nsPerUnit(m, W1_BATCH)) as [
        number,
        number,
        number,
      ];
      ['per-chain', 'uncollapsed', 'collapsed'].forEach((label, k) => {
        ctx.log(`in-order ring=${ring} ${label}: ${describeRuns(ms[k]!, W1_BATCH)}`);
      });
      return (
        `virtq in-order ring=${ring} B=${W1_BATCH} L=${L} evidx=1 per_chain_ns=${fmt(perChain)}` +
        ` uncollapsed_ns=${fmt(uncollapsed)} collapsed_ns=${fmt(collapsed)}` +
        ` collapsed_over_per_chain=${fmt(collapsed / perChain)}`
      );
    },
  };
}

export const cases: BenchCase[] = [inOrderCase('split'), inOrderCase('packed')];
