/**
 * Devices through the virtio-mmio transport, with the device on the driver's thread
 * (`placement=thread`: it runs inside the notification register write) and in a worker
 * thread (`placement=worker`: a WorkerDeviceProxy behind the transport forwards the
 * notification through shared memory, the driver blocks in Atomics.wait until the device's
 * interrupt comes back; `placement=worker-spin`: the same, with both sides spinning up to
 * 50 µs before they sleep, `HostTuning.spinUs` and the waiter's `spinUs`). EVENT_IDX is
 * negotiated everywhere.
 *
 * - rng: each round makes 32 requests of 4 KiB available, notifies, and collects them; the
 *   figure is bytes of entropy per second (Web Crypto fills them).
 * - blk: 4 KiB random reads or writes at queue depth 16 on a 64 MiB in-memory disk (the
 *   rig of bench/cases/block.ts; in the worker the disk is a SharedArrayBuffer).
 * - net: guest A sends 32 frames of 1514 bytes to guest B over the in-process cable (the rig
 *   of bench/cases/net.ts on one thread; in the worker both devices share one worker, the
 *   two guest drivers stay on this thread).
 *
 * Output: `virtq dev <rng|blk|net> placement=<thread|worker> ring=<split|packed> ...` with
 * the rate and ns per request, from the best of 5 runs of at least 0.5 s after a warm-up
 * (bench/lib/harness.ts).
 */

import { featureBit } from '../../src/devices/device.js';
import { VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF } from '../../src/devices/net/index.js';
import { RngDevice } from '../../src/devices/rng/index.js';
import type { WorkerDeviceProxy, WorkerInterruptWaiter } from '../../src/devices/runner/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { NetGuestDriver } from '../../src/driver/devices/net.js';
import { type MmioBus, MmioGuestDriver } from '../../src/driver/mmio.js';
import type { DriverQueue } from '../../src/driver/queue.js';
import { GuestMemory } from '../../src/memory/index.js';
import { NodeDeviceWorker } from '../../src/node/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import { BLOCK_BENCH_MEMORY_BYTES, BlockBenchDriver, createBlockBenchRig } from './block.js';
import { buildNetRig } from './net.js';

type Ring = 'split' | 'packed';
/** On the driver's thread, or in a worker that sleeps at once / spins 50 µs before sleeping. */
type Placement = 'thread' | 'worker' | 'worker-spin';

/** Microseconds both sides spin before they sleep, per placement. */
const SPIN_US = 50;

function spinOf(p: Placement): number {
  return p === 'worker-spin' ? SPIN_US : 0;
}

function ringFeatures(ring: Ring): bigint {
  return (
    featureBit(VIRTIO_F_VERSION_1) |
    featureBit(VIRTIO_F_EVENT_IDX) |
    (ring === 'packed' ? featureBit(VIRTIO_F_RING_PACKED) : 0n)
  );
}

/** A device in a worker of its own, over shared guest memory. */
async function inWorker(
  spec: Parameters<typeof NodeDeviceWorker.spawn>[0],
  memory: GuestMemory,
  spinUs: number,
) {
  const worker = await NodeDeviceWorker.spawn(spec, memory, {
    host: { logging: 'silent', spinUs },
  });
  const attach = (
    i: number,
  ): { proxy: WorkerDeviceProxy; bus: MmioTransport; waiter: WorkerInterruptWaiter } => {
    const proxy = worker.devices[i]!;
    return {
      proxy,
      bus: new MmioTransport(proxy, memory, { logger: silentLogger }),
      waiter: proxy.waiter(1000, spinUs),
    };
  };
  return { worker, attach };
}

// ---- rng ----

const RNG_QD = 32;
const RNG_BYTES = 4096;

/** The driver half of the rng rig: rounds of RNG_QD 4 KiB entropy requests. */
class RngBenchDriver {
  readonly guest: MmioGuestDriver;
  private queue: DriverQueue | null = null;
  private readonly buffers: { addr: number; len: number }[][] = [];
  bytes = 0;

  constructor(bus: MmioBus, memory: GuestMemory) {
    this.guest = new MmioGuestDriver(bus, memory, new GuestAllocator(memory, 0x1000, memory.size));
  }

