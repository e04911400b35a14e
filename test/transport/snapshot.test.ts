/**
 * Transport + device snapshots (issue 10 item 3): every field validated, a SnapshotError naming
 * the first bad one, and restore all or nothing: a refused state leaves save() as it was and the
 * device serving; an accepted one is a state the transport could reach and a clean driver works
 * after a reset.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  BlockDevice,
  ConsoleDevice,
  ConsolePipe,
  createNetPair,
  featureBit,
  GuestAllocator,
  GuestMemory,
  type HostTuning,
  isVirtqError,
  MemoryBackend,
  MMIO,
  MmioGuestDriver,
  MmioTransport,
  NetDevice,
  RngDevice,
  SnapshotError,
  STATUS_ACKNOWLEDGE,
  STATUS_DRIVER,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  VIRTIO_ID_BLOCK,
  VIRTIO_ID_RNG,
  type VirtioDevice,
  type WorkerDeviceProxy,
} from '../../src/index.js';
import type { DeviceWorkerSpec } from '../../src/node/device-factories.js';
import { NodeDeviceWorker } from '../../src/node/index.js';

// biome-ignore lint/suspicious/noExplicitAny: a saved state under mutation is untyped JSON
type Json = any;

type Kind = 'rng' | 'block' | 'console' | 'net';
type Format = 'split' | 'packed';
const KINDS: readonly Kind[] = ['rng', 'block', 'console', 'net'];
const FORMATS: readonly Format[] = ['split', 'packed'];

const MEM = 1 << 20;
/** Buffers the test driver's requests use (above the allocator's range). */
const DATA = 0x80000;

function makeDevice(kind: Kind): VirtioDevice {
  switch (kind) {
    case 'rng':
      return new RngDevice({ queueSize: 16 });
    case 'block':
      return new BlockDevice({ backend: new MemoryBackend(64 * 1024), queueSize: 16 });
    case 'console':
      return new ConsoleDevice({
        backend: new ConsolePipe(),
        queueSize: 16,
        size: { cols: 80, rows: 25 },
      });
    case 'net':
      return new NetDevice({
        backend: createNetPair()[0],
        queueSize: 16,
        mac: '52:54:00:12:34:56',
      });
  }
}

interface Rig {
  kind: Kind;
  format: Format;
  memory: GuestMemory;
  device: VirtioDevice;
  t: MmioTransport;
  guest: MmioGuestDriver;
}

function rig(kind: Kind, format: Format): Rig {
  const memory = GuestMemory.create(MEM);
  const device = makeDevice(kind);
  const t = new MmioTransport(device, memory, { logger: silentLogger });
  const guest = new MmioGuestDriver(t, memory, new GuestAllocator(memory, 0x1000, DATA));
  return { kind, format, memory, device, t, guest };
}

function wanted(format: Format): bigint {
  return (
    featureBit(VIRTIO_F_VERSION_1) |
    featureBit(VIRTIO_F_EVENT_IDX) |
    featureBit(VIRTIO_F_INDIRECT_DESC) |
    (format === 'packed' ? featureBit(VIRTIO_F_RING_PACKED) : 0n)
  );
}

/** Resets the device, negotiates, sets up every queue; `start` sets DRIVER_OK. */
function bringUp(r: Rig, start = true): void {
  r.guest.negotiate(wanted(r.format));
  for (let i = 0; i < r.device.queueMaxSizes.length; i++) r.guest.setupQueue(i, 8);
  if (start) r.guest.start();
}

/**
 * One well-formed request on the device's request (or transmit) queue; true when the device
 * completed it as it should.
 */
