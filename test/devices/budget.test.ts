import { afterEach, describe, expect, it, vi } from 'vitest';
import { BlockDevice, MemoryBackend } from '../../src/devices/block/index.js';
import { DEFAULT_BYTES_PER_TURN } from '../../src/devices/budget.js';
import { ConsoleDevice, ConsolePipe } from '../../src/devices/console/index.js';
import { featureBit } from '../../src/devices/device.js';
import type { NetBackend } from '../../src/devices/net/backend.js';
import { NetDevice } from '../../src/devices/net/index.js';
import { RngDevice } from '../../src/devices/rng/index.js';
import { RawPackedRing } from '../../src/driver/raw-packed.js';
import { RawSplitRing } from '../../src/driver/raw-split.js';
import { DescriptorError } from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';
import {
  activate,
  type DeviceRig,
  deviceRig,
  FORMATS,
  HostileRing,
  indirect,
  ManualScheduler,
  type RingFormat,
  writeTable,
} from './budget-rig.js';

const MiB = 1 << 20;
const TABLE = 0x40000;
const BUF = 0x80000;
const STATUS = 0x90000;

function features(format: RingFormat): bigint {
  return (
    featureBit(VIRTIO_F_VERSION_1) |
    featureBit(VIRTIO_F_INDIRECT_DESC) |
    (format === 'packed' ? featureBit(VIRTIO_F_RING_PACKED) : 0n)
  );
}

/** A block request header: IN (0) or OUT (1), `sector`. */
function blkHeader(memory: GuestMemory, at: number, type: number, sector: number): void {
  memory.writeU32(at, type);
  memory.writeU32(at + 4, 0);
  memory.writeU32(at + 8, sector);
  memory.writeU32(at + 12, 0);
}

/** What a device moved, counted by the hook the test gives it. */
interface Meter {
  bytes: number;
}

/**
 * One device under a guest that keeps its queue `queue` full, each chain one indirect table
 * that `setup` writes; the hook the device calls for each chain feeds the ring.
 */
interface Case {
  name: string;
  queue: number;
  build(
    meter: Meter,
    feed: () => void,
    options: { maxChainsPerTurn: number },
  ): RngDevice | BlockDevice | ConsoleDevice | NetDevice;
  /** Writes the chain's indirect table at TABLE and returns its length. */
  setup(memory: GuestMemory, format: RingFormat): number;
}

const CASES: Case[] = [
  {
    name: 'rng',
    queue: 0,
    build: (meter, feed, o) =>
      new RngDevice({
        ...o,
        source: (out) => {
          meter.bytes += out.length;
          out.fill(0xa5);
          feed();
        },
      }),
    setup: (m, f) => writeTable(m, f, TABLE, [[BUF, 64, true]]),
  },
  {
    name: 'block',
    queue: 0,
    build: (meter, feed, o) => {
      const disk = new MemoryBackend(1 * MiB);
      const read = disk.read.bind(disk);
      disk.read = (offset, dst, dstOffset, length) => {
        meter.bytes += length;
        read(offset, dst, dstOffset, length);
        feed();
      };
      return new BlockDevice({ ...o, backend: disk, logger: silentLogger });
    },
    setup: (m, f) => {
      blkHeader(m, BUF, 0, 8);
      return writeTable(m, f, TABLE, [
        [BUF, 16, false],
        [BUF + 0x1000, 512, true],
        [STATUS, 1, true],
      ]);
    },
  },
  {
    name: 'console transmit',
    queue: 1,
    build: (meter, feed, o) => {
      const pipe = new ConsolePipe();
      pipe.onOutput = (bytes) => {
        meter.bytes += bytes.length;
        feed();
      };
      return new ConsoleDevice({ ...o, backend: pipe });
    },
    setup: (m, f) => writeTable(m, f, TABLE, [[BUF, 64, false]]),
  },
  {
    name: 'net transmit',
    queue: 1,
    build: (meter, feed, o) => {
      const backend: NetBackend = {
        offloads: 0n,
        attach: () => {},
        detach: () => {},
        send: (_frame, length) => {
          meter.bytes += length;
          feed();
          return true;
        },
        resumeRx: () => {},
      };
      return new NetDevice({ ...o, backend, mac: null, mergeableRxBuffers: false });
    },
    setup: (m, f) => {
      // A 12-byte virtio header (all zero: no offload) and a 60-byte frame.
      m.fill(BUF, 12, 0);
      return writeTable(m, f, TABLE, [
        [BUF, 12, false],
        [BUF + 0x100, 60, false],
      ]);
    },
  },
];