  setup(ring: Ring): void {
    const g = this.guest;
    g.negotiate(ringFeatures(ring));
    this.queue = g.setupQueue(0, 64);
    for (let i = 0; i < RNG_QD; i++)
      this.buffers.push([{ addr: g.alloc.alloc(RNG_BYTES, 4096), len: RNG_BYTES }]);
    g.start();
  }

  post(): void {
    const q = this.queue!;
    for (let i = 0; i < RNG_QD; i++) q.add([], this.buffers[i]!);
    this.guest.kick(0);
  }

  reap(): number {
    const q = this.queue!;
    let n = 0;
    for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
      if (q.lastUsedLen !== RNG_BYTES) throw new Error('short entropy request');
      this.bytes += RNG_BYTES;
      n++;
    }
    return n;
  }
}

/** Posts a round, then collects it, blocking for interrupts when a waiter is given. */
function round(
  post: () => void,
  reap: () => number,
  expect: number,
  waiter: WorkerInterruptWaiter | null,
): void {
  post();
  let got = reap();
  while (got < expect) {
    if (waiter === null) throw new Error(`a round completed ${got} of ${expect} requests`);
    waiter.waitBlocking();
    got += reap();
  }
}

function rngCase(placement: Placement, ring: Ring): BenchCase {
  return {
    name: `dev/rng/${placement}/${ring}`,
    async run(ctx) {
      const memory = GuestMemory.create(4 << 20, { shared: placement !== 'thread' });
      let close = async (): Promise<void> => {};
      let bus: MmioBus;
      let waiter: WorkerInterruptWaiter | null = null;
      if (placement === 'thread') {
        bus = new MmioTransport(new RngDevice({ queueSize: 64 }), memory, { logger: silentLogger });
      } else {
        const w = await inWorker({ kind: 'rng', queueSize: 64 }, memory, spinOf(placement));
        const side = w.attach(0);
        bus = side.bus;
        waiter = side.waiter;
        close = () => w.worker.close();
      }
      try {
        const d = new RngBenchDriver(bus, memory);
        d.setup(ring);
        const w = waiter;
        const m = bestOf(
          (rounds) => {
            for (let r = 0; r < rounds; r++)
              round(
                () => d.post(),
                () => d.reap(),
                RNG_QD,
                w,
              );
          },
          { chunk: 16 },
        );
        const ns = nsPerUnit(m, RNG_QD);
        ctx.log(`rng ${placement} ${ring}: ${describeRuns(m, RNG_QD)}`);
        return (
          `virtq dev rng placement=${placement} ring=${ring} req_bytes=${RNG_BYTES} qd=${RNG_QD}` +
          ` mib_per_s=${fmt((RNG_BYTES * 1e9) / ns / (1 << 20))} ns_per_req=${fmt(ns)}`
        );
      } finally {
        await close();
      }
    },
  };
}

// ---- block ----

const BLK_QD = 16;

function blkCase(op: 'read' | 'write', placement: Placement, ring: Ring): BenchCase {
  return {
    name: `dev/blk/${op}/${placement}/${ring}`,
    async run(ctx) {
      const o = { op, ring, qd: BLK_QD };
      let step: (rounds: number) => void;
      let completed: () => number;
      let close = async (): Promise<void> => {};
      if (placement === 'thread') {
        const rig = createBlockBenchRig(o);
        step = (rounds) => rig.step(rounds);
        completed = () => rig.driver.completed;
      } else {
        const memory = GuestMemory.create(BLOCK_BENCH_MEMORY_BYTES, { shared: true });
        const w = await inWorker(
          { kind: 'block', image: new SharedArrayBuffer(64 << 20), queueSize: 256 },
          memory,
          spinOf(placement),
        );
        close = () => w.worker.close();
        const side = w.attach(0);
        const driver = new BlockBenchDriver(side.bus, memory, o);
        driver.setup();
        step = (rounds) => {
          for (let r = 0; r < rounds; r++)
            round(
              () => driver.post(),
              () => driver.reap(),
              BLK_QD,
              side.waiter,
            );
        };
        completed = () => driver.completed;
      }
      try {
        const m = bestOf(step, { chunk: 16 });
        if (completed() === 0) throw new Error('no request completed');
        const ns = nsPerUnit(m, BLK_QD);
        ctx.log(`blk ${op} ${placement} ${ring}: ${describeRuns(m, BLK_QD)}`);
        return (
          `virtq dev blk op=${op} placement=${placement} ring=${ring} qd=${BLK_QD}` +
          ` iops=${Math.round(1e9 / ns)} ns_per_io=${fmt(ns)}`
        );
      } finally {
        await close();
      }
    },
  };
}

