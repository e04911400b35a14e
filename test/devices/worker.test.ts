/**
 * Devices running in a worker thread behind a WorkerDeviceProxy: the guest driver (this
 * thread) talks to an MmioTransport (this thread), which forwards to the device in a
 * worker_thread over a SharedArrayBuffer. Every wait is bounded: a hang fails the test.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SECTOR_BYTES, VIRTIO_BLK_S_OK } from '../../src/devices/block/index.js';
import {
  featureBit,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER_OK,
  VIRTIO_ID_RNG,
} from '../../src/devices/device.js';
import { DeviceWorkerError, type WorkerDeviceProxy } from '../../src/devices/runner/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { BlockDriver } from '../../src/driver/devices/block.js';
import { NetGuestDriver } from '../../src/driver/devices/net.js';
import { MmioGuestDriver } from '../../src/driver/mmio.js';
import type { DriverQueue } from '../../src/driver/queue.js';
import { GuestMemory } from '../../src/memory/index.js';
import type { DeviceWorkerSpec } from '../../src/node/device-factories.js';
import { NodeDeviceWorker, type SpawnDeviceWorkerOptions } from '../../src/node/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { INT_CONFIG_CHANGE, MMIO, MmioTransport } from '../../src/transport/mmio.js';

const src = (path: string) => JSON.stringify(new URL(`../../src/${path}`, import.meta.url).href);

/**
 * A test device, loaded by the worker from a data: URL. For each chain it writes the u32 sum
 * of the chain's readable bytes into the first writable buffer (used length 4). Options: spin
 * `spinMs` per request and publish each answer at once (a slow device), throw after
 * `failAfter` requests (a broken device).
 * Its 8-byte configuration space holds the request count at 0 (refreshed on each config
 * write) and a driver-writable u32 at 4; a write bumps the generation.
 */
const ECHO_MODULE = `
import { VirtioDeviceBase, featureBit } from ${src('devices/device.ts')};
import { DescriptorChain } from ${src('queue/chain.ts')};
export class EchoDevice extends VirtioDeviceBase {
  constructor(o = {}) {
    super(0x3e, [o.queueSize ?? 64], featureBit(28) | featureBit(29) | featureBit(34), 8);
    this.o = o;
    this.chain = new DescriptorChain();
    this.served = 0;
  }
  processQueue(index, queue) {
    let any = false;
    for (let c = queue.popOrEnableNotification(this.chain); c !== null; c = queue.popOrEnableNotification(this.chain)) {
      if (this.o.failAfter !== undefined && this.served >= this.o.failAfter) throw new Error('echo device broke');
      if (this.o.spinMs) { const end = performance.now() + this.o.spinMs; while (performance.now() < end); }
      let sum = 0;
      for (let i = 0; i < c.writableStart; i++) { const b = c.slice(i); for (let k = 0; k < b.length; k++) sum += b[k]; }
      const out = c.slice(c.writableStart);
      new DataView(out.buffer, out.byteOffset, 4).setUint32(0, sum >>> 0, true);
      queue.addUsed(c.head, 4);
      this.served++;
      any = true;
      // A slow device publishes each answer as soon as it has it.
      if (this.o.spinMs) this.publish(index);
    }
    if (any) this.publish(index);
  }
  writeConfig(offset, data) {
    if (offset !== 4 || data.length !== 4) return;
    const count = new Uint8Array(4);
    new DataView(count.buffer).setUint32(0, this.served, true);
    this.updateConfig(0, count);
    this.updateConfig(4, data);
  }
  saveDevice() { return { served: this.served }; }
}
export function make(o) { return new EchoDevice(o); }
export function pair(o) { return [new EchoDevice(o), new EchoDevice(o)]; }
`;

function echo(options: Record<string, unknown> = {}, exportName = 'make'): DeviceWorkerSpec {
  return {
    kind: 'module',
    module: `data:text/javascript,${encodeURIComponent(ECHO_MODULE)}`,
    export: exportName,
    options,
  };
}

const MEMORY = 8 << 20;
const DATA = 0x200000;
const SLOT = 512;
const VERSION_1 = featureBit(VIRTIO_F_VERSION_1);
const PACKED = featureBit(VIRTIO_F_RING_PACKED);
const EVENT_IDX = featureBit(VIRTIO_F_EVENT_IDX);
const INDIRECT = featureBit(VIRTIO_F_INDIRECT_DESC);

