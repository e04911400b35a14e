/**
 * Two-thread stress test of the split ring: a SplitDriver in one worker thread and a
 * SplitQueue in another, over one SharedArrayBuffer guest memory, notifying each other with
 * Atomics.wait / Atomics.notify as the ring's notification suppression says (EVENT_IDX, or
 * the flags without it). Every chain must come back exactly once with the exact length and
 * bytes; progress must come from notifications, not from the waits' safety-net timeouts.
 *
 * VIRTQ_STRESS_CHAINS=n changes the chains per run (default 1,000,000).
 */
import { describe, expect, it } from 'vitest';
import {
  describeResult,
  runStress,
  type StressResult,
  timeoutShare,
} from './workers/stress-harness.js';

const CHAINS = Number(process.env.VIRTQ_STRESS_CHAINS ?? 1_000_000);
const QUEUE_SIZE = 256;
const RUN_TIMEOUT_MS = 100_000;

function expectClean(r: StressResult, chains: number): void {
  expect(r.driver.chains).toBe(chains);
  expect(r.device.chains).toBe(chains);
  // Both sides slept at some point, and woke because the other side notified them: at most a
  // few wake-ups (a descheduled notifier on a loaded machine) may come from the timeout.
  expect(r.driver.waits + r.device.waits).toBeGreaterThan(0);
  expect(timeoutShare(r)).toBeLessThanOrEqual(0.05);
}

describe('split queue: driver and device in two threads', () => {
  const runs = [
    { name: 'EVENT_IDX on', eventIdx: true, indirect: false },
    { name: 'EVENT_IDX off', eventIdx: false, indirect: false },
    { name: 'indirect chains, EVENT_IDX on', eventIdx: true, indirect: true },
  ];
  for (const run of runs) {
    it(
      `${run.name}: ${CHAINS} chains come back exactly once, with the right bytes`,
      async () => {
        const r = await runStress({
          kind: 'split',
          chains: CHAINS,
          queueSize: QUEUE_SIZE,
          eventIdx: run.eventIdx,
          indirect: run.indirect,
          timeoutMs: RUN_TIMEOUT_MS,
        });
        console.info(describeResult(`split stress, ${run.name}`, r));
        expectClean(r, CHAINS);
      },
      RUN_TIMEOUT_MS + 10_000,
    );
  }

  // The harness must notice when progress comes only from the safety net: a driver that
  // never kicks leaves the device to find each batch after a timed-out wait.
  it('detects lost notifications (a driver that never kicks)', async () => {
    const r = await runStress({
      kind: 'split',
      chains: 2048,
      queueSize: 64,
      eventIdx: true,
      indirect: false,
      timeoutMs: 30_000,
      waitMs: 2,
      dropKicks: true,
    });
    console.info(describeResult('split stress, driver drops its kicks', r));
    expect(r.driver.chains).toBe(2048);
    expect(r.device.timeoutWakeupsWithWork).toBeGreaterThan(0);
    expect(timeoutShare(r)).toBeGreaterThan(0.05);
  }, 40_000);
});