afterEach(() => {
  vi.useRealTimers();
});

describe('bounded work per notification: a guest that keeps its ring full', () => {
  for (const c of CASES) {
    for (const format of FORMATS) {
      it(`${c.name} over ${format} rings: each turn takes at most its chain budget and continues by itself`, () => {
        const meter: Meter = { bytes: 0 };
        let ring: HostileRing | null = null;
        const budget = 5;
        const device = c.build(meter, () => ring?.feed(), { maxChainsPerTurn: budget });
        const rig = deviceRig(device, { format }, features(format));
        ring = rig.rings[c.queue]!;
        const len = c.setup(rig.memory, format);
        ring.setChain(indirect(TABLE, len));
        ring.offer(ring.size);

        device.queueNotify(c.queue);
        const perTurn = [rig.used[c.queue]!];
        for (let turn = 0; turn < 20; turn++) {
          // Exactly one continuation is waiting: the device needs no further notification.
          expect(rig.scheduler.pending.length).toBe(1);
          const before = rig.used[c.queue]!;
          rig.scheduler.runOne();
          perTurn.push(rig.used[c.queue]! - before);
        }
        // Every turn did the whole budget, never more: the guest kept the ring full throughout.
        expect(perTurn).toEqual(new Array(21).fill(budget));
        expect(ring.offered).toBeGreaterThan(21 * budget);
        expect(device.needsReset).toBe(false);
        expect(meter.bytes).toBeGreaterThan(0);

        // Reset: the waiting continuation does nothing.
        device.reset();
        const after = rig.used[c.queue]!;
        while (rig.scheduler.runOne()) {}
        expect(rig.used[c.queue]).toBe(after);

        // A clean driver on fresh rings is served.
        const clean = deviceRig(device, { format }, features(format));
        const r = clean.rings[c.queue]!;
        r.setChain(indirect(TABLE, c.setup(clean.memory, format)));
        r.offer(2);
        device.queueNotify(c.queue);
        expect(clean.used[c.queue]).toBe(2);
        expect(clean.scheduler.pending.length).toBe(0);
      });
    }
  }

  it('a continuation does nothing on a device in DEVICE_NEEDS_RESET', () => {
    const meter: Meter = { bytes: 0 };
    let ring: HostileRing | null = null;
    const device = CASES[0]!.build(meter, () => ring?.feed(), { maxChainsPerTurn: 3 });
    const rig = deviceRig(device, { format: 'split' }, features('split'));
    ring = rig.rings[0]!;
    ring.setChain(indirect(TABLE, CASES[0]!.setup(rig.memory, 'split')));
    ring.offer(16);
    device.queueNotify(0);
    expect(rig.used[0]).toBe(3);
    device.fail(new DescriptorError('DESC_HEAD_OUT_OF_RANGE', 99, 99, 'injected'));
    while (rig.scheduler.runOne()) {}
    expect(rig.used[0]).toBe(3);
  });

  it('rejects budgets that are not positive integers', () => {
    const backend = new MemoryBackend(4096);
    expect(() => new RngDevice({ maxChainsPerTurn: 0 })).toThrow(RangeError);
    expect(() => new RngDevice({ maxBytesPerTurn: 1.5 })).toThrow(RangeError);
    expect(() => new BlockDevice({ backend, maxBytesPerTurn: -1 })).toThrow(RangeError);
    expect(() => new RngDevice({ maxBytesPerRequest: 0 })).toThrow(RangeError);
    expect(() => new ConsoleDevice({ maxBytesPerTransmit: Number.NaN })).toThrow(RangeError);
    expect(() => new RngDevice({ rateLimit: { maxBytes: 0, periodMs: 10 } })).toThrow(RangeError);
  });
});

/** Guest memory big enough for 15 MiB buffers aliased many times over. */
const BIG = 0x100000;
const BIG_LEN = 15 * MiB;

