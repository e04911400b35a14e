/**
 * Two-thread ping-pong: the driver in one worker thread, the device in another, guest memory
 * in a SharedArrayBuffer, kicks and interrupts through Atomics.wait/notify honouring the
 * notification rules (EVENT_IDX off: VIRTQ_USED_F_NO_NOTIFY; on: avail_event / used_event).
 * See bench/lib/pingpong-worker.ts for both loops.
 *
 * Output: `virtq pingpong B=<B> evidx=<0|1> chains_per_s=<n> ns_per_chain=<float>
 * kicks_per_round=<f> irqs_per_round=<f> driver_sleeps_per_round=<f>
 * device_sleeps_per_round=<f>`, the rates from the best of 5 runs of at least 0.5 s, the
 * per-round counts over every round of the case (warm-up included).
 */

import { GuestMemory } from '../../src/memory/index.js';
import { type BenchCase, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import {
  CTL_KICKS,
  CTL_STOP,
  CTL_WORDS,
  type DeviceResult,
  type DriverResult,
  type PingPongData,
} from '../lib/pingpong-protocol.js';
import { firstMessage, startTsWorker } from '../lib/ts-worker.js';
import { W1_MEMORY_BYTES } from '../lib/w1.js';

const WORKER = new URL('../lib/pingpong-worker.ts', import.meta.url);

async function pingPong(batch: number, eventIdx: boolean): Promise<[DriverResult, DeviceResult]> {
  const memory = GuestMemory.create(W1_MEMORY_BYTES, { shared: true });
  const control = new SharedArrayBuffer(CTL_WORDS * 4);
  const ctl = new Int32Array(control);
  const base = { memory: memory.toShared(), control, eventIdx, batch, timing: { chunk: 64 } };
  const driverData: PingPongData = { ...base, role: 'driver' };
  const deviceData: PingPongData = { ...base, role: 'device' };
  const driver = startTsWorker(WORKER, driverData);
  let device: ReturnType<typeof startTsWorker> | undefined;
  try {
    // The driver lays out (zeroes) the rings first; then the device may look at them.
    await firstMessage<string>(driver);
    device = startTsWorker(WORKER, deviceData);
    await firstMessage<string>(device);
    const driverDone = firstMessage<DriverResult>(driver);
    driver.postMessage('start');
    const driverResult = await driverDone;
    const deviceDone = firstMessage<DeviceResult>(device);
    Atomics.store(ctl, CTL_STOP, 1);
    Atomics.add(ctl, CTL_KICKS, 1);
    Atomics.notify(ctl, CTL_KICKS);
    return [driverResult, await deviceDone];
  } finally {
    await driver.terminate();
    await device?.terminate();
  }
}

function pingPongCase(batch: number, eventIdx: boolean): BenchCase {
  const evidx = eventIdx ? 1 : 0;
  return {
    name: `pingpong/B=${batch}/evidx=${evidx}`,
    async run(ctx) {
      const [drv, dev] = await pingPong(batch, eventIdx);
      if (dev.chains !== drv.rounds * batch) {
        throw new Error(`device completed ${dev.chains} chains, driver sent ${drv.rounds * batch}`);
      }
      const ns = nsPerUnit(drv.measurement, batch);
      const per = (n: number) => fmt(n / drv.rounds);
      ctx.log(`pingpong B=${batch} evidx=${evidx}: ${describeRuns(drv.measurement, batch)}`);
      return (
        `virtq pingpong B=${batch} evidx=${evidx} chains_per_s=${Math.round(1e9 / ns)}` +
        ` ns_per_chain=${fmt(ns)} kicks_per_round=${per(drv.kicks)} irqs_per_round=${per(dev.interrupts)}` +
        ` driver_sleeps_per_round=${per(drv.sleeps)} device_sleeps_per_round=${per(dev.sleeps)}`
      );
    },
  };
}

export const cases: BenchCase[] = [1, 16].flatMap((b) => [
  pingPongCase(b, false),
  pingPongCase(b, true),
]);
