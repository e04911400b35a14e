/**
 * The simulated guest of `virtq demo`, run in a worker thread: the "vCPU" thread of a small
 * virtual machine. It owns guest memory (a SharedArrayBuffer), one virtio-mmio transport per
 * device, and a guest driver per device that talks to its transport's registers. The devices
 * run either on this thread (each notification is processed inside the register write) or
 * together in one device worker behind proxies (notifications cross threads through shared
 * memory and interrupts come back the same way).
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import type { VirtioDevice } from '../devices/device.js';
import { featureBit } from '../devices/device.js';
import type { WorkerDeviceProxy } from '../devices/runner/proxy.js';
import { GuestAllocator } from '../driver/allocator.js';
import type { InterruptWaiter } from '../driver/devices/waiter.js';
import { MmioGuestDriver } from '../driver/mmio.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { buildDevices, type DeviceWorkerSpec } from '../node/device-factories.js';
import { NodeDeviceWorker } from '../node/device-worker.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../queue/constants.js';
import { silentLogger } from '../queue/logger.js';
import { MmioTransport } from '../transport/mmio.js';
import { BlockWorkload, type DiskTruth, makeDiskImage } from './demo-block-workload.js';
import { NetWorkload } from './demo-net-workload.js';
import type { DemoConfig, GuestMessage, PhaseReport, PhaseSpec } from './demo-protocol.js';
import {
  ConsoleWorkload,
  type GuestDevice,
  pause,
  RngWorkload,
  type Workload,
} from './demo-workloads.js';

/** Guest RAM: a 4 MiB slot per device for its rings and buffers. */
const SLOT_BYTES = 4 << 20;
const SLOTS = 5;
const MEMORY_BYTES = SLOTS * SLOT_BYTES;
const PROGRESS_MS = 200;

function post(m: GuestMessage): void {
  parentPort!.postMessage(m);
}

/** What a phase runs on: the devices (local or proxies) and how to stop them. */
interface PhaseDevices {
  devices: VirtioDevice[];
  waiterFor(index: number): InterruptWaiter;
  close(): Promise<void>;
}

/** A waiter for devices on this thread: they already did their work; let other drivers run. */
const sameThreadWaiter: InterruptWaiter = { wait: pause };

class Disk {
  readonly spec: DeviceWorkerSpec;
  readonly truth: DiskTruth;
  private fd: number | null = null;