describe('bounded work per notification: giant aliased indirect buffers', () => {
  for (const format of FORMATS) {
    it(`rng over ${format}: each request is cut to maxBytesPerRequest, each turn to its byte budget`, () => {
      const meter: Meter = { bytes: 0 };
      const device = new RngDevice({
        source: (out) => {
          meter.bytes += out.length;
        },
      });
      const rig = deviceRig(device, { format, size: 16, memoryBytes: 17 * MiB }, features(format));
      const ring = rig.rings[0]!;
      // 16 entries of 15 MiB each: 240 MiB asked for per chain, 16 chains.
      const len = HostileRing.aliasedTable(rig.memory, format, TABLE, 16, BIG, BIG_LEN, true);
      ring.setChain(indirect(TABLE, len));
      ring.offer(16);
      device.queueNotify(0);
      // 64 KiB per request by default; 16 requests (1 MiB) fit one turn's 4 MiB.
      expect(meter.bytes).toBe(16 * 64 * 1024);
      expect(rig.used[0]).toBe(16);
    });

    it(`console over ${format}: a transmit chain is cut to maxBytesPerTransmit, the rest counted`, () => {
      const pipe = new ConsolePipe({ maxCollectedBytes: 64 * MiB });
      let out = 0;
      pipe.onOutput = (b) => {
        out += b.length;
      };
      const device = new ConsoleDevice({ backend: pipe, maxBytesPerTurn: 256 * 1024 });
      const rig = deviceRig(device, { format, size: 16, memoryBytes: 17 * MiB }, features(format));
      const ring = rig.rings[1]!;
      const len = HostileRing.aliasedTable(rig.memory, format, TABLE, 16, BIG, BIG_LEN, false);
      ring.setChain(indirect(TABLE, len));
      ring.offer(16);
      device.queueNotify(1);
      // 256 KiB per turn: four 64 KiB chains, then the device yields.
      expect(out).toBe(4 * 64 * 1024);
      expect(rig.used[1]).toBe(4);
      expect(device.txBytesDropped).toBe(4 * (16 * BIG_LEN - 64 * 1024));
      expect(rig.scheduler.pending.length).toBe(1);
      while (rig.scheduler.runOne()) {}
      expect(rig.used[1]).toBe(16);
      expect(out).toBe(16 * 64 * 1024);
    });

    it(`block over ${format}: reads into aliased buffers stop at the byte budget, one request over at most`, () => {
      const disk = new MemoryBackend(64 * MiB);
      let moved = 0;
      const read = disk.read.bind(disk);
      disk.read = (offset, dst, dstOffset, length) => {
        moved += length;
        read(offset, dst, dstOffset, length);
      };
      const device = new BlockDevice({ backend: disk, logger: silentLogger });
      const rig = deviceRig(device, { format, size: 16, memoryBytes: 17 * MiB }, features(format));
      const ring = rig.rings[0]!;
      const m = rig.memory;
      blkHeader(m, BUF, 0, 0);
      // Header, four aliased 15 MiB data buffers (60 MiB), status.
      const len = writeTable(m, format, TABLE, [
        [BUF, 16, false],
        [BIG, BIG_LEN, true],
        [BIG, BIG_LEN, true],
        [BIG, BIG_LEN, true],
        [BIG, BIG_LEN, true],
        [STATUS, 1, true],
      ]);
      ring.setChain(indirect(TABLE, len));
      ring.offer(16);
      device.queueNotify(0);
      // One 60 MiB request spends the 4 MiB budget: the turn ends after it.
      expect(rig.used[0]).toBe(1);
      expect(moved).toBe(4 * BIG_LEN);
      expect(moved).toBeLessThanOrEqual(DEFAULT_BYTES_PER_TURN + 4 * BIG_LEN);
      for (let t = 2; t <= 3; t++) {
        rig.scheduler.runOne();
        expect(rig.used[0]).toBe(t);
      }
      expect(m.readU8(STATUS)).toBe(0);
    });
  }
});

/**
 * The self-feeding block layout of issue 10 on a split ring: each IN request's data lands on
 * the available ring (its `idx` one further) and on its own header (the next sector), and
 * sector k of the disk holds exactly that for request k + 1. The feed never ends by itself.
 */
