/**
 * The device-level hostile fuzzer: every device (rng, block, console, net), split and packed
 * rings, with and without indirect descriptors, through the virtio-mmio transport and through
 * the vhost-user back-end (in this process, over a socket pair, guest RAM in a memfd). A
 * hostile guest (device-rig.ts) writes adversarial rings: buffers over the rings, tables and
 * request headers (so the device's own writes feed it), aliased giant buffers, giant indirect
 * tables, wild indices, and keeps making buffers available while the device runs.
 *
 * Properties, per case:
 * - each turn of the device (a notification, or a continuation it scheduled itself) takes at
 *   most its chain budget and moves at most its byte budget plus one request's cap, counted
 *   outside the device (chains handed out by its queues, bytes through its backend, bytes
 *   written to receive buffers);
 * - nothing but a guest error (which the device turns into DEVICE_NEEDS_RESET) comes out of
 *   it, and the back-end logs no internal error;
 * - the canaries around and between the guest memory regions are untouched;
 * - while the guest floods the device, a timer fires and another, well-behaved device gets its
 *   request served;
 * - after a reset, a clean driver's request is served and checked.
 *
 * A last test breaks the devices' budget check on purpose and expects the fuzzer to see it.
 *
 * VIRTQ_DEVICE_FUZZ_RUNS=n runs n cases per combination (default 12 through mmio, 8 through
 * vhost-user); VIRTQ_DEVICE_FUZZ_SEED=s changes the seed. A failure prints fast-check's seed
 * and path to replay it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { VirtioDeviceBase } from '../../src/devices/device.js';
import { RngDevice } from '../../src/devices/rng/index.js';
import { PackedDriver, SplitDriver } from '../../src/driver/index.js';
import type { DriverQueue } from '../../src/driver/queue.js';
import type { GuestMemory } from '../../src/memory/index.js';
import { splitLayout } from '../../src/queue/index.js';
import { VhostUserBackend } from '../../src/vhost-user/index.js';
import {
  Frontend,
  nativeFixture,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  R,
  u32s,
  u64,
} from '../vhost-user/frontend.js';
import {
  type Case,
  EVENT_IDX,
  envInt,
  type Harness,
  hostileRun,
  INDIRECT,
  PACKED,
  pickFeatures,
  report,
  resetStats,
  setupCase,
  VERSION_1,
  waitFor,
} from './harness.js';
import {
  BACKING_BYTES,
  CLEAN,
  DEVICE_KINDS,
  type DeviceKind,
  guestMemoryOver,
  plantCanaries,
  REGION_B,
  type RingFormat,
} from './layout.js';
import type { MadeDevice } from './meter.js';
import { mmioCase } from './mmio-harness.js';
import { canaryMemTable, nativeOk, vringAddress } from './vhost-harness.js';

const MMIO_RUNS = envInt('VIRTQ_DEVICE_FUZZ_RUNS', 12);
const VHOST_RUNS = envInt('VIRTQ_DEVICE_FUZZ_RUNS', 8);
const SEED = envInt('VIRTQ_DEVICE_FUZZ_SEED', 0x5eed);

const caseArb = (kind: DeviceKind, format: RingFormat, indirect: boolean) =>
  fc.record({
    kind: fc.constant(kind),
    format: fc.constant(format),
    indirect: fc.constant(indirect),
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
    flood: fc.boolean(),
  });

const COMBOS: [DeviceKind, RingFormat, boolean][] = DEVICE_KINDS.flatMap((kind) =>
  (['split', 'packed'] as const).flatMap((format) =>
    [false, true].map((indirect) => [kind, format, indirect] as [DeviceKind, RingFormat, boolean]),
  ),
);

function comboName(kind: DeviceKind, format: RingFormat, indirect: boolean): string {
  return `${kind}, ${format} ring, indirect ${indirect ? 'on' : 'off'}`;
}

describe('device-level hostile fuzzer through virtio-mmio', () => {
  for (const [kind, format, indirect] of COMBOS) {
    it(comboName(kind, format, indirect), async () => {
      resetStats();
      await fc.assert(
        fc.asyncProperty(caseArb(kind, format, indirect), async (c) => {
          await mmioCase(c);
        }),
        { numRuns: MMIO_RUNS, seed: SEED + kind.length * 7 + format.length + (indirect ? 1 : 0) },
      );
      report(`mmio, ${comboName(kind, format, indirect)}`);
    });
  }

  it('catches a device that ignores its budget (the budget check broken on purpose)', async () => {
    const proto = VirtioDeviceBase.prototype as unknown as { withinBudget: (i: number) => boolean };
    const real = proto.withinBudget;
    proto.withinBudget = () => true;
    try {
      let caught = 0;
      for (let seed = 1; seed <= 8; seed++) {
        const meter = await mmioCase(
          { kind: 'rng', format: 'split', indirect: true, seed, flood: false },
          true,
        );
        if (meter.violations.length > 0) caught++;
      }
      expect(caught, 'cases in which the meter saw a turn over its budget').toBeGreaterThan(0);
    } finally {
      proto.withinBudget = real;
    }
  });
});

describe.runIf(nativeOk)('device-level hostile fuzzer through the vhost-user back-end', () => {
  const { n, cleanups, eventfd } = nativeFixture(nativeOk);

  /** Guest RAM in a memfd: the back-end maps regions A and B, the test the whole file. */
  function ram() {
    const memfd = n.memfdCreate('fuzz-ram', 0);
    cleanups.push(() => n.close(memfd));
    n.ftruncate(memfd, BACKING_BYTES);
    const buffer = n.mmap(memfd, BACKING_BYTES, 0, n.constants.PROT_READ | n.constants.PROT_WRITE);
    const backing = new Uint8Array(buffer);
    plantCanaries(backing);
    return { memfd, backing, memory: guestMemoryOver(buffer) };
  }

  /** A back-end serving `device`, with what it logged as internal errors. */
  function serve(device: MadeDevice['device']) {
    const internal: string[] = [];
    const backend = new VhostUserBackend(device, {
      native: n,
      logger: {
        warn(message: string, data?: Record<string, unknown>) {
          if (message.includes('internal error') || message.includes('failed')) {
            internal.push(`${message} ${JSON.stringify(data)}`);
          }
        },
      },
    });
    cleanups.push(() => backend.close());
    return { backend, internal };
  }

  /** Connects a front-end and sets up every ring of `rings`; returns it with the kick fds. */
  async function session(
    backend: VhostUserBackend,
    memfd: number,
    features: bigint,
    rings: readonly {
      format: RingFormat;
      size: number;
      desc: number;
      driver: number;
      device: number;
    }[],
  ) {
    await waitFor(() => !backend.connected, 3000);
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    // The front-end owns `a` and closes it once (a second close could hit a reused number).
    cleanups.push(() => fe.close());
    await fe.u64(R.GET_FEATURES);
    await fe.u64(R.GET_PROTOCOL_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES));
    expect(await fe.acked(R.SET_OWNER)).toBe(0n);
    if ((await fe.acked(R.SET_FEATURES, u64(features | PROTOCOL_BIT))) !== 0n) {
      // Refused combination: only what the case is about.
      const basic = features & (VERSION_1 | PACKED | INDIRECT | EVENT_IDX);
      expect(await fe.acked(R.SET_FEATURES, u64(basic | PROTOCOL_BIT))).toBe(0n);
    }
    expect(await fe.acked(R.SET_MEM_TABLE, canaryMemTable(), [memfd, memfd])).toBe(0n);
    const kicks: number[] = [];
    for (let i = 0; i < rings.length; i++) {
      const r = rings[i]!;
      const kick = eventfd();
      kicks.push(kick);
      expect(await fe.acked(R.SET_VRING_NUM, u32s(i, r.size))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_BASE, u32s(i, r.format === 'packed' ? 0x8000 : 0))).toBe(
        0n,
      );
      expect(await fe.acked(R.SET_VRING_ADDR, vringAddress(i, r))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_CALL, u64(i), [eventfd()])).toBe(0n);
      expect(await fe.acked(R.SET_VRING_KICK, u64(i), [kick])).toBe(0n);
      expect(await fe.acked(R.SET_VRING_ENABLE, u32s(i, 1))).toBe(0n);
    }
    return { fe, a, kicks };
  }

  /** A well-behaved rng device on its own back-end, its ring in region B. */
  async function otherRng(memfd: number, memory: GuestMemory) {
    const device = new RngDevice();
    const { backend } = serve(device);
    const layout = splitLayout(REGION_B.base, 16);
    const ring = {
      format: 'split' as const,
      size: 16,
      desc: layout.desc,
      driver: layout.avail,
      device: layout.used,
    };
    const q = new SplitDriver(memory, { size: 16, layout });
    const { kicks } = await session(backend, memfd, VERSION_1, [ring]);
    return {
      submit() {
        q.add([], [{ addr: REGION_B.base + 0x9000, len: 32 }]);
        q.kick();
        n.eventfdWrite(kicks[0]!, 1);
      },
      served: () => q.hasUsed(),
    };
  }

  async function vhostCase(c: Case): Promise<void> {
    const { memfd, backing, memory } = ram();
    const { rand, meter, made, rings } = setupCase(c);
    const { backend, internal } = serve(made.device);
    const features = pickFeatures(c, made.device.offeredFeatures, rand);
    let s = await session(backend, memfd, features, rings);
    const other = c.flood ? await otherRng(memfd, memory) : null;
    const h: Harness = {
      memory,
      backing,
      notify: async (q) => {
        const turns = meter.turns;
        n.eventfdWrite(s.kicks[q]!, 1);
        // The kick is delivered by the event loop (unless the ring stopped: then no turn).
        await waitFor(() => meter.turns > turns, 200);
      },
      reset: async () => {
        // The front-end goes away: the back-end stops every ring and resets the device.
        s.fe.close();
        await waitFor(() => !backend.connected, 3000);
        expect(backend.connected).toBe(false);
        expect(made.device.isActive).toBe(false);
      },
      recover: async () => {
        s.fe.close();
        s = await session(backend, memfd, features, rings);
      },
      cleanQueues: async (format) => {
        const clean = made.device.queueMaxSizes.map((_, i) => {
          const base = CLEAN.from + 0x4000 + i * 0x2000;
          if (format === 'packed')
            return { format, size: 16, desc: base, driver: base + 0x400, device: base + 0x800 };
          const l = splitLayout(base, 16);
          return { format, size: 16, desc: l.desc, driver: l.avail, device: l.used };
        });
        const queues: DriverQueue[] = clean.map((r) =>
          format === 'packed'
            ? new PackedDriver(memory, {
                size: 16,
                desc: r.desc,
                driverArea: r.driver,
                deviceArea: r.device,
              })
            : new SplitDriver(memory, { size: 16, layout: splitLayout(r.desc, 16) }),
        );
        s = await session(backend, memfd, VERSION_1 | (format === 'packed' ? PACKED : 0n), clean);
        return { queues, kick: (q) => n.eventfdWrite(s.kicks[q]!, 1) };
      },
      internalErrors: () => internal,
    };
    await hostileRun({ c, rand, made, meter, rings, h }, other);
  }

  for (const [kind, format, indirect] of COMBOS) {
    it(comboName(kind, format, indirect), async () => {
      resetStats();
      await fc.assert(
        fc.asyncProperty(caseArb(kind, format, indirect), async (c) => {
          try {
            await vhostCase(c);
          } finally {
            for (const cl of cleanups.splice(0).reverse()) cl();
          }
        }),
        { numRuns: VHOST_RUNS, seed: SEED + kind.length * 11 + format.length + (indirect ? 3 : 0) },
      );
      report(`vhost-user, ${comboName(kind, format, indirect)}`);
    });
  }
});
