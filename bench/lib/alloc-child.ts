/**
 * The allocation proof's measuring process (bench/cases/alloc.ts starts it with
 * `node --expose-gc --import tsx`): runs `chains` W1 chains through pop(into), addUsed,
 * advanceUsedRingIdx and prepareKick after a warm-up, and prints one JSON line:
 * heap used before and after the loop (both right after a full GC, and right after the loop
 * without one) and every GC that started during the loop, by kind.
 *
 * Usage: alloc-child.ts <L> <evidx 0|1> <chains>
 */

import { constants, PerformanceObserver, performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { getHeapSpaceStatistics } from 'node:v8';
import { VirtqW1Device, verifyW1, W1_BATCH, W1Ring } from './w1.js';

export interface AllocReport {
  chains: number;
  /** heapUsed after a full GC, before the loop. */
  heapBefore: number;
  /** heapUsed right after the loop, no GC in between. */
  heapAfterNoGc: number;
  /** heapUsed after a full GC, after the loop. */
  heapAfterGc: number;
  /** Growth of each V8 heap space over the loop (no GC in between), spaces that changed only. */
  spaceGrowth: Record<string, number>;
  /** GCs that started during the loop. */
  minorGcs: number;
  majorGcs: number;
  otherGcs: number;
  loopMs: number;
}

function spacesUsed(): Map<string, number> {
  return new Map(getHeapSpaceStatistics().map((s) => [s.space_name, s.space_used_size]));
}

async function main(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  const [lArg, evArg, chainsArg] = process.argv.slice(2);
  const chainLength = Number(lArg);
  const eventIdx = evArg === '1';
  const chains = Number(chainsArg);
  const rounds = Math.ceil(chains / W1_BATCH);

  const ring = new W1Ring(chainLength, eventIdx);
  const device = new VirtqW1Device(ring);
  // Warm-up: let the loop reach optimised code before it is measured.
  for (let i = 0; i < 3; i++) device.run(50_000);

  const gcs: { start: number; kind: number }[] = [];
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const detail = (e as { detail?: { kind?: number } }).detail;
      gcs.push({ start: e.startTime, kind: detail?.kind ?? -1 });
    }
  });
  observer.observe({ entryTypes: ['gc'] });
  gc();
  gc();
  await sleep(20);

  const heapBefore = process.memoryUsage().heapUsed;
  const spacesBefore = spacesUsed();
  const t0 = performance.now();
  device.run(rounds);
  const t1 = performance.now();
  const spacesAfter = spacesUsed();
  const heapAfterNoGc = process.memoryUsage().heapUsed;
  await sleep(20); // let the observer deliver the loop's GC entries
  gc();
  gc();
  const heapAfterGc = process.memoryUsage().heapUsed;
  observer.disconnect();
  verifyW1(device);

  const spaceGrowth: Record<string, number> = {};
  for (const [name, after] of spacesAfter) {
    const growth = after - (spacesBefore.get(name) ?? 0);
    if (growth !== 0) spaceGrowth[name] = growth;
  }
  const during = gcs.filter((g) => g.start >= t0 && g.start <= t1);
  const report: AllocReport = {
    chains: rounds * W1_BATCH,
    heapBefore,
    heapAfterNoGc,
    heapAfterGc,
    spaceGrowth,
    minorGcs: during.filter((g) => g.kind === constants.NODE_PERFORMANCE_GC_MINOR).length,
    majorGcs: during.filter((g) => g.kind === constants.NODE_PERFORMANCE_GC_MAJOR).length,
    otherGcs: during.filter(
      (g) =>
        g.kind !== constants.NODE_PERFORMANCE_GC_MINOR &&
        g.kind !== constants.NODE_PERFORMANCE_GC_MAJOR,
    ).length,
    loopMs: t1 - t0,
  };
  console.log(JSON.stringify(report));
}

await main();