function selfFeedingSplit(device: (backend: MemoryBackend) => BlockDevice) {
  const sectors = 65536;
  const image = new Uint8Array(sectors * 512);
  const v = new DataView(image.buffer);
  for (let k = 0; k < sectors; k++) {
    const s = k * 512;
    v.setUint16(s + 2, (k + 2) & 0xffff, true); // avail.idx: one more request
    // avail.ring[*] = 0 (the one chain); the header at +256: IN, sector k + 1.
    v.setUint32(s + 256 + 8, (k + 1) % sectors, true);
  }
  const memory = GuestMemory.create(MiB);
  const layout = { desc: 0x0000, avail: 0x1000, used: 0x2000, end: 0x3000 };
  const raw = new RawSplitRing(memory, 0, 16, layout);
  raw.setDesc(0, 0x1100, 16, VIRTQ_DESC_F_NEXT, 1); // header, inside the data area
  raw.setDesc(1, 0x1000, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2); // over the avail ring
  raw.setDesc(2, STATUS, 1, VIRTQ_DESC_F_WRITE, 0);
  blkHeader(memory, 0x1100, 0, 0);
  raw.setAvailRing(0, 0);
  raw.setAvailIdx(1);
  const backend = new MemoryBackend(image);
  const dev = device(backend);
  const queue = raw.createQueue({ logger: silentLogger });
  return { memory, raw, queue, dev };
}