function serveOne(r: Rig): boolean {
  const m = r.memory;
  let index = 0;
  let readable: { addr: number; len: number }[] = [];
  let writable: { addr: number; len: number }[] = [];
  switch (r.kind) {
    case 'rng':
      writable = [{ addr: DATA, len: 32 }];
      break;
    case 'block':
      m.write(DATA, new Uint8Array(16)); // VIRTIO_BLK_T_IN, sector 0
      m.write(DATA + 0x400, Uint8Array.of(0xff));
      readable = [{ addr: DATA, len: 16 }];
      writable = [
        { addr: DATA + 0x100, len: 512 },
        { addr: DATA + 0x400, len: 1 },
      ];
      break;
    case 'console':
      index = 1;
      m.write(DATA, new TextEncoder().encode('hello'));
      readable = [{ addr: DATA, len: 5 }];
      break;
    case 'net':
      index = 1;
      m.write(DATA, new Uint8Array(12 + 60)); // a plain virtio-net header, then a frame
      readable = [{ addr: DATA, len: 12 + 60 }];
      break;
  }
  const q = r.guest.queues[index];
  if (q === undefined) return false;
  while (q.popUsed() >= 0) {}
  q.add(readable, writable);
  r.guest.kick(index);
  r.guest.ackInterrupt();
  if (q.popUsed() < 0) return false;
  if (r.kind === 'rng') return q.lastUsedLen === 32;
  if (r.kind === 'block') return q.lastUsedLen === 513 && m.slice(DATA + 0x400, 1)[0] === 0;
  return true;
}

function clone<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}

/** A live rig that has served one request, and its saved state. */
function liveRig(kind: Kind, format: Format) {
  const r = rig(kind, format);
  bringUp(r);
  expect(serveOne(r)).toBe(true);
  return r;
}

const DEVICE_FIELD: Record<Kind, [string, string]> = {
  rng: ['device.device.bytesServed', 'mmio.device.rng.bytesServed'],
  block: ['device.device.stats.requests', 'mmio.device.block.stats.requests'],
  console: ['device.device.stats.bytesIn', 'mmio.device.console.stats.bytesIn'],
  net: ['device.device.stats.txFrames', 'mmio.device.net.stats.txFrames'],
};

type Probe = [name: string, mutate: (s: Json, r: Rig) => void, field: string];

function setPath(obj: Json, path: string, value: unknown): void {
  const keys = path.split('.');
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k];
  o[keys[keys.length - 1]!] = value;
}

const PROBES: Probe[] = [
  ['transport version 99', (s) => setPath(s, 'version', 99), 'mmio.version'],
  ['device version 99', (s) => setPath(s, 'device.version', 99), 'mmio.device.version'],
  [
    'a device type that is not the device’s',
    (s, r) => setPath(s, 'device.deviceType', r.kind === 'block' ? VIRTIO_ID_RNG : VIRTIO_ID_BLOCK),
    'mmio.device.deviceType',
  ],
  ['device features "zz"', (s) => setPath(s, 'device.features', 'zz'), 'mmio.device.features'],
  ['driver features "zz"', (s) => setPath(s, 'driverFeatures', 'zz'), 'mmio.driverFeatures'],
  [
    'driver features never offered',
    (s) =>
      setPath(s, 'driverFeatures', (BigInt(`0x${s.driverFeatures}`) | (1n << 60n)).toString(16)),
    'mmio.driverFeatures',
  ],
  [
    'device features never offered',
    (s) =>
      setPath(s, 'device.features', (BigInt(`0x${s.device.features}`) | (1n << 60n)).toString(16)),
    'mmio.device.features',
  ],
  [
    'device features that differ from the transport’s',
    (s) =>
      setPath(s, 'device.features', (BigInt(`0x${s.device.features}`) & ~(1n << 29n)).toString(16)),
    'mmio.device.features',
  ],
  ['needsReset "yes"', (s) => setPath(s, 'device.needsReset', 'yes'), 'mmio.device.needsReset'],
  [
    'configGeneration "x"',
    (s) => setPath(s, 'device.configGeneration', 'x'),
    'mmio.device.configGeneration',
  ],
  [
    'configGeneration past a u32',
    (s) => setPath(s, 'device.configGeneration', 2 ** 32),
    'mmio.device.configGeneration',
  ],
  ['active 7', (s) => setPath(s, 'device.active', 7), 'mmio.device.active'],
  [
    'active false on a live device',
    (s) => setPath(s, 'device.active', false),
    'mmio.device.active',
  ],
  ['device queues "garbage"', (s) => setPath(s, 'device.queues', 'garbage'), 'mmio.device.queues'],
  ['transport queues "garbage"', (s) => setPath(s, 'queues', 'garbage'), 'mmio.queues'],
  ['one device queue state short', (s) => s.device.queues.pop(), 'mmio.device.queues'],
  ['one transport queue state short', (s) => s.queues.pop(), 'mmio.queues'],
  [
    'a device queue state that is not valid',
    (s) => setPath(s, 'device.queues.0.size', 'x'),
    // the ring format's reader names itself
    'mmio.device.queues.0.FORMAT.size',
  ],
  [
    'a device queue state unlike the transport’s',
    (s) => setPath(s, 'device.queues.0.nextAvail', (s.device.queues[0].nextAvail + 1) % 8),
    'mmio.device.queues.0',
  ],
  [
    'a ready queue left uninitialised on a live device that needs no reset',
    (s) => {
      s.queues[0].active = false;
      s.device.queues[0].active = false;
    },
    'mmio.queues.0.active',
  ],
  [
    'DRIVER_OK without FEATURES_OK',
    (s) => setPath(s, 'status', STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK),
    'mmio.status',
  ],
  [
    'DEVICE_NEEDS_RESET in the saved status',
    (s) => setPath(s, 'status', s.status | 64),
    'mmio.status',
  ],
  [
    'a status bit virtio does not define',
    (s) => setPath(s, 'status', s.status | 16),
    'mmio.status',
  ],
  ['packed that the features do not say', (s) => setPath(s, 'packed', !s.packed), 'mmio.packed'],
  [
    'an interrupt on a device that is not live',
    (s) => {
      s.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
      s.interruptStatus = 1;
    },
    'mmio.interruptStatus',
  ],
  ['the transport’s device state missing', (s) => setPath(s, 'device', null), 'mmio.device'],
];