const open: NodeDeviceWorker[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((w) => w.close()));
});

interface Rig {
  memory: GuestMemory;
  worker: NodeDeviceWorker;
  proxy: WorkerDeviceProxy;
  t: MmioTransport;
  guest: MmioGuestDriver;
  levels: boolean[];
}

async function spawn(spec: DeviceWorkerSpec, options: SpawnDeviceWorkerOptions = {}) {
  const memory = GuestMemory.create(MEMORY, { shared: true });
  const worker = await NodeDeviceWorker.spawn(spec, memory, {
    timeoutMs: 3000,
    host: { logging: 'silent' },
    ...options,
  });
  open.push(worker);
  return { memory, worker };
}

function attach(
  memory: GuestMemory,
  worker: NodeDeviceWorker,
  index: number,
  allocStart: number,
): Rig {
  const proxy = worker.devices[index]!;
  const levels: boolean[] = [];
  const t = new MmioTransport(proxy, memory, {
    logger: silentLogger,
    onInterrupt: (l) => levels.push(l),
  });
  const guest = new MmioGuestDriver(
    t,
    memory,
    new GuestAllocator(memory, allocStart, allocStart + 0x40000),
  );
  return { memory, worker, proxy, t, guest, levels };
}

async function rig(spec: DeviceWorkerSpec, options: SpawnDeviceWorkerOptions = {}): Promise<Rig> {
  const { memory, worker } = await spawn(spec, options);
  return attach(memory, worker, 0, 0x10000);
}

/** Negotiates, sets up queue 0 and starts; checks the ring format the transport chose. */
function start(r: Rig, features: bigint, size = 64): DriverQueue {
  r.guest.alloc.reset();
  const f = r.guest.negotiate(features);
  expect(f).toBe(features);
  const q = r.guest.setupQueue(0, size);
  r.guest.start();
  expect(r.t.queues[0]!.format).toBe((features & PACKED) !== 0n ? 'packed' : 'split');
  expect(r.t.read(MMIO.STATUS, 4) & STATUS_DRIVER_OK).not.toBe(0);
  return q;
}

/** A small deterministic generator. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s;
  };
}

/**
 * Sends `total` echo requests through queue `q` in batches of random size (at most
 * `maxBatch`), each with its own request bytes, and checks every answer. Bounded by `ms`.
 */
async function exchangeEcho(
  r: Rig,
  q: DriverQueue,
  total: number,
  o: { indirect?: boolean; maxBatch?: number; seed?: number; base?: number; ms?: number } = {},
): Promise<void> {
  const waiter = r.proxy.waiter(50);
  const rand = lcg(o.seed ?? 1);
  const base = o.base ?? DATA;
  const slots = Math.min(q.size, 64);
  const free: number[] = [];
  for (let s = slots - 1; s >= 0; s--) free.push(s);
  const inflight = new Map<number, { slot: number; want: number }>();
  const deadline = performance.now() + (o.ms ?? 20_000);
  let sent = 0;
  let done = 0;
  while (done < total) {
    const batch = 1 + (rand() % (o.maxBatch ?? 16));
    let added = 0;
    while (added < batch && sent < total && free.length > 0 && q.numFree >= (o.indirect ? 1 : 2)) {
      const slot = free.pop()!;
      const at = base + slot * SLOT;
      const len = 1 + (rand() % 200);
      const bytes = new Uint8Array(len);
      let want = 0;
      for (let i = 0; i < len; i++) {
        bytes[i] = rand() & 0xff;
        want += bytes[i]!;
      }
      r.memory.write(at, bytes);
      r.memory.writeU32(at + 256, 0xdeadbeef);
      const readable = [{ addr: at, len }];
      const writable = [{ addr: at + 256, len: 8 }];
      const id = o.indirect
        ? q.addIndirect(at + 384, readable, writable)
        : q.add(readable, writable);
      inflight.set(id, { slot, want });
      sent++;
      added++;
    }
    if (added > 0) r.guest.kick(0);
    let got = 0;
    for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
      const req = inflight.get(id);
      if (req === undefined) throw new Error(`chain ${id} came back but was not in flight`);
      inflight.delete(id);
      expect(q.lastUsedLen).toBe(4);
      const answer = r.memory.readU32(base + req.slot * SLOT + 256);
      if (answer !== req.want)
        throw new Error(`chain ${id}: answer ${answer}, expected ${req.want}`);
      free.push(req.slot);
      done++;
      got++;
    }
    if (got === 0 && added === 0) {
      if (performance.now() > deadline) throw new Error(`stuck after ${done} of ${total} requests`);
      await waiter.wait();
    }
  }
  expect(inflight.size).toBe(0);
}

