/**
 * Parent side of the two-thread stress test: builds a shared guest memory and a control
 * block, starts the driver and device workers, and collects their reports. A worker error,
 * a worker that exits without reporting, or the overall timeout stops both workers and
 * rejects with what is known, so a bug cannot hang the suite.
 */
import { Worker } from 'node:worker_threads';
import { GuestMemory } from '../../../src/memory/index.js';
import { RING_KINDS } from './ring-kinds.js';
import {
  CTL,
  CTL_SLOTS,
  type SideReport,
  SLOT,
  type StressConfig,
  type WorkerMessage,
} from './stress-protocol.js';

export interface StressOptions {
  /** A key of RING_KINDS: 'split' or 'packed'. */
  kind: string;
  chains: number;
  queueSize: number;
  eventIdx: boolean;
  indirect: boolean;
  /** VIRTIO_F_IN_ORDER with collapsed batches (see StressConfig.inOrder; default false). */
  inOrder?: boolean;
  /** Overall limit for the run, ms. */
  timeoutMs: number;
  /** Safety-net timeout of each Atomics.wait, ms (default 25). */
  waitMs?: number;
  /** Test hook: the driver never notifies the device, as a lost-wakeup bug would. */
  dropKicks?: boolean;
}

export interface StressResult {
  driver: SideReport;
  device: SideReport;
  elapsedMs: number;
  chainsPerSecond: number;
}

const align = (n: number, a: number) => Math.ceil(n / a) * a;

/**
 * Share of wake-ups (both sides) that made progress only because a wait timed out. Near 0
 * when notifications work; near 1 when they are lost.
 */
export function timeoutShare(r: StressResult): number {
  const byTimeout = r.driver.timeoutWakeupsWithWork + r.device.timeoutWakeupsWithWork;
  const byNotification = r.driver.notifiedWakeups + r.device.notifiedWakeups;
  const all = byTimeout + byNotification;
  return all === 0 ? 0 : byTimeout / all;
}

export function describeResult(name: string, r: StressResult): string {
  const side = (s: SideReport) =>
    `sent ${s.notificationsSent} notifications, slept ${s.waits}x (${s.notifiedWakeups} notified, ` +
    `${s.timeoutWakeupsWithWork} timed out with work, ${s.idleTimeouts} idle timeouts), ` +
    `${s.recheckHits} re-check hits`;
  return (
    `${name}: ${r.driver.chains} chains in ${(r.elapsedMs / 1000).toFixed(2)} s = ` +
    `${Math.round(r.chainsPerSecond)} chains/s\n  driver: ${side(r.driver)}\n  device: ${side(r.device)}, ` +
    `${r.device.usedEntries} used entries`
  );
}

export async function runStress(o: StressOptions): Promise<StressResult> {
  const kind = RING_KINDS[o.kind];
  if (kind === undefined) throw new RangeError(`unknown ring kind ${o.kind}`);
  const n = o.queueSize;
  if (!Number.isInteger(n) || n < 1 || (kind.powerOfTwo && (n & (n - 1)) !== 0)) {
    throw new RangeError(`queue size ${n} does not suit a ${o.kind} ring`);
  }
  const ringBase = 0x1000;
  const { end, ring } = kind.layout(ringBase, o.queueSize);
  const slotBase = align(end, 4096);
  const memSize = align(slotBase + o.queueSize * SLOT.bytes, 4096);
  const memory = GuestMemory.create(memSize, { shared: true });
  const control = new SharedArrayBuffer(CTL_SLOTS * 4);
  const ctl = new Int32Array(control);
  const common: Omit<StressConfig, 'entry'> & { dropKicks: boolean } = {
    kind: o.kind,
    memory: memory.toShared(),
    control,
    queueSize: o.queueSize,
    ringBase,
    ring,
    slotBase,
    slotBytes: SLOT.bytes,
    chains: o.chains,
    eventIdx: o.eventIdx,
    indirect: o.indirect,
    inOrder: o.inOrder ?? false,
    waitMs: o.waitMs ?? 25,
    dropKicks: o.dropKicks ?? false,
  };
  const bootstrap = new URL('./ts-worker.mjs', import.meta.url);
  const workers: Worker[] = [];
  const stopAll = () => {
    Atomics.store(ctl, CTL.STOP, 1);
    Atomics.notify(ctl, CTL.KICKS);
    Atomics.notify(ctl, CTL.IRQS);
    Atomics.notify(ctl, CTL.DRIVER_READY);
  };
  const start = (side: 'driver' | 'device'): Promise<SideReport> => {
    const entry = new URL(`./stress-${side}.ts`, import.meta.url).href;
    const w = new Worker(bootstrap, { workerData: { ...common, entry } });
    workers.push(w);
    return new Promise<SideReport>((resolve, reject) => {
      let settled = false;
      w.on('message', (m: WorkerMessage) => {
        settled = true;
        if (m.type === 'done') resolve(m.report);
        else reject(new Error(`${side} worker failed: ${m.message}\n${m.stack ?? ''}`));
      });
      w.on('error', (e) => {
        settled = true;
        reject(new Error(`${side} worker crashed: ${e.stack ?? e.message}`));
      });
      w.on('exit', (code) => {
        if (!settled) reject(new Error(`${side} worker exited (code ${code}) without a report`));
      });
    });
  };

  const t0 = performance.now();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new Error(
          `stress run timed out after ${o.timeoutMs} ms: driver verified ` +
            `${Atomics.load(ctl, CTL.COMPLETED)} and device processed ` +
            `${Atomics.load(ctl, CTL.PROCESSED)} of ${o.chains} chains`,
        ),
      );
    }, o.timeoutMs);
  });
  const both = [start('driver'), start('device')] as const;
  try {
    const sides = Promise.all(both);
    // On the first failure, stop the other side so it does not wait out its own timeout.
    sides.catch(stopAll);
    const [driver, device] = await Promise.race([sides, timeout]);
    const elapsedMs = performance.now() - t0;
    return { driver, device, elapsedMs, chainsPerSecond: (o.chains / elapsedMs) * 1000 };
  } catch (e) {
    stopAll();
    throw await withOtherSide(e, both);
  } finally {
    clearTimeout(timer);
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/**
 * The error of a failed run, with what the other side reported. The side that fails sets
 * STOP, and the other one then fails with "stopped after n chains", which may arrive first;
 * waiting briefly for both keeps the real cause in the message.
 */
async function withOtherSide(
  first: unknown,
  sides: readonly Promise<SideReport>[],
): Promise<Error> {
  const settled = await Promise.race([
    Promise.allSettled(sides),
    new Promise<null>((r) => setTimeout(() => r(null), 3000).unref()),
  ]);
  const firstError = first instanceof Error ? first : new Error(String(first));
  if (settled === null) return firstError;
  const messages = settled.flatMap((s) =>
    s.status === 'rejected'
      ? [s.reason instanceof Error ? s.reason.message : String(s.reason)]
      : [],
  );
  // The secondary failures ("stopped after") go last.
  const isSecondary = (m: string) => m.includes(': stopped after ');
  messages.sort((a, b) => Number(isSecondary(a)) - Number(isSecondary(b)));
  if (!messages.includes(firstError.message)) messages.unshift(firstError.message);
  const e = new Error(messages.join('\n'));
  if (firstError.stack !== undefined) e.stack = `${e.message}\n${firstError.stack}`;
  return e;
}