describe('transport + device snapshots: each probe is refused, naming the field', () => {
  for (const kind of KINDS) {
    for (const format of FORMATS) {
      it(`${kind} over a ${format} ring`, () => {
        const r = liveRig(kind, format);
        const probes: Probe[] = [
          ...PROBES,
          [
            'a negative counter',
            (s) => setPath(s, DEVICE_FIELD[kind][0], -1),
            DEVICE_FIELD[kind][1],
          ],
        ];
        for (const [name, mutate, field] of probes) {
          const before = r.t.save();
          const statusBefore = r.t.read(MMIO.STATUS, 4);
          const bad = clone(before) as Json;
          mutate(bad, r);
          let err: unknown = null;
          try {
            r.t.restore(bad);
          } catch (e) {
            err = e;
          }
          expect(err, name).toBeInstanceOf(SnapshotError);
          expect((err as SnapshotError).field, name).toBe(field.replace('FORMAT', format));
          expect(r.t.save(), name).toEqual(before);
          expect(r.t.read(MMIO.STATUS, 4), name).toBe(statusBefore);
          expect(serveOne(r), name).toBe(true);
        }
      });
    }
  }
});

describe('transport + device snapshots: round trips', () => {
  for (const kind of KINDS) {
    for (const format of FORMATS) {
      it(`${kind} over a ${format} ring, live and mid-negotiation`, () => {
        const a = liveRig(kind, format);
        const saved = clone(a.t.save());
        const b = rig(kind, format);
        b.memory.write(0, a.memory.slice(0, MEM));
        b.t.restore(saved);
        expect(b.t.save()).toEqual(saved);
        expect(b.t.read(MMIO.STATUS, 4)).toBe(a.t.read(MMIO.STATUS, 4));
        // Restoring its own state again changes nothing.
        b.t.restore(clone(b.t.save()));
        expect(b.t.save()).toEqual(saved);
        bringUp(b);
        expect(serveOne(b)).toBe(true);

        // Between FEATURES_OK and DRIVER_OK: queues configured, none initialised.
        const c = rig(kind, format);
        bringUp(c, false);
        const mid = clone(c.t.save());
        const d = rig(kind, format);
        d.t.restore(mid);
        expect(d.t.save()).toEqual(mid);
        expect(d.device.isActive).toBe(false);
      });
    }
  }
});