/** Byte-for-byte equality (toEqual is slow on thousands of large arrays). */
function expectBytes(actual: Uint8Array | null, expected: Uint8Array, what: string): void {
  if (actual === null) throw new Error(`${what}: no data`);
  if (actual.length !== expected.length)
    throw new Error(`${what}: ${actual.length} bytes, expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i])
      throw new Error(`${what}: byte ${i} is ${actual[i]}, expected ${expected[i]}`);
  }
}

/** Waits (bounded) until `cond` holds, polling the device's interrupts meanwhile. */
async function until(r: Rig, cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const waiter = r.proxy.waiter(20);
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    // A dead device's waiter rejects at once: then sleep a little, so messages get through.
    await waiter.wait().catch(() => new Promise((resolve) => setTimeout(resolve, 5)));
  }
}

describe('rng device in a worker thread, through virtio-mmio', () => {
  for (const ring of ['split', 'packed'] as const) {
    it(`serves many entropy requests over a ${ring} ring`, async () => {
      const r = await rig({ kind: 'rng' });
      expect(r.guest.probe()).toBe(VIRTIO_ID_RNG);
      const q = start(r, VERSION_1 | (ring === 'packed' ? PACKED : 0n));
      const waiter = r.proxy.waiter(50);
      const total = 20_000;
      const len = 128;
      let sent = 0;
      let done = 0;
      let bytes = 0;
      const deadline = performance.now() + 20_000;
      while (done < total) {
        while (sent < total && q.numFree > 0) {
          const at = DATA + (sent % 64) * len;
          q.add([], [{ addr: at, len }]);
          sent++;
        }
        r.guest.kick(0);
        while (!q.hasUsed()) {
          if (performance.now() > deadline) throw new Error(`stuck after ${done} requests`);
          await waiter.wait();
        }
        for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
          bytes += q.lastUsedLen;
          done++;
        }
      }
      expect(bytes).toBe(total * len);
      // Entropy: 8 KiB of crypto bytes are not all equal.
      expect(new Set(r.memory.slice(DATA, 64 * len)).size).toBeGreaterThan(200);
      // The interrupt line went up through the proxy's poll.
      expect(r.levels[0]).toBe(true);
      const state = (await r.worker.query(0)) as {
        device: { requestsServed: number; bytesServed: number };
      };
      expect(state.device.requestsServed).toBe(total);
      expect(state.device.bytesServed).toBe(total * len);
    }, 60_000);
  }
});

describe('block and net devices in a worker thread', () => {
  for (const ring of ['split', 'packed'] as const) {
    it(`block over a ${ring} ring: random 4 KiB writes and reads, checked against the shared image`, async () => {
      const image = new SharedArrayBuffer(4 << 20);
      const disk = new Uint8Array(image);
      for (let i = 0; i < disk.length; i += 4096) disk[i] = (i >> 12) & 0xff;
      const r = await rig({ kind: 'block', image, quiet: true });
      const driver = new BlockDriver(r.guest, {
        waiter: r.proxy.waiter(50),
        queueSize: 64,
        arenaBytes: 128 * 1024,
        maxWaits: 2000,
      });
      const f = driver.init(EVENT_IDX | INDIRECT | (ring === 'packed' ? PACKED : 0n));
      expect(r.t.queues[0]!.format).toBe(ring);
      expect((f & EVENT_IDX) !== 0n).toBe(true);
      // Read through the configuration mirror.
      expect(driver.config!.capacity).toBe((4 << 20) / SECTOR_BYTES);
      const rand = lcg(ring.length);
      const blocks = (4 << 20) / 4096;
      for (let round = 0; round < 40; round++) {
        const used = new Set<number>();
        const tickets = [];
        for (let k = 0; k < 16; k++) {
          let b = rand() % blocks;
          while (used.has(b)) b = (b + 1) % blocks;
          used.add(b);
          if (k % 3 === 0) {
            const data = new Uint8Array(4096).map(() => rand() & 0xff);
            tickets.push({ b, data, t: driver.enqueue({ type: 'out', sector: b * 8, data }) });
          } else {
            tickets.push({
              b,
              data: null,
              t: driver.enqueue({ type: 'in', sector: b * 8, sectors: 8 }),
            });
          }
        }
        driver.notify();
        for (const { b, data, t } of tickets) {
          const c = await driver.wait(t);
          expect(c.status).toBe(VIRTIO_BLK_S_OK);
          const onDisk = disk.subarray(b * 4096, (b + 1) * 4096);
          // A write reached the image this thread sees; a read returned what the image holds.
          if (data !== null) expectBytes(onDisk, data, `block ${b} after the write`);
          else expectBytes(c.data, onDisk, `block ${b} read`);
        }
      }
      await driver.flush();
      driver.reset();
      expect(r.t.read(MMIO.STATUS, 4)).toBe(0);
    }, 60_000);
  }

  it('a net pair in one worker: frames both ways, each once, in order and intact', async () => {
    const { memory, worker } = await spawn({ kind: 'net-pair' });
    const ends = [attach(memory, worker, 0, 0x10000), attach(memory, worker, 1, 0x100000)].map(
      (r, i) => ({
        r,
        drv: new NetGuestDriver(
          r.t,
          memory,
          new GuestAllocator(memory, 0x10000 + i * 0xf0000, 0xf0000 + i * 0xf0000),
          {
            waiter: r.proxy.waiter(50),
            queueSize: 64,
          },
        ),
      }),
    );
    for (const [i, e] of ends.entries()) {
      e.drv.init(VERSION_1 | EVENT_IDX | featureBit(5) | (i === 1 ? PACKED : 0n));
      expect(e.r.t.queues[0]!.format).toBe(i === 1 ? 'packed' : 'split');
    }
    const [a, b] = ends as [(typeof ends)[0], (typeof ends)[0]];
    const frame = (seq: number, from: typeof a, to: typeof a) => {
      const f = new Uint8Array(60 + (seq % 1400));
      f.set(to.drv.mac!, 0);
      f.set(from.drv.mac!, 6);
      f[12] = 0x88;
      f[13] = 0xb5;
      new DataView(f.buffer).setUint32(14, seq, true);
      for (let i = 18; i < f.length; i++) f[i] = (seq * 31 + i) & 0xff;
      return f;
    };
    const waiters = [a.r.proxy.waiter(20), b.r.proxy.waiter(20)];
    const total = 3000;
    const sent = [0, 0];
    const got = [0, 0];
    const deadline = performance.now() + 30_000;
    while (got[0]! < total || got[1]! < total) {
      if (performance.now() > deadline) throw new Error(`stuck at ${got}`);
      let progressed = false;
      for (const [i, me] of [a, b].entries()) {
        const peer = i === 0 ? b : a;
        while (
          sent[i]! < total &&
          sent[i]! - got[1 - i]! < 32 &&
          me.drv.trySend(frame(sent[i]!, me, peer))
        ) {
          sent[i]!++;
          progressed = true;
        }
        for (let f = me.drv.tryReceive(); f !== null; f = me.drv.tryReceive()) {
          expectBytes(f.data, frame(got[i]!, peer, me), `frame ${got[i]} to end ${i}`);
          got[i]!++;
          progressed = true;
        }
      }
      if (!progressed) await Promise.race([waiters[0]!.wait(), waiters[1]!.wait()]);
    }
    expect(sent).toEqual([total, total]);
    const state = (await worker.query(0)) as { device: { stats: { txFrames: number } } };
    expect(state.device.stats.txFrames).toBe(total);
  }, 60_000);
});

describe('a device in a worker thread: rings and features', () => {
  const combos: [string, bigint, boolean][] = [
    ['split', VERSION_1, false],
    ['split + EVENT_IDX', VERSION_1 | EVENT_IDX, false],
    ['split + EVENT_IDX + indirect', VERSION_1 | EVENT_IDX | INDIRECT, true],
    ['packed', VERSION_1 | PACKED, false],
    ['packed + EVENT_IDX', VERSION_1 | PACKED | EVENT_IDX, false],
    ['packed + EVENT_IDX + indirect', VERSION_1 | PACKED | EVENT_IDX | INDIRECT, true],
  ];
  it('answers every request exactly once, whatever the ring format and features', async () => {
    const r = await rig(echo());
    for (const [name, features, indirect] of combos) {
      const q = start(r, features);
      await exchangeEcho(r, q, 5000, { indirect, seed: name.length, maxBatch: 24 });
      r.guest.reset();
      expect(r.t.read(MMIO.STATUS, 4)).toBe(0);
    }
    const state = (await r.worker.query(0)) as { device: { served: number } };
    expect(state.device.served).toBe(5000 * combos.length);
  }, 60_000);

  it('works the same with the worker loop sleeping in Atomics.waitAsync', async () => {
    const r = await rig(echo(), { host: { wait: 'async', logging: 'silent' } });
    const q = start(r, VERSION_1 | PACKED | EVENT_IDX);
    await exchangeEcho(r, q, 3000, { maxBatch: 8 });
    // Queries need the worker's event loop: it is free in this mode.
    const state = (await r.worker.query(0)) as { device: { served: number } };
    expect(state.device.served).toBe(3000);
  }, 30_000);

  it('a synchronous driver loop can block for interrupts (waitBlocking), both sides spinning first', async () => {
    const r = await rig({ kind: 'rng' }, { host: { spinUs: 50, logging: 'silent' } });
    const q = start(r, VERSION_1 | EVENT_IDX);
    const waiter = r.proxy.waiter(1000, 50);
    let done = 0;
    const started = performance.now();
    for (let round = 0; round < 500; round++) {
      for (let k = 0; k < 8; k++) q.add([], [{ addr: DATA + k * 64, len: 64 }]);
      r.guest.kick(0);
      let got = 0;
      while (got < 8) {
        for (let id = q.popUsed(); id >= 0; id = q.popUsed()) got++;
        if (got < 8) waiter.waitBlocking();
      }
      done += got;
    }
    expect(done).toBe(4000);
    // 500 rounds that each waited for the 1 s timeout would take minutes: interrupts woke us.
    expect(performance.now() - started).toBeLessThan(20_000);
  }, 30_000);

  it('serves two devices of one worker behind two transports, interleaved', async () => {
    const { memory, worker } = await spawn(echo({}, 'pair'));
    expect(worker.devices.length).toBe(2);
    const a = attach(memory, worker, 0, 0x10000);
    const b = attach(memory, worker, 1, 0x60000);
    const qa = start(a, VERSION_1 | EVENT_IDX);
    const qb = start(b, VERSION_1 | PACKED);
    await Promise.all([
      exchangeEcho(a, qa, 4000, { seed: 7, base: DATA }),
      exchangeEcho(b, qb, 4000, { seed: 9, base: DATA + 0x100000 }),
    ]);
  }, 60_000);

  it('mirrors the configuration space: writes are visible to the next read, with a new generation', async () => {
    const r = await rig(echo());
    const q = start(r, VERSION_1);
    await exchangeEcho(r, q, 100);
    const gen = r.t.read(MMIO.CONFIG_GENERATION, 4);
    r.guest.writeConfig(4, 4, 0x12345678);
    // Synchronous: no wait between the write and the read.
    expect(r.guest.readConfig(4, 4)).toBe(0x12345678);
    expect(r.guest.readConfig(0, 4)).toBe(100);
    expect(r.guest.readConfig(5, 1)).toBe(0x56);
    expect(r.guest.readConfig(4, 2)).toBe(0x5678);
    expect(r.t.read(MMIO.CONFIG_GENERATION, 4)).toBe(gen + 2);
    expect(r.guest.readConfigU64(0)).toBe((0x12345678n << 32n) | 100n);
    // The configuration change interrupt reaches the transport.
    await until(
      r,
      () => (r.t.interruptStatus & INT_CONFIG_CHANGE) !== 0,
      'a configuration interrupt',
    );
    expect(r.guest.ackInterrupt() & INT_CONFIG_CHANGE).not.toBe(0);
  }, 30_000);

  it('refuses features the device does not offer, synchronously', async () => {
    const r = await rig({ kind: 'rng' });
    expect(() => r.guest.negotiate(0n, VERSION_1 | featureBit(40))).toThrow(/refused/);
    expect(() => r.guest.negotiate(0n, 0n)).toThrow(/refused/);
    expect(r.proxy.acceptFeatures(VERSION_1)).toBe(true);
  }, 30_000);

  it('needs the transport and the worker to share one guest memory', async () => {
    const r = await rig({ kind: 'rng' });
    const other = GuestMemory.create(MEMORY, { shared: true });
    const t = new MmioTransport(r.proxy, other, { logger: silentLogger });
    const g = new MmioGuestDriver(t, other, new GuestAllocator(other, 0x10000, 0x100000));
    g.negotiate(VERSION_1);
    g.setupQueue(0, 8);
    expect(() => g.start()).toThrow(TypeError);
  }, 30_000);
});

describe('reset of a device in a worker thread', () => {
  it('returns only once the worker stopped touching the rings, even while it is busy', async () => {
    for (const features of [VERSION_1, VERSION_1 | PACKED | EVENT_IDX]) {
      const r = await rig(echo({ spinMs: 0.5 }));
      const q = start(r, features);
      // Fill the queue: 64 requests of about 0.5 ms each keep the worker busy for ~32 ms.
      for (let s = 0; s < 64 && q.numFree >= 2; s++) {
        const at = DATA + s * SLOT;
        r.memory.write(at, new Uint8Array(16).fill(s));
        q.add([{ addr: at, len: 16 }], [{ addr: at + 256, len: 8 }]);
      }
      r.guest.kick(0);
      await until(r, () => q.hasUsed(), 'the first answers');
      const started = performance.now();
      r.guest.reset(); // throws if status does not read 0 right after the write
      const took = performance.now() - started;
      expect(r.t.read(MMIO.STATUS, 4)).toBe(0);
      expect(took).toBeLessThan(3000);
      // From now on the worker must not write guest memory: take a picture and look again.
      const before = r.memory.slice(0, MEMORY).slice();
      await new Promise((resolve) => setTimeout(resolve, 100));
      const after = r.memory.slice(0, MEMORY);
      let changed = -1;
      for (let i = 0; i < before.length; i++) {
        if (before[i] !== after[i]) {
          changed = i;
          break;
        }
      }
      expect(changed).toBe(-1);
      // Interrupts raised before the reset are not delivered after it.
      expect(r.proxy.poll()).toBe(0);
      expect(r.t.interruptStatus).toBe(0);
      // And the device works again after a new initialisation.
      const q2 = start(r, features);
      await exchangeEcho(r, q2, 200);
    }
  }, 60_000);

  it('drops notifications that were pending at the reset', async () => {
    const r = await rig(echo({ spinMs: 2 }));
    const q = start(r, VERSION_1);
    for (let round = 0; round < 20; round++) {
      q.add([{ addr: DATA, len: 4 }], [{ addr: DATA + 256, len: 8 }]);
      r.guest.kick(0);
    }
    r.guest.reset();
    const q2 = start(r, VERSION_1);
    await exchangeEcho(r, q2, 300, { maxBatch: 4 });
  }, 30_000);
});

describe('a queue the driver stops using, with the device in a worker thread', () => {
  for (const ring of ['split', 'packed'] as const) {
    it(`QueueReady 0 stops the worker's ${ring} ring until a reset`, async () => {
      const r = await rig({ kind: 'rng' });
      const q = start(r, VERSION_1 | EVENT_IDX | INDIRECT | (ring === 'packed' ? PACKED : 0n));
      const waiter = r.proxy.waiter(50);
      q.add([], [{ addr: DATA, len: 16 }]);
      r.guest.kick(0);
      while (!q.hasUsed()) await waiter.wait();
      expect(q.popUsed()).toBeGreaterThanOrEqual(0);
      r.t.write(MMIO.QUEUE_SEL, 4, 0);
      r.t.write(MMIO.QUEUE_READY, 4, 0);
      expect(r.t.read(MMIO.QUEUE_READY, 4)).toBe(0);
      // The worker no longer touches the ring: a request made available and notified stays.
      r.memory.fill(DATA + 256, 16, 0xee);
      q.add([], [{ addr: DATA + 256, len: 16 }]);
      r.guest.kick(0);
      await new Promise((res) => setTimeout(res, 100));
      expect(q.hasUsed()).toBe(false);
      expect(Array.from(r.memory.slice(DATA + 256, 16))).toEqual(new Array(16).fill(0xee));
      const state = (await r.worker.query(0)) as {
        device: { requestsServed: number };
        queues: { active: boolean }[];
      };
      expect(state.device.requestsServed).toBe(1);
      expect(state.queues[0]!.active).toBe(false);
      // The saved state (read from the worker) round-trips through the transport.
      r.t.restore(JSON.parse(JSON.stringify(r.t.save())));
      expect(r.t.read(MMIO.QUEUE_READY, 4)).toBe(0);
      // After a reset the ring works again.
      const q2 = start(r, VERSION_1 | (ring === 'packed' ? PACKED : 0n));
      q2.add([], [{ addr: DATA, len: 16 }]);
      r.guest.kick(0);
      while (!q2.hasUsed()) await waiter.wait();
      expect(q2.popUsed()).toBeGreaterThanOrEqual(0);
    }, 30_000);
  }
});

