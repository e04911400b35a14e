/**
 * Device side of the two-thread stress test. Pops chains, checks that they arrive in order
 * with the layout and bytes the driver wrote for their sequence number, writes the
 * transformed pattern back, reports the exact length, and publishes used buffers in batches,
 * interrupting the driver when the ring says so. When idle it arms notifications, re-checks,
 * and sleeps on the kick counter.
 *
 * In-order runs complete through an InOrderCompleter instead of addUsed: each batch of popped
 * chains is finished in a scrambled order (groups swapped in pairs, each group back to front)
 * with a flush after every completion, so flushes that find the oldest chain unfinished
 * publish nothing, and the others publish a whole prefix as one collapsed used entry.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '../../../src/memory/index.js';
import { DescriptorChain, InOrderCompleter } from '../../../src/queue/index.js';
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
    inOrder: cfg.inOrder,
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
    usedEntries: 0,
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
    const written = writtenLength(seq, cfg.inOrder);
    k = 0;
    for (let i = nr; i < c.count && k < written; i++) {
      const v = c.slice(i);
      for (let b = 0; b < v.length && k < written; b++, k++) v[b] = writtenByte(seq, k);
    }
    expectSeq++;
    return written;
  };

  const interrupt = (): void => {
    Atomics.add(ctl, CTL.IRQS, 1);
    Atomics.notify(ctl, CTL.IRQS, 1);
    report.notificationsSent++;
  };

  const publish = (): void => {
    if (dev.publish()) interrupt();
  };

  // In-order completion: the chains of the current batch, in pop order.
  const completer = cfg.inOrder ? new InOrderCompleter(dev, true) : null;
  const batchIds = new Int32Array(PUBLISH_EVERY);
  const batchLens = new Int32Array(PUBLISH_EVERY);
  let batchSize = 0;
  let batchNo = 0;

  /** Completes chain `j` of the batch and flushes; interrupts when the ring says so. */
  const completeOne = (c: InOrderCompleter, j: number): void => {
    c.complete(batchIds[j]!, batchLens[j]!);
    if (c.flush() > 0) {
      report.usedEntries++;
      if (dev.kickWanted()) interrupt();
    }
  };

  /**
   * Finishes the batch out of order: groups of 1..7 chains (the size varies per batch), the
   * groups in swapped pairs (1, 0, 3, 2, ...), each group back to front.
   */
  const completeBatch = (c: InOrderCompleter): void => {
    const g = 1 + (batchNo % 7);
    const groups = Math.ceil(batchSize / g);
    for (let p = 0; p < groups; p += 2) {
      // The later group of the pair first: its flushes find the earlier group unfinished.
      for (let q = Math.min(p + 1, groups - 1); q >= p; q--) {
        const end = Math.min(batchSize, (q + 1) * g);
        for (let j = end - 1; j >= q * g; j--) completeOne(c, j);
      }
    }
    if (c.pending !== 0) fail(`${c.pending} chains still pending after their batch`);
    batchSize = 0;
    batchNo++;
  };

  // Start polling, with notifications off until the ring runs dry.
  dev.disarm();
  while (processed < total) {
    if (Atomics.load(ctl, CTL.STOP) !== 0) fail(`stopped after ${processed} chains`);
    let n = 0;
    for (;;) {
      const c = dev.pop(chain);
      if (c === null) break;
      if (completer === null) {
        dev.addUsed(c.head, handle(c));
        report.usedEntries++;
      } else {
        completer.popped(c.head);
        batchIds[batchSize] = c.head;
        batchLens[batchSize] = handle(c);
        batchSize++;
      }
      n++;
      processed++;
      if (n % PUBLISH_EVERY === 0) {
        if (completer === null) publish();
        else completeBatch(completer);
      }
    }
    if (n % PUBLISH_EVERY !== 0) {
      if (completer === null) publish();
      else completeBatch(completer);
    }
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
