/**
 * Driver side of the two-thread stress test. Adds chains whose readable bytes encode a
 * sequence number, kicks the device when the ring asks for it, sleeps on the interrupt
 * counter when it has nothing to do (arming, then re-checking, so no wakeup is lost), and
 * verifies every used buffer: id in flight, exact length, the device's bytes, and nothing
 * written past the reported length. Each sequence number must complete exactly once, and in
 * in-order runs in the order it was made available.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { DriverBuffer } from '../../../src/driver/index.js';
import { GuestMemory } from '../../../src/memory/index.js';
import { RING_KINDS } from './ring-kinds.js';
import {
  CTL,
  readableBuffers,
  readableByte,
  readableLength,
  SENTINEL,
  type SideReport,
  SLOT,
  type StressConfig,
  split,
  type WorkerMessage,
  writableBuffers,
  writableCapacity,
  writtenByte,
  writtenLength,
} from './stress-protocol.js';

const cfg = workerData as StressConfig & { dropKicks?: boolean };

function run(): SideReport {
  const ctl = new Int32Array(cfg.control);
  const kind = RING_KINDS[cfg.kind];
  if (kind === undefined) throw new Error(`unknown ring kind ${cfg.kind}`);
  const memory = GuestMemory.fromShared(cfg.memory);
  const size = cfg.queueSize;
  const drv = kind.createDriver(memory, cfg.ring, {
    size,
    eventIdx: cfg.eventIdx,
    indirect: cfg.indirect,
    inOrder: cfg.inOrder,
  });
  Atomics.store(ctl, CTL.DRIVER_READY, 1);
  Atomics.notify(ctl, CTL.DRIVER_READY);

  const total = cfg.chains;
  // One slot of buffers per chain in flight; at most `size` chains are in flight.
  const slots = size;
  const free = new Int32Array(slots);
  for (let i = 0; i < slots; i++) free[i] = slots - 1 - i;
  let freeTop = slots;
  const slotSeq = new Float64Array(slots).fill(-1);
  const idToSlot = new Int32Array(65536).fill(-1);
  const completed = new Uint8Array(total);
  const slotAddr = (s: number) => cfg.slotBase + s * cfg.slotBytes;
  const views = Array.from({ length: slots }, (_, s) => memory.slice(slotAddr(s), cfg.slotBytes));
  // Reused buffer descriptions (add() copies them into the ring).
  const rd = Array.from({ length: slots }, () => [
    [{ addr: 0, len: 0 }],
    [
      { addr: 0, len: 0 },
      { addr: 0, len: 0 },
    ],
  ]);
  const wr = Array.from({ length: slots }, () => [
    [{ addr: 0, len: 0 }],
    [
      { addr: 0, len: 0 },
      { addr: 0, len: 0 },
    ],
  ]);

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
  let nextSeq = 0;
  let done = 0;

  const fail = (msg: string): never => {
    throw new Error(`driver: ${msg}`);
  };

  const prepare = (seq: number, slot: number): [DriverBuffer[], DriverBuffer[]] => {
    const v = views[slot]!;
    const base = slotAddr(slot);
    const nr = readableBuffers(seq);
    const nw = writableBuffers(seq);
    const [r0, r1] = split(readableLength(seq), nr);
    const [w0, w1] = split(writableCapacity(seq), nw);
    const readable = rd[slot]![nr - 1]!;
    const writable = wr[slot]![nw - 1]!;
    let k = 0;
    for (let i = 0; i < nr; i++) {
      const off = SLOT.readable[i]!;
      const len = i === 0 ? r0 : r1;
      for (let b = 0; b < len; b++) v[off + b] = readableByte(seq, k++);
      readable[i]!.addr = base + off;
      readable[i]!.len = len;
    }
    for (let i = 0; i < nw; i++) {
      const off = SLOT.writable[i]!;
      const len = i === 0 ? w0 : w1;
      v.fill(SENTINEL, off, off + len);
      writable[i]!.addr = base + off;
      writable[i]!.len = len;
    }
    return [readable, writable];
  };

  const verify = (seq: number, slot: number, len: number): void => {
    const want = writtenLength(seq, cfg.inOrder);
    if (len !== want) fail(`chain ${seq}: device reported ${len} bytes written, expected ${want}`);
    const v = views[slot]!;
    const nw = writableBuffers(seq);
    const [w0, w1] = split(writableCapacity(seq), nw);
    let k = 0;
    for (let i = 0; i < nw; i++) {
      const off = SLOT.writable[i]!;
      const n = i === 0 ? w0 : w1;
      for (let b = 0; b < n; b++, k++) {
        const got = v[off + b]!;
        const exp = k < want ? writtenByte(seq, k) : SENTINEL;
        if (got !== exp) {
          fail(`chain ${seq}: writable byte ${k} is ${got}, expected ${exp} (length ${want})`);
        }
      }
    }
  };

  const drain = (): number => {
    let n = 0;
    for (;;) {
      const id = drv.popUsed();
      if (id < 0) return n;
      const slot = idToSlot[id] ?? -1;
      if (slot < 0) fail(`used id ${id} is not in flight`);
      idToSlot[id] = -1;
      const seq = slotSeq[slot]!;
      verify(seq, slot, drv.lastUsedLen);
      if (completed[seq] !== 0) fail(`chain ${seq} came back twice`);
      // §2.7.9 / §2.8.8 with VIRTIO_F_IN_ORDER: buffers are used in the order they were made
      // available, and `done` chains (0 .. done - 1) came back before this one.
      if (cfg.inOrder && seq !== done) fail(`chain ${seq} came back in place ${done}`);
      completed[seq] = 1;
      slotSeq[slot] = -1;
      free[freeTop++] = slot;
      done++;
      n++;
      if ((done & 1023) === 0) Atomics.store(ctl, CTL.COMPLETED, done);
    }
  };

  const batchMax = Math.max(1, size >>> 1);
  let kicks = 0;
  while (done < total) {
    if (Atomics.load(ctl, CTL.STOP) !== 0) fail(`stopped after ${done} chains`);
    let added = 0;
    // Every 4th batch carries one chain, so the other side's notification windows are often a
    // single chain (with indirect chains: a single packed ring slot), where an off-by-one in
    // the event arithmetic loses the notification.
    const limit = (kicks & 3) === 3 ? 1 : batchMax;
    while (nextSeq < total && added < limit && freeTop > 0) {
      const seq = nextSeq;
      if (!drv.canAdd(readableBuffers(seq) + writableBuffers(seq), cfg.indirect)) break;
      const slot = free[--freeTop]!;
      const [readable, writable] = prepare(seq, slot);
      const id = drv.add(readable, writable, cfg.indirect ? slotAddr(slot) + SLOT.table : null);
      if (idToSlot[id] !== -1) fail(`ring gave id ${id}, which is still in flight`);
      idToSlot[id] = slot;
      slotSeq[slot] = seq;
      nextSeq++;
      added++;
    }
    if (added > 0) kicks++;
    if (added > 0 && drv.kick() && cfg.dropKicks !== true) {
      Atomics.add(ctl, CTL.KICKS, 1);
      Atomics.notify(ctl, CTL.KICKS, 1);
      report.notificationsSent++;
    }
    const got = drain();
    if (got > 0 || added > 0) continue;
    // Nothing to add and nothing used: sleep until the device interrupts. Read the counter,
    // arm, re-check; a used buffer published after the re-check comes with an interrupt that
    // changes the counter, so Atomics.wait returns at once.
    const seen = Atomics.load(ctl, CTL.IRQS);
    drv.enableInterrupts();
    if (drv.hasUsed()) {
      report.recheckHits++;
      drv.disableInterrupts();
      continue;
    }
    if (Atomics.load(ctl, CTL.STOP) !== 0) continue;
    report.waits++;
    const r = Atomics.wait(ctl, CTL.IRQS, seen, cfg.waitMs);
    if (r === 'timed-out') {
      if (drv.hasUsed()) report.timeoutWakeupsWithWork++;
      else report.idleTimeouts++;
    } else report.notifiedWakeups++;
    drv.disableInterrupts();
  }
  Atomics.store(ctl, CTL.COMPLETED, done);
  for (let s = 0; s < total; s++) if (completed[s] !== 1) fail(`chain ${s} never came back`);
  report.chains = done;
  report.elapsedMs = performance.now() - t0;
  return report;
}

try {
  const report = run();
  parentPort!.postMessage({ type: 'done', report } satisfies WorkerMessage);
} catch (e) {
  const ctl = new Int32Array(cfg.control);
  Atomics.store(ctl, CTL.STOP, 1);
  Atomics.notify(ctl, CTL.KICKS);
  const err = e instanceof Error ? e : new Error(String(e));
  const msg: WorkerMessage = { type: 'error', message: err.message };
  if (err.stack !== undefined) msg.stack = err.stack;
  parentPort!.postMessage(msg);
}