// ---- net ----

const NET_BATCH = 32;
const NET_FRAME = 1514;

/** Two guests on this thread, their two net devices (one cable) in one worker. */
async function netWorkerRig(ring: Ring, spinUs: number) {
  const memory = GuestMemory.create(16 << 20, { shared: true });
  const w = await inWorker(
    { kind: 'net-pair', macs: ['52:54:00:00:00:0a', '52:54:00:00:00:0b'] },
    memory,
    spinUs,
  );
  const features =
    ringFeatures(ring) | featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
  const guest = (i: number) => {
    const side = w.attach(i);
    const drv = new NetGuestDriver(
      side.bus,
      memory,
      new GuestAllocator(memory, 0x1000 + i * (8 << 20), (i + 1) * (8 << 20)),
      {
        rxBufferSize: 2048,
        txSlots: NET_BATCH,
      },
    );
    drv.init(features);
    return { drv, waiter: side.waiter };
  };
  const a = guest(0);
  const b = guest(1);
  const frame = new Uint8Array(NET_FRAME);
  frame.set([0x52, 0x54, 0, 0, 0, 0x0b, 0x52, 0x54, 0, 0, 0, 0x0a, 0x88, 0xb5]);
  const view = new DataView(frame.buffer);
  let sent = 0;
  let received = 0;
  return {
    close: () => w.worker.close(),
    get received() {
      return received;
    },
    step(rounds: number): void {
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < NET_BATCH; i++) {
          view.setUint32(14, sent);
          // The transmit slots come back once the device (in the worker) has sent them.
          while (!a.drv.trySend(frame)) a.waiter.waitBlocking();
          sent++;
        }
        while (received < sent) {
          let got = 0;
          for (let f = b.drv.tryReceive(); f !== null; f = b.drv.tryReceive()) {
            if (
              f.data.length !== NET_FRAME ||
              new DataView(f.data.buffer, f.data.byteOffset).getUint32(14) !== received
            ) {
              throw new Error(`frame ${received} arrived damaged or out of order`);
            }
            received++;
            got++;
          }
          if (got === 0) b.waiter.waitBlocking();
        }
        a.drv.reapTx();
      }
    },
  };
}

function netCase(placement: Placement, ring: Ring): BenchCase {
  return {
    name: `dev/net/${placement}/${ring}`,
    async run(ctx) {
      let rig: {
        step(rounds: number): void;
        readonly received: number;
        close?: () => Promise<void>;
      };
      if (placement === 'thread') {
        rig = buildNetRig({
          frameBytes: NET_FRAME,
          batch: NET_BATCH,
          packed: ring === 'packed',
          eventIdx: true,
        });
      } else {
        rig = await netWorkerRig(ring, spinOf(placement));
      }
      try {
        let rounds = 0;
        const m = bestOf(
          (n) => {
            rig.step(n);
            rounds += n;
          },
          { chunk: 16 },
        );
        if (rig.received !== rounds * NET_BATCH)
          throw new Error(`received ${rig.received} of ${rounds * NET_BATCH} frames`);
        const ns = nsPerUnit(m, NET_BATCH);
        ctx.log(`net ${placement} ${ring}: ${describeRuns(m, NET_BATCH)}`);
        return (
          `virtq dev net placement=${placement} ring=${ring} frame=${NET_FRAME} batch=${NET_BATCH}` +
          ` frames_per_s=${Math.round(1e9 / ns)} ns_per_frame=${fmt(ns)} gbit_per_s=${fmt((NET_FRAME * 8) / ns)}`
        );
      } finally {
        await rig.close?.();
      }
    },
  };
}

const placements: Placement[] = ['thread', 'worker', 'worker-spin'];
const rings: Ring[] = ['split', 'packed'];

export const cases: BenchCase[] = [
  ...placements.flatMap((p) => rings.map((r) => rngCase(p, r))),
  ...(['read', 'write'] as const).flatMap((op) =>
    placements.flatMap((p) => rings.map((r) => blkCase(op, p, r))),
  ),
  ...placements.flatMap((p) => rings.map((r) => netCase(p, r))),
];