describe('transport + device snapshots: a device failed at DRIVER_OK', () => {
  for (const format of FORMATS) {
    it(`round-trips with DEVICE_NEEDS_RESET and a queue left uninitialised (${format})`, () => {
      const a = rig('block', format);
      a.guest.negotiate(wanted(format));
      a.guest.setupQueue(0, 8);
      // Move the descriptor table outside guest memory: initialising it at DRIVER_OK fails.
      a.t.write(MMIO.QUEUE_SEL, 4, 0);
      a.t.write(MMIO.QUEUE_READY, 4, 0);
      a.t.write(MMIO.QUEUE_DESC_HIGH, 4, 1);
      a.t.write(MMIO.QUEUE_READY, 4, 1);
      a.guest.start();
      expect(a.t.read(MMIO.STATUS, 4) & 64).toBe(64);
      const saved = clone(a.t.save());
      const b = rig('block', format);
      b.t.restore(saved);
      expect(b.t.save()).toEqual(saved);
      expect(b.t.read(MMIO.STATUS, 4)).toBe(a.t.read(MMIO.STATUS, 4));
      // Without the device's failure the same registers are not a reachable state.
      const bad = clone(saved) as Json;
      bad.device.needsReset = false;
      expect(() => b.t.restore(bad)).toThrow(/mmio\.queues\.0\.active/);
      expect(b.t.save()).toEqual(saved);
    });
  }
});

// ---- the property over random mutations ----

const STATUS_STEPS = [0, 1, 3, 11, 15];

/**
 * An oracle, written apart from the validators: what a state the transport reached by register
 * writes looks like. Checked on every state a restore accepted (as save() reports it).
 */
function reachable(s: Json, device: VirtioDevice): string | null {
  const status = s.status as number;
  if (!STATUS_STEPS.includes(status & ~128)) return `status ${status}`;
  const f = BigInt(`0x${s.driverFeatures}`);
  const featuresOk = (status & STATUS_FEATURES_OK) !== 0;
  const live = (status & STATUS_DRIVER_OK) !== 0;
  if (featuresOk && (f & ~device.offeredFeatures) !== 0n) return 'features not offered';
  if (s.packed !== (featuresOk && (f & featureBit(VIRTIO_F_RING_PACKED)) !== 0n)) return 'packed';
  if (s.queues.length !== device.queueMaxSizes.length) return 'queue count';
  for (const q of s.queues) {
    if (q.active && !live) return 'active queue before DRIVER_OK';
    if (live && q.ready && !q.active && !s.device.needsReset) return 'ready queue not initialised';
    if (!featuresOk && (q.ready || q.size !== q.maxSize)) return 'queue set before FEATURES_OK';
  }
  if (s.interruptStatus !== 0 && !live) return 'interrupt while not live';
  const d = s.device;
  if (d.active !== live) return 'device active';
  if (d.features !== (live ? s.driverFeatures : '0')) return 'device features';
  if (d.needsReset && !live) return 'needsReset while inactive';
  if (!Number.isSafeInteger(d.configGeneration) || d.configGeneration < 0) return 'generation';
  if (d.queues.length !== (live ? s.queues.length : 0)) return 'device queue count';
  // Counters and the like: every number of the device's own state is a non-negative integer.
  const bad: string[] = [];
  const walk = (v: unknown, path: string): void => {
    if (typeof v === 'number' && !(Number.isSafeInteger(v) && v >= 0)) bad.push(path);
    else if (typeof v === 'object' && v !== null)
      for (const [k, x] of Object.entries(v)) walk(x, `${path}.${k}`);
  };
  walk(d.device, 'device.device');
  return bad.length > 0 ? `device state ${bad[0]}` : null;
}

/** Every path to a value in a JSON tree (objects and arrays included). */
function paths(v: unknown, prefix: string[] = [], out: string[][] = []): string[][] {
  if (typeof v === 'object' && v !== null) {
    for (const [k, x] of Object.entries(v)) {
      out.push([...prefix, k]);
      paths(x, [...prefix, k], out);
    }
  }
  return out;
}

