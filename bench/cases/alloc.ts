/**
 * Steady-state allocation proof: 10,000,000 W1 chains through pop(into), addUsed,
 * advanceUsedRingIdx and prepareKick (with the W1 driver side), in a child process started
 * with --expose-gc so the heap can be measured after full GCs. See bench/lib/alloc-child.ts.
 *
 * Output: `virtq alloc L=<L> evidx=<0|1> chains=<n> heap_growth=<bytes> new_space_growth=<bytes>
 * retained=<bytes> bytes_per_chain=<float> young_gcs=<n> full_gcs=<n>`: heap growth over the
 * loop with no GC in between (of which in the young generation), heap retained after full
 * GCs on both sides, and the GCs that started during the loop. Zero allocation per chain shows
 * as no GC during the loop and a growth that does not scale with the chain count (a few tens
 * of KB of one-off optimised code and bookkeeping).
 */

import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { AllocReport } from '../lib/alloc-child.js';
import type { BenchCase } from '../lib/harness.js';

const CHAINS = 10_000_000;
const CHILD = fileURLToPath(new URL('../lib/alloc-child.ts', import.meta.url));

async function measure(chainLength: number, eventIdx: boolean): Promise<AllocReport> {
  const args = [
    '--expose-gc',
    '--import',
    import.meta.resolve('tsx'),
    CHILD,
    String(chainLength),
    eventIdx ? '1' : '0',
    String(CHAINS),
  ];
  const { stdout } = await promisify(execFile)(process.execPath, args);
  const last = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(last) as AllocReport;
}

function allocCase(chainLength: number, eventIdx: boolean): BenchCase {
  const evidx = eventIdx ? 1 : 0;
  return {
    name: `alloc/L=${chainLength}/evidx=${evidx}`,
    async run(ctx) {
      const r = await measure(chainLength, eventIdx);
      ctx.log(`alloc L=${chainLength} evidx=${evidx}: ${JSON.stringify(r)}`);
      const growth = r.heapAfterNoGc - r.heapBefore;
      return (
        `virtq alloc L=${chainLength} evidx=${evidx} chains=${r.chains} heap_growth=${growth}` +
        ` new_space_growth=${r.spaceGrowth.new_space ?? 0} retained=${r.heapAfterGc - r.heapBefore}` +
        ` bytes_per_chain=${(growth / r.chains).toFixed(4)} young_gcs=${r.minorGcs}` +
        ` full_gcs=${r.majorGcs + r.otherGcs}`
      );
    },
  };
}

export const cases: BenchCase[] = [1, 4].flatMap((l) => [allocCase(l, false), allocCase(l, true)]);