describe('the self-feeding block device of issue 10', () => {
  it('split ring, default budget, real scheduler: timers and another device run while it feeds itself; reset ends it', async () => {
    const { memory, queue, dev } = selfFeedingSplit(
      (backend) => new BlockDevice({ backend, logger: silentLogger }),
    );
    dev.acceptFeatures(features('split'));
    dev.activate({
      memory,
      queues: [queue],
      features: features('split'),
      interrupt: { usedBuffer: () => {}, configChanged: () => {} },
    });
    // A well-behaved rng device on its own memory, notified from timers.
    const rng = new RngDevice();
    const rngRig = deviceRig(rng, { format: 'split' }, features('split'));
    const rr = rngRig.rings[0]!;
    rr.setChain(indirect(TABLE, writeTable(rngRig.memory, 'split', TABLE, [[BUF, 16, true]])));

    let timerAt = -1;
    setTimeout(() => {
      timerAt = dev.stats.requests;
    }, 0);
    dev.queueNotify(0);
    // One notification: a ring's worth of requests (16), then the device yields.
    expect(dev.stats.requests).toBe(16);
    // The device continues by itself; the timer fires while it is still being fed.
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(timerAt).toBeGreaterThanOrEqual(16);
    // And goes on by itself after the timer (both timers may fire in one pass on a busy
    // machine, so give it event-loop turns rather than wall time).
    for (let i = 0; i < 100 && dev.stats.requests <= timerAt; i++) {
      await new Promise((resolve) => setImmediate(resolve));
    }
    const later = dev.stats.requests;
    expect(later).toBeGreaterThan(timerAt);
    // The other device is served in between.
    for (let i = 0; i < 3; i++) {
      rr.offer(1);
      rng.queueNotify(0);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(rngRig.used[0]).toBe(3);
    expect(dev.stats.requests).toBeGreaterThan(later);
    expect(dev.needsReset).toBe(false);
    expect(dev.stats.ioErrors).toBe(0);

    dev.reset();
    const stopped = dev.stats.requests;
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(dev.stats.requests).toBe(stopped);
  });

  it('split ring: every turn serves exactly its budget of requests, none needs a kick', () => {
    const { memory, queue, dev } = selfFeedingSplit(
      (backend) => new BlockDevice({ backend, logger: silentLogger, maxChainsPerTurn: 100 }),
    );
    const scheduler = new ManualScheduler();
    dev.acceptFeatures(features('split'));
    dev.activate({
      memory,
      queues: [queue],
      features: features('split'),
      interrupt: { usedBuffer: () => {}, configChanged: () => {} },
      schedule: scheduler.schedule,
    });
    dev.queueNotify(0);
    expect(dev.stats.requests).toBe(100);
    for (let t = 2; t <= 50; t++) {
      expect(scheduler.runOne()).toBe(true);
      expect(dev.stats.requests).toBe(100 * t);
    }
    expect(dev.stats.bytesRead).toBe(5000 * 512);
  });

  it('packed ring: a 16 KiB disk feeds the ring through its own descriptors, every turn bounded', () => {
    const N = 16;
    const K = 32;
    const memory = GuestMemory.create(MiB);
    const layout = { desc: 0x1000, driver: 0x3000, device: 0x3010, end: 0x3020 };
    const raw = new RawPackedRing(memory, 0, N, layout);
    // Indirect tables: header t (inside the data area), data over the descriptor ring and the
    // headers, status.
    for (let t = 0; t < N; t++) {
      writeTable(memory, 'packed', 0x4000 + 48 * t, [
        [0x1100 + 16 * t, 16, false],
        [0x1000, 512, true],
        [STATUS + t, 1, true],
      ]);
    }
    // Sector k: the ring as the device must find it after request k (positions k+1 ..
    // k+16 available with their wrap bits) and each slot's header naming its next sector.
    const image = new Uint8Array(K * 512);
    const v = new DataView(image.buffer);
    for (let k = 0; k < K; k++) {
      for (let t = 0; t < N; t++) {
        const p = k + 1 + ((((t - (k + 1)) % N) + N) % N);
        const wrap = Math.floor(p / N) % 2 === 0;
        const d = k * 512 + 16 * t;
        v.setUint32(d, 0x4000 + 48 * t, true);
        v.setUint32(d + 8, 48, true);
        v.setUint16(d + 12, t, true);
        v.setUint16(d + 14, VIRTQ_DESC_F_INDIRECT | RawPackedRing.availBits(wrap), true);
        v.setUint32(k * 512 + 256 + 16 * t + 8, p % K, true);
      }
    }
    raw.setDesc(0, 0x4000, 48, 0, VIRTQ_DESC_F_INDIRECT | RawPackedRing.availBits(true));
    blkHeader(memory, 0x1100, 0, 0);
    const scheduler = new ManualScheduler();
    const dev = new BlockDevice({
      backend: new MemoryBackend(image),
      logger: silentLogger,
      maxChainsPerTurn: 8,
    });
    const queue = raw.createQueue({ logger: silentLogger, indirect: true });
    dev.acceptFeatures(features('packed'));
    dev.activate({
      memory,
      queues: [queue],
      features: features('packed'),
      interrupt: { usedBuffer: () => {}, configChanged: () => {} },
      schedule: scheduler.schedule,
    });
    dev.queueNotify(0);
    expect(dev.stats.requests).toBe(8);
    for (let t = 2; t <= 40; t++) {
      expect(scheduler.runOne()).toBe(true);
      expect(dev.stats.requests).toBe(8 * t);
    }
    expect(dev.needsReset).toBe(false);
    expect(dev.stats.ioErrors).toBe(0);
  });
});

describe('rng rate limit (max bytes per period)', () => {
  it('serves at most maxBytes per period; waiting requests are served from the next period on, none dropped', () => {
    vi.useFakeTimers();
    let now = 0;
    const device = new RngDevice({
      rateLimit: { maxBytes: 100, periodMs: 1000, now: () => now, shortFills: true },
    });
    const rig = deviceRig(device, { format: 'split' }, features('split'));
    const ring = rig.rings[0]!;
    ring.setChain(indirect(TABLE, writeTable(rig.memory, 'split', TABLE, [[BUF, 64, true]])));
    ring.offer(4);
    device.queueNotify(0);
    // 64 + 36 (the rest of the quota), then the quota is spent.
    expect(device.bytesServed).toBe(100);
    expect(rig.used[0]).toBe(2);
    expect(device.rateLimited).toBe(1);
    // No polling: one timer to the next period.
    expect(vi.getTimerCount()).toBe(1);
    now = 1000;
    vi.advanceTimersByTime(1000);
    expect(device.bytesServed).toBe(200);
    expect(rig.used[0]).toBe(4);
    // Nothing was dropped, and an empty ring arms no timer.
    now = 2000;
    vi.advanceTimersByTime(1000);
    expect(rig.used[0]).toBe(4);
    // Reset drops the wait.
    ring.offer(4);
    device.queueNotify(0);
    expect(vi.getTimerCount()).toBe(1);
    device.reset();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('a re-activation without a reset in between does not leave the new session without its wake-up', () => {
    vi.useFakeTimers();
    let now = 0;
    const device = new RngDevice({ rateLimit: { maxBytes: 64, periodMs: 1000, now: () => now } });
    const rig = deviceRig(device, { format: 'split' }, features('split'));
    const ring = rig.rings[0]!;
    ring.setChain(indirect(TABLE, writeTable(rig.memory, 'split', TABLE, [[BUF, 64, true]])));
    ring.offer(2);
    device.queueNotify(0);
    expect(rig.used[0]).toBe(1);
    expect(vi.getTimerCount()).toBe(1);
    // Activated again over the same rings (the old timer belongs to the old generation).
    activate(rig, features('split'));
    device.queueNotify(0);
    now = 1000;
    vi.advanceTimersByTime(1000);
    expect(rig.used[0]).toBe(2);
    device.reset();
  });

  it('by default serves whole requests only, at most maxBytes per period; waiting requests are served from the next period on, none dropped', () => {
    vi.useFakeTimers();
    let now = 0;
    const device = new RngDevice({ rateLimit: { maxBytes: 100, periodMs: 1000, now: () => now } });
    const rig = deviceRig(device, { format: 'split' }, features('split'));
    const ring = rig.rings[0]!;
    ring.setChain(indirect(TABLE, writeTable(rig.memory, 'split', TABLE, [[BUF, 64, true]])));
    ring.offer(4);
    device.queueNotify(0);
    // 64 bytes; the 36 left in the period would only shorten the next request, so it waits.
    expect(device.bytesServed).toBe(64);
    expect(rig.used[0]).toBe(1);
    expect(device.rateLimited).toBe(1);
    // No polling: one timer to the next period.
    expect(vi.getTimerCount()).toBe(1);
    for (let period = 1; period <= 3; period++) {
      now = 1000 * period;
      vi.advanceTimersByTime(1000);
      // One whole 64-byte request per period: bytes = 64 x requests, never a short fill.
      expect(device.bytesServed).toBe(64 * (period + 1));
      expect(rig.used[0]).toBe(period + 1);
    }
    // Nothing was dropped, and an empty ring arms no timer.
    now = 5000;
    vi.advanceTimersByTime(2000);
    expect(rig.used[0]).toBe(4);
    expect(vi.getTimerCount()).toBe(0);
    // Reset drops the wait.
    ring.offer(4);
    device.queueNotify(0);
    device.queueNotify(0);
    expect(vi.getTimerCount()).toBe(1);
    device.reset();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('gives a request larger than a whole period its quota at the start of a period', () => {
    vi.useFakeTimers();
    let now = 0;
    const device = new RngDevice({ rateLimit: { maxBytes: 100, periodMs: 1000, now: () => now } });
    const rig = deviceRig(device, { format: 'split' }, features('split'));
    const ring = rig.rings[0]!;
    ring.setChain(indirect(TABLE, writeTable(rig.memory, 'split', TABLE, [[BUF, 256, true]])));
    ring.offer(2);
    device.queueNotify(0);
    expect(device.bytesServed).toBe(100);
    expect(rig.used[0]).toBe(1);
    now = 1000;
    vi.advanceTimersByTime(1000);
    expect(device.bytesServed).toBe(200);
    expect(rig.used[0]).toBe(2);
    device.reset();
  });
});

describe('memory kept on the guest’s behalf is bounded', () => {
  it('ConsolePipe collects at most maxCollectedBytes (plus one chain) and pauses output until taken', () => {
    const pipe = new ConsolePipe({ maxCollectedBytes: 1000 });
    const device = new ConsoleDevice({ backend: pipe });
    const rig: DeviceRig<ConsoleDevice> = deviceRig(device, { format: 'split' }, features('split'));
    const ring = rig.rings[1]!;
    ring.setChain(indirect(TABLE, writeTable(rig.memory, 'split', TABLE, [[BUF, 300, false]])));
    ring.offer(10);
    device.queueNotify(1);
    // Four chains take it to 1200 bytes; the device stops reading until the output is taken.
    expect(rig.used[1]).toBe(4);
    expect(pipe.collectedLength).toBe(1200);
    expect(pipe.takeOutput().length).toBe(1200);
    expect(rig.used[1]).toBe(8);
    expect(pipe.takeOutput().length).toBe(1200);
    expect(rig.used[1]).toBe(10);
    expect(pipe.takeOutput().length).toBe(600);
  });
});
