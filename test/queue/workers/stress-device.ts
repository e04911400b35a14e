/**
 * Device side of the two-thread stress test. Pops chains, checks that they arrive in order
 * with the layout and bytes the driver wrote for their sequence number, writes the
 * transformed pattern back, reports the exact length, and publishes used buffers in batches,
 * interrupting the driver when the ring says so. When idle it arms notifications, re-checks,
 * and sleeps on the kick counter.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '../../../src/memory/index.js';
import { DescriptorChain } from '../../../src/queue/index.js';
import { RING_KINDS } from './ring-kinds.js';
import {
  CTL,
  readableBuffers,
  readableByte,
  readableLength,
  type SideReport,
  type StressConfig,
  type WorkerMessage,
  writableBuffers,
  writableCapacity,
  writtenByte,
  writtenLength,
} from './stress-protocol.js';

const cfg = workerData as StressConfig;

/** Used buffers published per batch while the device is busy. */
const PUBLISH_EVERY = 32;

function run(): SideReport {
  const ctl = new Int32Array(cfg.control);
  const kind = RING_KINDS[cfg.kind];
  if (kind === undefined) throw new Error(`unknown ring kind ${cfg.kind}`);
  // The driver lays out (and zeroes) the rings first.
  while (Atomics.load(ctl, CTL.DRIVER_READY) === 0) {
    if (Atomics.load(ctl, CTL.STOP) !== 0) throw new Error('device: stopped before start');
    Atomics.wait(ctl, CTL.DRIVER_READY, 0, 100);
  }
  const memory = GuestMemory.fromShared(cfg.memory);
  const dev = kind.createDevice(memory, cfg.ring, {
    size: cfg.queueSize,
    eventIdx: cfg.eventIdx,
    indirect: cfg.indirect,
  });
  const total = cfg.chains;
  const chain = new DescriptorChain(8);
  const report: SideReport = {
    chains: 0,
    notificationsSent: 0,
    waits: 0,
    notifiedWakeups: 0,
    timeoutWakeupsWithWork: 0,
    idleTimeouts: 0,
    recheckHits: 0,
    elapsedMs: 0,
  };
  const t0 = performance.now();
  let expectSeq = 0;
  let processed = 0;

  const fail = (msg: string): never => {
    throw new Error(`device: ${msg}`);
  };

  /** Checks chain `c` against its sequence number and writes the reply; returns its length. */
  const handle = (c: DescriptorChain): number => {
    const nr = c.writableStart;
    // The sequence number: the first 4 readable bytes, whichever buffers they sit in.
    let seq = 0;
    let k = 0;
    for (let i = 0; i < nr && k < 4; i++) {
      const v = c.slice(i);
      for (let b = 0; b < v.length && k < 4; b++, k++) seq += v[b]! * 2 ** (8 * k);
    }
    if (k < 4) fail(`chain ${c.head} has ${c.readableLength} readable bytes`);
    if (seq !== expectSeq) fail(`got chain ${seq}, expected ${expectSeq} (avail order)`);
    if (
      nr !== readableBuffers(seq) ||
      c.count - nr !== writableBuffers(seq) ||
      c.readableLength !== readableLength(seq) ||
      c.writableLength !== writableCapacity(seq)
    ) {
      fail(
        `chain ${seq}: ${nr}+${c.count - nr} buffers of ${c.readableLength}+${c.writableLength} bytes`,
      );
    }
    k = 0;
    for (let i = 0; i < nr; i++) {
      const v = c.slice(i);
      for (let b = 0; b < v.length; b++, k++) {
        if (v[b] !== readableByte(seq, k)) fail(`chain ${seq}: readable byte ${k} is ${v[b]}`);
      }
    }
    const written = writtenLength(seq);
    k = 0;
    for (let i = nr; i < c.count && k < written; i++) {
      const v = c.slice(i);
      for (let b = 0; b < v.length && k < written; b++, k++) v[b] = writtenByte(seq, k);
    }
    expectSeq++;
    return written;
  };

  const publish = (): void => {
    if (dev.publish()) {
      Atomics.add(ctl, CTL.IRQS, 1);
      Atomics.notify(ctl, CTL.IRQS, 1);
      report.notificationsSent++;
    }
  };

  // Start polling, with notifications off until the ring runs dry.
  dev.disarm();
  while (processed < total) {
    if (Atomics.load(ctl, CTL.STOP) !== 0) fail(`stopped after ${processed} chains`);
    let n = 0;
    for (;;) {
      const c = dev.pop(chain);
      if (c === null) break;
      dev.addUsed(c.head, handle(c));
      n++;
      processed++;
      if (n % PUBLISH_EVERY === 0) publish();
    }
    if (n % PUBLISH_EVERY !== 0) publish();
    if (n > 0) {
      Atomics.store(ctl, CTL.PROCESSED, processed);
      continue;
    }
    // Idle: read the counter, arm, re-check, sleep. A chain published after the re-check
    // comes with a kick that changes the counter, so Atomics.wait returns at once.
    const seen = Atomics.load(ctl, CTL.KICKS);
    if (!dev.arm()) {
      report.recheckHits++;
      dev.disarm();
      continue;
    }
    if (Atomics.load(ctl, CTL.STOP) !== 0) continue;
    report.waits++;
    const r = Atomics.wait(ctl, CTL.KICKS, seen, cfg.waitMs);
    if (r === 'timed-out') {
      if (dev.hasWork()) report.timeoutWakeupsWithWork++;
      else report.idleTimeouts++;
    } else report.notifiedWakeups++;
    dev.disarm();
  }
  report.chains = processed;
  report.elapsedMs = performance.now() - t0;
  return report;
}

try {
  const report = run();
  parentPort!.postMessage({ type: 'done', report } satisfies WorkerMessage);
} catch (e) {
  const ctl = new Int32Array(cfg.control);
  Atomics.store(ctl, CTL.STOP, 1);
  Atomics.notify(ctl, CTL.IRQS);
  const err = e instanceof Error ? e : new Error(String(e));
  const msg: WorkerMessage = { type: 'error', message: err.message };
  if (err.stack !== undefined) msg.stack = err.stack;
  parentPort!.postMessage(msg);
}