describe('failures of a device in a worker thread surface', () => {
  it('an exception in the device: DEVICE_NEEDS_RESET, a configuration interrupt, waiters reject', async () => {
    const seen: DeviceWorkerError[] = [];
    const r = await rig(echo({ failAfter: 10 }), { onError: (_i, e) => seen.push(e) });
    const q = start(r, VERSION_1 | EVENT_IDX);
    const err = await exchangeEcho(r, q, 50, { maxBatch: 4 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceWorkerError);
    expect(String((err as Error).message)).toMatch(/echo device broke/);
    expect(r.proxy.error?.message).toMatch(/echo device broke/);
    expect(r.t.read(MMIO.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET).not.toBe(0);
    expect(r.t.interruptStatus & INT_CONFIG_CHANGE).not.toBe(0);
    await expect(r.proxy.waiter(10).wait()).rejects.toThrow(DeviceWorkerError);
    // The report also arrives as a message, with the same text.
    await until(r, () => seen.length > 0, 'the error message');
    expect(seen[0]!.message).toMatch(/echo device broke/);
    // A dead device does not come back with a reset, and the reset does not hang.
    const started = performance.now();
    expect(() => r.guest.reset()).toThrow(/did not reset/);
    expect(performance.now() - started).toBeLessThan(1000);
  }, 30_000);

  it('a worker that dies: its devices read DEVICE_NEEDS_RESET and nothing waits for it', async () => {
    const r = await rig(echo());
    const q = start(r, VERSION_1 | PACKED);
    await exchangeEcho(r, q, 100);
    await r.worker.worker.terminate();
    await until(r, () => r.proxy.error !== null, 'the worker death to be noticed');
    expect(r.proxy.error?.message).toMatch(/exited/);
    expect(r.t.read(MMIO.STATUS, 4) & STATUS_DEVICE_NEEDS_RESET).not.toBe(0);
    const err = await exchangeEcho(r, q, 10).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceWorkerError);
    const started = performance.now();
    expect(() => r.guest.reset()).toThrow(/did not reset/);
    expect(performance.now() - started).toBeLessThan(1000);
    await expect(r.worker.query(0)).rejects.toThrow(DeviceWorkerError);
  }, 30_000);

  it('a worker that stops answering: lifecycle calls give up after the timeout', async () => {
    const r = await rig(echo({ spinMs: 5000 }), { timeoutMs: 300 });
    const q = start(r, VERSION_1);
    q.add([{ addr: DATA, len: 4 }], [{ addr: DATA + 256, len: 8 }]);
    r.guest.kick(0);
    await new Promise((resolve) => setTimeout(resolve, 50)); // the worker is now stuck in the device
    const started = performance.now();
    expect(() => r.guest.reset()).toThrow(/did not reset/);
    const took = performance.now() - started;
    expect(took).toBeGreaterThanOrEqual(250);
    expect(took).toBeLessThan(2000);
    expect(r.proxy.error?.message).toMatch(/did not answer within 300 ms/);
    await r.worker.worker.terminate();
  }, 30_000);

  it('a spec the worker cannot build rejects the spawn with the reason', async () => {
    const memory = GuestMemory.create(1 << 20, { shared: true });
    await expect(NodeDeviceWorker.spawn({ kind: 'nonsense' } as never, memory)).rejects.toThrow(
      /unknown device kind "nonsense"/,
    );
    await expect(NodeDeviceWorker.spawn(echo({}, 'missing'), memory)).rejects.toThrow(
      /no function export "missing"/,
    );
    const unshared = GuestMemory.create(1 << 20);
    await expect(NodeDeviceWorker.spawn({ kind: 'rng' }, unshared)).rejects.toThrow(
      /SharedArrayBuffer/,
    );
  }, 30_000);
});
