import { expect } from 'vitest';
import { RngDevice } from '../../src/devices/rng/index.js';
import { GuestAllocator, MmioGuestDriver } from '../../src/driver/index.js';
import type { GuestMemory } from '../../src/memory/index.js';
import { silentLogger } from '../../src/queue/index.js';
import { MMIO, MmioTransport } from '../../src/transport/mmio.js';
import {
  type Case,
  EVENT_IDX,
  type Harness,
  hostileRounds,
  hostileRun,
  INDIRECT,
  PACKED,
  pickFeatures,
  setupCase,
  VERSION_1,
} from './harness.js';
import { CLEAN, canaryMemory, REGION_B, type RingSpec } from './layout.js';
import type { WorkMeter } from './meter.js';

// ---------------------------------------------------------------------------------------------
// Through virtio-mmio

/** Drives the mmio registers as a hostile driver that still completes initialisation. */
export function mmioInit(t: MmioTransport, features: bigint, rings: RingSpec[]): void {
  t.write(MMIO.STATUS, 4, 0);
  t.write(MMIO.STATUS, 4, 1);
  t.write(MMIO.STATUS, 4, 3);
  t.write(MMIO.DRIVER_FEATURES_SEL, 4, 0);
  t.write(MMIO.DRIVER_FEATURES, 4, Number(features & 0xffffffffn));
  t.write(MMIO.DRIVER_FEATURES_SEL, 4, 1);
  t.write(MMIO.DRIVER_FEATURES, 4, Number(features >> 32n));
  t.write(MMIO.STATUS, 4, 11);
  if ((t.read(MMIO.STATUS, 4) & 8) === 0) {
    // The device refused the combination (a feature without one it depends on): ask only for
    // what the case is about.
    mmioInit(t, features & (VERSION_1 | PACKED | INDIRECT | EVENT_IDX), rings);
    return;
  }
  rings.forEach((r, i) => {
    t.write(MMIO.QUEUE_SEL, 4, i);
    t.write(MMIO.QUEUE_NUM, 4, r.size);
    t.write(MMIO.QUEUE_DESC_LOW, 4, r.desc);
    t.write(MMIO.QUEUE_DESC_HIGH, 4, 0);
    t.write(MMIO.QUEUE_DRIVER_LOW, 4, r.driver);
    t.write(MMIO.QUEUE_DRIVER_HIGH, 4, 0);
    t.write(MMIO.QUEUE_DEVICE_LOW, 4, r.device);
    t.write(MMIO.QUEUE_DEVICE_HIGH, 4, 0);
    t.write(MMIO.QUEUE_READY, 4, 1);
  });
  t.write(MMIO.STATUS, 4, 15);
}

/** A well-behaved rng device on its own transport, its ring in region B. */
export function otherRngOverMmio(memory: GuestMemory) {
  const device = new RngDevice();
  const t = new MmioTransport(device, memory, { logger: silentLogger });
  const g = new MmioGuestDriver(
    t,
    memory,
    new GuestAllocator(memory, REGION_B.base, REGION_B.base + 0x8000),
  );
  g.negotiate(VERSION_1);
  const q = g.setupQueue(0, 16);
  g.start();
  return {
    submit() {
      q.add([], [{ addr: REGION_B.base + 0x9000, len: 32 }]);
      g.kick(0);
    },
    served: () => q.hasUsed(),
  };
}

export async function mmioCase(c: Case, breakBudget = false): Promise<WorkMeter> {
  const { backing, memory } = canaryMemory();
  // The self-test uses a budget of one chain a turn, which every round of several chains exceeds.
  const { rand, meter, made, rings } = setupCase(
    c,
    breakBudget ? { maxChainsPerTurn: 1 } : undefined,
  );
  const t = new MmioTransport(made.device, memory, { logger: silentLogger });
  const features = pickFeatures(c, made.device.offeredFeatures, rand);
  mmioInit(t, features, rings);
  const other = c.flood ? otherRngOverMmio(memory) : null;
  const h: Harness = {
    memory,
    backing,
    notify: async (q) => {
      try {
        t.write(MMIO.QUEUE_NOTIFY, 4, q);
      } catch (e) {
        meter.escaped.push(e);
      }
    },
    reset: async () => {
      t.write(MMIO.STATUS, 4, 0);
      expect(t.read(MMIO.STATUS, 4)).toBe(0);
    },
    recover: async () => {
      mmioInit(t, features, rings);
    },
    cleanQueues: async (format) => {
      const g = new MmioGuestDriver(
        t,
        memory,
        new GuestAllocator(memory, CLEAN.from + 0x4000, CLEAN.to),
      );
      g.negotiate(VERSION_1 | (format === 'packed' ? PACKED : 0n));
      const queues = made.device.queueMaxSizes.map((_, i) => g.setupQueue(i, 16));
      g.start();
      return { queues, kick: (q) => g.notify(q) };
    },
    internalErrors: () => [],
    stopQueue: async (q) => {
      t.write(MMIO.QUEUE_SEL, 4, q);
      t.write(MMIO.QUEUE_READY, 4, 0);
      expect(t.read(MMIO.QUEUE_READY, 4)).toBe(0);
    },
  };
  if (breakBudget) {
    // Only the meter may notice: the rounds run to their end.
    await hostileRounds({ c, rand, made, meter, rings, h }, 12);
    await h.reset();
    return meter;
  }
  await hostileRun({ c, rand, made, meter, rings, h }, other);
  return meter;
}
