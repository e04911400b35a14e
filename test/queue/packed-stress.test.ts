/**
 * Two-thread stress test of the packed ring, and of in-order completion on both rings: a
 * driver (PackedDriver or SplitDriver) in one worker thread and the device-side queue in
 * another, over one SharedArrayBuffer guest memory, notifying each other with Atomics.wait /
 * Atomics.notify as the ring's event suppression says. The harness is the split ring's
 * (test/queue/workers/); only the ring kind and the options differ.
 *
 * The packed queue has 250 slots, a size the split ring cannot have, so the wrap counters flip
 * at a slot that is not a power of two. Every chain must come back exactly once with the exact
 * length and bytes; progress must come from notifications, not from the waits' safety-net
 * timeouts. In the IN_ORDER runs the device completes through an InOrderCompleter, finishing
 * each batch out of order and publishing completed prefixes as single used entries, and the
 * driver checks that every chain comes back in the order it was made available.
 *
 * VIRTQ_STRESS_CHAINS=n changes the chains per run (default 1,000,000).
 */
import { describe, expect, it } from 'vitest';
import {
  describeResult,
  runStress,
  type StressOptions,
  type StressResult,
  timeoutShare,
} from './workers/stress-harness.js';

const CHAINS = Number(process.env.VIRTQ_STRESS_CHAINS ?? 1_000_000);
const PACKED_SIZE = 250;
const SPLIT_SIZE = 256;
const RUN_TIMEOUT_MS = 100_000;

function expectClean(r: StressResult, chains: number): void {
  expect(r.driver.chains).toBe(chains);
  expect(r.device.chains).toBe(chains);
  // Both sides slept at some point, and woke because the other side notified them: at most a
  // few wake-ups (a descheduled notifier on a loaded machine) may come from the timeout.
  expect(r.driver.waits + r.device.waits).toBeGreaterThan(0);
  expect(r.driver.notifiedWakeups + r.device.notifiedWakeups).toBeGreaterThan(0);
  expect(timeoutShare(r)).toBeLessThanOrEqual(0.05);
}

interface Run {
  name: string;
  options: Omit<StressOptions, 'chains' | 'timeoutMs'>;
}

const runs: Run[] = [
  {
    name: 'packed, EVENT_IDX on',
    options: { kind: 'packed', queueSize: PACKED_SIZE, eventIdx: true, indirect: false },
  },
  {
    name: 'packed, EVENT_IDX off',
    options: { kind: 'packed', queueSize: PACKED_SIZE, eventIdx: false, indirect: false },
  },
  {
    name: 'packed, indirect chains, EVENT_IDX on',
    options: { kind: 'packed', queueSize: PACKED_SIZE, eventIdx: true, indirect: true },
  },
  {
    name: 'split, IN_ORDER, EVENT_IDX on',
    options: {
      kind: 'split',
      queueSize: SPLIT_SIZE,
      eventIdx: true,
      indirect: false,
      inOrder: true,
    },
  },
  {
    name: 'packed, IN_ORDER, EVENT_IDX on',
    options: {
      kind: 'packed',
      queueSize: PACKED_SIZE,
      eventIdx: true,
      indirect: false,
      inOrder: true,
    },
  },
];

describe('packed queue and in-order completion: driver and device in two threads', () => {
  for (const run of runs) {
    it(
      `${run.name}: ${CHAINS} chains come back exactly once, with the right bytes`,
      async () => {
        const r = await runStress({ ...run.options, chains: CHAINS, timeoutMs: RUN_TIMEOUT_MS });
        console.info(describeResult(`stress, ${run.name}`, r));
        expectClean(r, CHAINS);
        if (run.options.inOrder === true) {
          // Batches really were collapsed: the device's batches of up to 32 chains finish in
          // groups of 1..7 swapped in pairs, so a full batch of 32 takes 3 to 16 used entries
          // (about one per 5 chains); one entry per chain would mean nothing was collapsed.
          expect(r.device.usedEntries).toBeGreaterThan(0);
          expect(r.device.usedEntries).toBeLessThan(CHAINS / 3);
        } else {
          expect(r.device.usedEntries).toBe(CHAINS);
        }
      },
      RUN_TIMEOUT_MS + 10_000,
    );
  }

  // The wake-up accounting must notice when progress comes only from the safety net on the
  // packed ring too: a driver that never kicks leaves the device to find each batch after a
  // timed-out wait.
  it('detects lost notifications on the packed ring (a driver that never kicks)', async () => {
    const r = await runStress({
      kind: 'packed',
      chains: 2000,
      queueSize: 50,
      eventIdx: true,
      indirect: false,
      timeoutMs: 30_000,
      waitMs: 2,
      dropKicks: true,
    });
    console.info(describeResult('packed stress, driver drops its kicks', r));
    expect(r.driver.chains).toBe(2000);
    expect(r.device.timeoutWakeupsWithWork).toBeGreaterThan(0);
    expect(timeoutShare(r)).toBeGreaterThan(0.05);
  }, 40_000);

  it('refuses a split ring whose size is not a power of two', async () => {
    await expect(
      runStress({
        kind: 'split',
        chains: 1,
        queueSize: PACKED_SIZE,
        eventIdx: true,
        indirect: false,
        timeoutMs: 1000,
      }),
    ).rejects.toThrow(RangeError);
  });
});