type Mutation = { scope: number; pick: number; how: number; value: unknown; bit: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.record({
  scope: fc.nat(2),
  pick: fc.nat(),
  how: fc.nat(7),
  bit: fc.nat(63),
  value: fc.oneof(
    fc.constantFrom<unknown>(
      -1,
      0,
      1,
      2,
      3,
      7,
      8,
      15,
      64,
      128,
      143,
      255,
      0xffff,
      0x10000,
      2 ** 32,
      2 ** 53,
      1.5,
      'zz',
      '0',
      '1',
      'ffffffffffffffff',
      'garbage',
      true,
      false,
      null,
      [],
      {},
    ),
    fc.integer({ min: -2, max: 70000 }),
  ),
});

function mutate(state: Json, m: Mutation): void {
  // A third of the mutations hit the transport's and the device's own fields (where the
  // cross-field rules live), a third the device-specific state, a third anything (mostly the
  // many queue fields).
  const all = paths(state);
  const top = all.filter((p) => p.length === 1 || (p.length === 2 && p[0] === 'device'));
  const own = all.filter((p) => p.length > 2 && p[0] === 'device' && p[1] === 'device');
  const from = m.scope === 1 ? top : m.scope === 2 && own.length > 0 ? own : all;
  const path = from[m.pick % from.length]!;
  let parent: Json = state;
  for (const k of path.slice(0, -1)) parent = parent[k];
  const key = path[path.length - 1]!;
  const cur = parent[key];
  switch (m.how) {
    case 0:
      if (Array.isArray(parent)) parent.splice(Number(key), 1);
      else delete parent[key];
      return;
    case 1:
      if (typeof cur === 'number') parent[key] = cur + 1;
      else if (typeof cur === 'boolean') parent[key] = !cur;
      else parent[key] = m.value;
      return;
    case 2:
      if (typeof cur === 'number') parent[key] = cur - 1;
      else if (typeof cur === 'string' && /^[0-9a-f]+$/.test(cur))
        parent[key] = (BigInt(`0x${cur}`) ^ (1n << BigInt(m.bit))).toString(16);
      else parent[key] = m.value;
      return;
    case 3:
      if (typeof cur === 'number') parent[key] = cur ^ (1 << (m.bit % 31));
      else parent[key] = m.value;
      return;
    case 4:
      if (Array.isArray(cur) && cur.length > 0) cur.push(clone(cur[0]));
      else parent[key] = m.value;
      return;
    default:
      parent[key] = m.value;
  }
}

/** Phases the base state is taken in. */
type Phase = 'driver' | 'features' | 'live' | 'served';

function baseRig(kind: Kind, format: Format, phase: Phase): Rig {
  const r = rig(kind, format);
  if (phase === 'driver') {
    r.t.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE);
    r.t.write(MMIO.STATUS, 4, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  } else {
    bringUp(r, phase !== 'features');
    if (phase === 'served') serveOne(r);
  }
  return r;
}

describe('transport + device snapshots: random mutations are refused unchanged, or safe', () => {
  for (const kind of KINDS) {
    for (const format of FORMATS) {
      it(`${kind} over a ${format} ring`, () => {
        fc.assert(
          fc.property(
            fc.constantFrom<Phase>('driver', 'features', 'live', 'served', 'served'),
            fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
            (phase, mutations) => {
              const r = baseRig(kind, format, phase);
              const before = r.t.save();
              const bad = clone(before) as Json;
              for (const m of mutations) mutate(bad, m);
              try {
                r.t.restore(bad);
              } catch (e) {
                if (!(e instanceof SnapshotError)) throw e;
                expect(r.t.save()).toEqual(before);
                if (phase === 'served' || phase === 'live') expect(serveOne(r)).toBe(true);
                return;
              }
              try {
                const now = r.t.save();
                const why = reachable(clone(now) as Json, r.device);
                if (why !== null) throw new Error(`accepted an unreachable state: ${why}`);
                // A restored device runs what its rings hold, and restores its own state.
                for (let i = 0; i < r.device.queueMaxSizes.length; i++)
                  r.t.write(MMIO.QUEUE_NOTIFY, 4, i);
                r.t.restore(clone(r.t.save()));
              } catch (e) {
                if (!isVirtqError(e) || e instanceof SnapshotError) throw e;
              }
              bringUp(r);
              expect(serveOne(r)).toBe(true);
            },
          ),
          { numRuns: 300 },
        );
      });
    }
  }
});

// ---- a device that runs in a worker is part of its transport's snapshot ----

const workers: NodeDeviceWorker[] = [];
afterEach(async () => {
  await Promise.all(workers.splice(0).map((w) => w.close()));
});

async function workerRig(kind: 'rng' | 'block' | 'console', format: Format): Promise<Rig> {
  const memory = GuestMemory.create(MEM, { shared: true });
  const spec: DeviceWorkerSpec =
    kind === 'rng'
      ? { kind: 'rng', queueSize: 16 }
      : kind === 'block'
        ? { kind: 'block', image: new SharedArrayBuffer(64 * 1024), queueSize: 16 }
        : { kind: 'console', queueSize: 16, cols: 80, rows: 25 };
  // The rng's worker gets a tiny mailbox, so that activation and saved states cross it in
  // pieces.
  const host = kind === 'rng' ? { logging: 'silent', mailboxBytes: 64 } : { logging: 'silent' };
  const worker = await NodeDeviceWorker.spawn(spec, memory, {
    timeoutMs: 3000,
    host: host as HostTuning,
  });
  workers.push(worker);
  const device = worker.devices[0]!;
  const t = new MmioTransport(device, memory, { logger: silentLogger });
  const guest = new MmioGuestDriver(t, memory, new GuestAllocator(memory, 0x1000, DATA));
  return { kind, format, memory, device, t, guest };
}

/** {@link serveOne} for a device in a worker: waits (bounded) for the used buffer. */
async function serveOneAsync(r: Rig): Promise<boolean> {
  const proxy = r.device as WorkerDeviceProxy;
  const q = r.guest.queues[r.kind === 'console' ? 1 : 0]!;
  // serveOne looks for the answer at once; a worker gives it a little later.
  if (serveOne(r)) return true;
  const deadline = performance.now() + 5000;
  while (performance.now() < deadline) {
    await proxy.waiter(50).wait();
    r.guest.ackInterrupt();
    if (q.popUsed() >= 0) {
      if (r.kind === 'rng') return q.lastUsedLen === 32;
      if (r.kind === 'block')
        return q.lastUsedLen === 513 && r.memory.slice(DATA + 0x400, 1)[0] === 0;
      return true;
    }
  }
  return false;
}

describe('transport + device snapshots: a device in a worker', () => {
  for (const kind of ['rng', 'block', 'console'] as const) {
    for (const format of FORMATS) {
      it(`${kind} over a ${format} ring: saved, refused unchanged, restored elsewhere`, async () => {
        const a = await workerRig(kind, format);
        bringUp(a);
        expect(await serveOneAsync(a)).toBe(true);
        const saved = clone(a.t.save()) as Json;
        // Guest memory as it was when the state was saved (a restored device serves whatever
        // the driver made available after that, so the copy must be of the same moment; slice
        // is a view).
        const savedMemory = a.memory.slice(0, MEM).slice();
        if (kind === 'rng') expect(JSON.stringify(saved.device).length).toBeGreaterThan(64 * 4);
        expect(saved.device).not.toBeNull();
        expect(saved.device.active).toBe(true);
        // The worker's live queues, not the transport's idle ones.
        expect(saved.queues[kind === 'console' ? 1 : 0].nextUsed).not.toBe(0);
        const served = kind === 'rng' ? saved.device.device.requestsServed : null;
        if (served !== null) expect(served).toBe(1);

        const [path, field] = DEVICE_FIELD[kind as Kind];
        const bad = clone(saved);
        setPath(bad, path, -1);
        let err: unknown = null;
        try {
          a.t.restore(bad);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(SnapshotError);
        expect((err as SnapshotError).field).toBe(field);
        expect(a.t.save()).toEqual(saved);
        expect(await serveOneAsync(a)).toBe(true);

        const b = await workerRig(kind, format);
        b.memory.write(0, savedMemory);
        b.t.restore(saved);
        const back = b.t.save();
        expect(back).toEqual(saved);
        bringUp(b);
        expect(await serveOneAsync(b)).toBe(true);
      });
    }
  }
});
