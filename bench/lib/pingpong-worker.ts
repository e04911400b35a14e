/**
 * One side of the two-thread ping-pong (bench/cases/pingpong.ts), run in a worker thread.
 *
 * Guest memory is a SharedArrayBuffer (the W1 layout: size 256, rings at 0x0 / 0x1000 /
 * 0x2000). Kicks and interrupts are counters in a small shared Int32Array: the notifier adds
 * one and calls Atomics.notify; the waiter reads the counter, re-checks the ring after
 * re-enabling notifications, and only then Atomics.wait()s on the value it read, so a
 * notification that lands in between is never lost.
 *
 * - Driver (SplitDriver): each round adds B device-writable chains of one 4 KiB buffer,
 *   publishes once and kicks when `needsNotification()` says so; then collects the B used
 *   elements, sleeping for an interrupt when none is ready. With EVENT_IDX it asks to be
 *   interrupted only when the last of the B is used (used_event = last used idx + B - 1).
 * - Device (SplitQueue): pops with one reused DescriptorChain, walks it, and completes each
 *   chain as it goes (addUsed, advanceUsedRingIdx, prepareKick, interrupt if asked). When
 *   the ring is empty it re-enables notifications (avail_event with EVENT_IDX, else clearing
 *   VIRTQ_USED_F_NO_NOTIFY), re-checks, and sleeps for a kick.
 */

import { parentPort, workerData } from 'node:worker_threads';
import { DescriptorChain, type DriverBuffer, SplitDriver, SplitQueue } from '../../src/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { bestOf } from './harness.js';
import {
  CTL_IRQS,
  CTL_KICKS,
  CTL_STOP,
  type DeviceResult,
  type DriverResult,
  type PingPongData,
} from './pingpong-protocol.js';
import {
  W1_AVAIL,
  W1_BUFFER_BASE,
  W1_BUFFER_LEN,
  W1_DESC,
  W1_LAYOUT,
  W1_QUEUE_SIZE,
  W1_USED,
} from './w1.js';

function runDriver(data: PingPongData, memory: GuestMemory, ctl: Int32Array): void {
  const port = parentPort!;
  const driver = new SplitDriver(memory, {
    size: W1_QUEUE_SIZE,
    layout: { ...W1_LAYOUT },
    eventIdx: data.eventIdx,
  });
  const batch = data.batch;
  const none: DriverBuffer[] = [];
  const buffers: DriverBuffer[][] = [];
  for (let k = 0; k < batch; k++) {
    buffers.push([{ addr: W1_BUFFER_BASE + k * W1_BUFFER_LEN, len: W1_BUFFER_LEN }]);
  }
  let rounds = 0;
  let kicks = 0;
  let sleeps = 0;

  const round = (): void => {
    const target = (driver.lastUsedIdx + batch) & 0xffff;
    if (data.eventIdx) driver.setUsedEvent(target - 1);
    for (let k = 0; k < batch; k++) driver.add(none, buffers[k]!);
    if (driver.kick()) {
      kicks++;
      Atomics.add(ctl, CTL_KICKS, 1);
      Atomics.notify(ctl, CTL_KICKS, 1);
    }
    let got = 0;
    for (;;) {
      while (driver.popUsed() >= 0) got++;
      if (got >= batch) break;
      // popUsed() moved used_event to "the next one"; ask again for the last of the round.
      if (data.eventIdx) driver.setUsedEvent(target - 1);
      const seen = Atomics.load(ctl, CTL_IRQS);
      if (driver.hasUsed()) continue;
      sleeps++;
      Atomics.wait(ctl, CTL_IRQS, seen);
    }
    if (got !== batch) throw new Error(`ping-pong: ${got} used elements for ${batch} chains`);
    rounds++;
  };

  port.once('message', () => {
    const measurement = bestOf((n) => {
      for (let r = 0; r < n; r++) round();
    }, data.timing);
    const result: DriverResult = { measurement, rounds, kicks, sleeps };
    port.postMessage(result);
  });
  port.postMessage('ready');
}

function runDevice(data: PingPongData, memory: GuestMemory, ctl: Int32Array): void {
  const q = new SplitQueue(W1_QUEUE_SIZE);
  q.descTableAddress = W1_DESC;
  q.availRingAddress = W1_AVAIL;
  q.usedRingAddress = W1_USED;
  q.ready = true;
  q.initialize(memory);
  if (data.eventIdx) q.enableNotifSuppression();
  const chain = new DescriptorChain();
  let chains = 0;
  let interrupts = 0;
  let sleeps = 0;
  let checksum = 0;
  if (!data.eventIdx) q.setNotification(false);
  parentPort!.postMessage('ready');
  for (;;) {
    const c = q.pop(chain);
    if (c !== null) {
      do {
        checksum += c.addr + c.len;
      } while (c.advance());
      q.addUsed(c.head, c.writableLength);
      q.advanceUsedRingIdx();
      if (q.prepareKick()) {
        interrupts++;
        Atomics.add(ctl, CTL_IRQS, 1);
        Atomics.notify(ctl, CTL_IRQS, 1);
      }
      chains++;
      continue;
    }
    if (Atomics.load(ctl, CTL_STOP) !== 0) break;
    const seen = Atomics.load(ctl, CTL_KICKS);
    // Re-enable notifications, then look again: a chain published before the driver could
    // see the change is found here, one published after it comes with a kick.
    if (!q.setNotification(true) || !q.isEmpty()) {
      if (!data.eventIdx) q.setNotification(false);
      continue;
    }
    sleeps++;
    Atomics.wait(ctl, CTL_KICKS, seen);
    if (!data.eventIdx) q.setNotification(false);
  }
  const result: DeviceResult = { chains, interrupts, sleeps, checksum };
  parentPort!.postMessage(result);
}

const data = workerData as PingPongData;
const memory = GuestMemory.fromShared(data.memory);
const ctl = new Int32Array(data.control);
if (data.role === 'driver') runDriver(data, memory, ctl);
else runDevice(data, memory, ctl);