  constructor(file: string | null) {
    if (file === null) {
      const image = makeDiskImage();
      this.spec = { kind: 'block', image, quiet: true, id: 'virtq-demo' };
      this.truth = { kind: 'shadow', bytes: new Uint8Array(image).slice() };
    } else {
      this.fd = openSync(file, 'r');
      this.spec = { kind: 'block', file, readOnly: true, quiet: true, id: 'virtq-demo' };
      this.truth = { kind: 'file', fd: this.fd, size: fstatSync(this.fd).size };
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

function specsFor(config: DemoConfig, disk: Disk | null): DeviceWorkerSpec[] {
  const specs: DeviceWorkerSpec[] = [];
  for (const d of config.devices) {
    if (d === 'rng') specs.push({ kind: 'rng' });
    else if (d === 'block') specs.push(disk!.spec);
    else if (d === 'console') specs.push({ kind: 'console', echo: true });
    else specs.push({ kind: 'net-pair' });
  }
  return specs;
}

async function startDevices(
  specs: DeviceWorkerSpec[],
  phase: PhaseSpec,
  memory: GuestMemory,
): Promise<PhaseDevices> {
  if (phase.placement === 'same-thread') {
    const devices = await buildDevices({ kind: 'group', devices: specs });
    return { devices, waiterFor: () => sameThreadWaiter, close: async () => {} };
  }
  const worker = await NodeDeviceWorker.spawn({ kind: 'group', devices: specs }, memory, {
    name: 'virtq demo devices',
    host: { logging: 'silent' },
  });
  const proxies = worker.devices as readonly WorkerDeviceProxy[];
  return {
    devices: [...proxies],
    waiterFor: (i) => proxies[i]!.waiter(50),
    close: () => worker.close(),
  };
}

function wantedFeatures(config: DemoConfig, ring: PhaseSpec['ring']): bigint {
  let f = featureBit(VIRTIO_F_VERSION_1);
  if (ring === 'packed') f |= featureBit(VIRTIO_F_RING_PACKED);
  if (config.features.includes('event-idx')) f |= featureBit(VIRTIO_F_EVENT_IDX);
  if (config.features.includes('indirect')) f |= featureBit(VIRTIO_F_INDIRECT_DESC);
  if (config.features.includes('in-order')) f |= featureBit(VIRTIO_F_IN_ORDER);
  return f;
}

async function runPhase(
  config: DemoConfig,
  disk: Disk | null,
  phase: PhaseSpec,
  index: number,
  seconds: number,
): Promise<PhaseReport> {
  const memory = GuestMemory.create(MEMORY_BYTES, { shared: true });
  const specs = specsFor(config, disk);
  const phaseDevices = await startDevices(specs, phase, memory);
  const workloads: Workload[] = [];
  try {
    let slot = 0;
    let deviceIndex = 0;
    // Each device gets a transport, and a guest driver with a slot of guest RAM for its rings
    // and buffers.
    const guestDevice = (): GuestDevice => {
      const i = deviceIndex++;
      const start = slot++ * SLOT_BYTES;
      const device = phaseDevices.devices[i]!;
      const bus = new MmioTransport(device, memory, { logger: silentLogger });
      const alloc = new GuestAllocator(memory, start, start + SLOT_BYTES);
      return {
        bus,
        mmio: new MmioGuestDriver(bus, memory, alloc),
        alloc,
        waiter: phaseDevices.waiterFor(i),
      };
    };
    for (const d of config.devices) {
      if (d === 'rng') {
        workloads.push(new RngWorkload(guestDevice()));
      } else if (d === 'block') {
        workloads.push(new BlockWorkload(guestDevice(), disk!.truth, 0x5eed + index));
      } else if (d === 'console') {
        workloads.push(new ConsoleWorkload(guestDevice(), 0xc0de + index));
      } else {
        workloads.push(new NetWorkload([guestDevice(), guestDevice()], 0xface + index));
      }
    }
    const wanted = wantedFeatures(config, phase.ring);
    for (const w of workloads) {
      try {
        w.init(wanted);
      } catch (e) {
        w.report.failure = `initialisation failed: ${message(e)}`;
      }
    }
    const started = performance.now();
    const deadline = started + seconds * 1000;
    let lastProgress = started;
    const tick = (): void => {
      const now = performance.now();
      if (now - lastProgress < PROGRESS_MS) return;
      lastProgress = now;
      post({
        type: 'progress',
        index,
        elapsed: (now - started) / 1000,
        devices: workloads.map((w) => ({ ...w.report })),
      });
    };
    await Promise.all(
      workloads.map(async (w) => {
        if (w.report.failure !== null) return;
        try {
          await w.run(deadline, tick);
        } catch (e) {
          w.report.failure = message(e);
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    for (const w of workloads) {
      try {
        w.finish();
      } catch (e) {
        w.report.failure ??= `reset failed: ${message(e)}`;
      }
    }
    return { ...phase, seconds: elapsed, devices: workloads.map((w) => w.report) };
  } finally {
    await phaseDevices.close();
  }
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

async function main(): Promise<void> {
  const config = workerData as DemoConfig;
  const phases: PhaseSpec[] = [];
  for (const placement of config.placements)
    for (const ring of config.rings) phases.push({ ring, placement });
  const seconds = config.duration / phases.length;
  const disk = config.devices.includes('block') ? new Disk(config.diskImage) : null;
  try {
    for (let i = 0; i < phases.length; i++) {
      const phase = phases[i]!;
      post({ type: 'phase', index: i, of: phases.length, phase, seconds });
      const report = await runPhase(config, disk, phase, i, seconds);
      post({ type: 'phase-done', report });
    }
  } finally {
    disk?.close();
  }
  post({ type: 'done' });
}

main().catch((e: unknown) => {
  post({ type: 'fatal', message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
});
