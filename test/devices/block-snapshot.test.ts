/**
 * virtio-blk snapshots: a corrupt block state is refused naming its field, a changed disk size
 * reaches the driver, and requests under way on the backend's asynchronous calls when the
 * state was saved are completed by the restored device, exactly once, over every ring variant.
 */
import { describe, expect, it } from 'vitest';
import type { AsyncBlockIo, BlockIoDone } from '../../src/devices/block/backend.js';
import { featureBit } from '../../src/devices/device.js';
import {
  BlockDevice,
  MemoryBackend,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_S_OK,
} from '../../src/devices/index.js';
import { isVirtqError, SnapshotError } from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/index.js';
import { silentLogger, VIRTIO_F_VERSION_1 } from '../../src/queue/index.js';
import { INT_CONFIG_CHANGE, MMIO, MmioTransport } from '../../src/transport/mmio.js';
import { type BlockRig, blockRig, diffBytes, pattern, RING_VARIANTS } from './block-rig.js';

// biome-ignore lint/suspicious/noExplicitAny: a saved state under mutation is untyped JSON
type Json = any;

const DISK = 256 << 10;
const SECTORS = DISK / 512;

/**
 * A memory disk whose asynchronous transfers start and then wait until the test lets them
 * end (or forever: a VM saved while they were under way and never resumed).
 */
class HeldBackend extends MemoryBackend {
  readonly held: (() => void)[] = [];
  readonly async: AsyncBlockIo = {
    readv: (offset, bufs, done) => this.hold(done, () => this.move('read', offset, bufs)),
    writev: (offset, bufs, done) => this.hold(done, () => this.move('write', offset, bufs)),
    flush: (done) => this.hold(done, () => {}),
  };

  private hold(done: BlockIoDone, work: () => void): void {
    this.held.push(() => {
      work();
      done(null);
    });
  }

  private move(op: 'read' | 'write', offset: number, bufs: Uint8Array[]): void {
    let at = offset;
    for (const b of bufs) {
      if (op === 'read') this.read(at, b, 0, b.length);
      else this.write(at, b, 0, b.length);
      at += b.length;
    }
  }
}

function heldRig(features: bigint, defer?: (callback: () => void) => void) {
  const backend = new HeldBackend(DISK);
  const r = blockRig({
    backend,
    device: { asyncIo: true, asyncMinBytes: 512, ...(defer === undefined ? {} : { defer }) },
    // The driver waits a loop turn between polls, as for a real asynchronous disk.
    driver: { waiter: { wait: () => new Promise((res) => setTimeout(res, 1)) }, maxWaits: 2000 },
  });
  // FLUSH negotiated: a write-through device would serve writes synchronously.
  r.blk.init(features | featureBit(VIRTIO_BLK_F_FLUSH));
  return { r, backend };
}

/**
 * The VM restarts from a snapshot of itself over the same guest memory, with a copy of the
 * disk that has no asynchronous calls: the old device's transfers never end.
 */
function restart(r: BlockRig): void {
  const state: unknown = JSON.parse(JSON.stringify(r.transport.save()));
  const disk = new MemoryBackend((r.backend as MemoryBackend).bytes.slice());
  // The restored device publishes completions in its own way (the test's `defer` stays behind).
  const { defer: _old, ...options } = r.deviceOptions;
  const device = new BlockDevice({ ...options, backend: disk });
  const transport = new MmioTransport(device, r.memory, { logger: silentLogger });
  transport.restore(state);
  r.bus.moveTo(transport);
  Object.assign(r, { transport, device, backend: disk });
}

describe('virtio-blk: device snapshots', () => {
  it('a corrupted block state is refused, naming the field', () => {
    const r = blockRig();
    r.blk.init(0n);
    const bad = JSON.parse(JSON.stringify(r.transport.save()));
    bad.device.device.stats.bytesRead = -1;
    const fresh = new MmioTransport(
      new BlockDevice({ backend: new MemoryBackend(DISK), queueSize: 64, logger: silentLogger }),
      GuestMemory.create(2 << 20),
      { logger: silentLogger },
    );
    expect(() => fresh.restore(bad)).toThrow(SnapshotError);
    expect(() => fresh.restore(bad)).toThrow(/device\.block\.stats\.bytesRead/);
    bad.device.device = null;
    try {
      fresh.restore(bad);
      expect.unreachable();
    } catch (e) {
      expect(isVirtqError(e, 'SNAPSHOT_INVALID')).toBe(true);
    }
    expect(fresh.status).toBe(0);
  });

  it('restoring over a disk that changed size tells the driver about the new capacity', async () => {
    const r = blockRig();
    r.blk.init(0n);
    await r.blk.write(0, pattern(512, 1));
    const state = JSON.parse(JSON.stringify(r.transport.save()));
    const memory = GuestMemory.create(r.memory.size);
    memory.write(0, r.memory.slice(0, r.memory.size));
    const device = new BlockDevice({ ...r.deviceOptions, backend: new MemoryBackend(DISK * 2) });
    const t = new MmioTransport(device, memory, { logger: silentLogger });
    t.restore(state);
    expect(t.interruptStatus & INT_CONFIG_CHANGE).not.toBe(0);
    expect(device.capacity).toBe(2 * SECTORS);
    expect(device.stats.requests).toBe(1);
  });

  it('a disk that changed size under a driver still negotiating changes the configuration generation', () => {
    const r = blockRig();
    // Features negotiated, capacity read, DRIVER_OK not yet set.
    r.guest.negotiate(featureBit(VIRTIO_F_VERSION_1));
    expect(r.blk.readConfig().capacity).toBe(SECTORS);
    const state = JSON.parse(JSON.stringify(r.transport.save()));
    const generation = r.transport.read(MMIO.CONFIG_GENERATION, 4);
    const same = new MmioTransport(new BlockDevice({ ...r.deviceOptions }), r.memory, {
      logger: silentLogger,
    });
    same.restore(state);
    expect(same.read(MMIO.CONFIG_GENERATION, 4)).toBe(generation);
    const device = new BlockDevice({ ...r.deviceOptions, backend: new MemoryBackend(DISK * 2) });
    const t = new MmioTransport(device, r.memory, { logger: silentLogger });
    t.restore(state);
    expect(t.read(MMIO.CONFIG_GENERATION, 4)).toBe((generation + 1) >>> 0);
    // No interrupt before DRIVER_OK.
    expect(t.interruptStatus).toBe(0);
  });
});

describe('virtio-blk: requests under way at a snapshot', () => {
  for (const v of RING_VARIANTS) {
    it(`${v.name}: the restored device completes each of them once, and then new ones`, async () => {
      const { r, backend } = heldRig(v.features);
      backend.write(64 * 512, pattern(4096, 9), 0, 4096);
      // A write and a read start on the backend and stay under way.
      const write = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(8192, 1) });
      const read = r.blk.enqueue({ type: 'in', sector: 64, sectors: 8 });
      r.blk.notify();
      expect(r.device.inFlight).toBe(2);
      const saved = r.transport.save();
      expect(saved.device?.device).toMatchObject({ inFlight: [{ queue: 0 }, { queue: 0 }] });
      // The restored device serves both requests on its own, with no new kick.
      restart(r);
      expect(r.device.inFlight).toBe(0);
      const [w, rd] = await Promise.all([r.blk.wait(write), r.blk.wait(read)]);
      expect(w.status).toBe(VIRTIO_BLK_S_OK);
      expect(rd.status).toBe(VIRTIO_BLK_S_OK);
      expect(diffBytes(rd.data!, pattern(4096, 9))).toBe('equal');
      const disk = (r.backend as MemoryBackend).bytes;
      expect(diffBytes(disk.subarray(0, 8192), pattern(8192, 1))).toBe('equal');
      expect(r.device.stats.requests).toBe(2);
      // Nothing is completed twice and the device goes on.
      expect(r.device.needsReset).toBe(false);
      expect(await r.blk.read(0, 16)).toEqual(pattern(8192, 1));
      expect(r.device.stats.requests).toBe(3);
    });
  }

  it('a state saved again before the restored device served them still holds them', async () => {
    const { r } = heldRig(0n);
    const write = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 5) });
    r.blk.notify();
    restart(r);
    // Saved again at once (the pass that serves the revived request has not run yet), and
    // restored from that over the same transport: the request is still owed.
    const again = JSON.parse(JSON.stringify(r.transport.save()));
    expect(again.device.device.inFlight).toHaveLength(1);
    r.transport.restore(again);
    expect((await r.blk.wait(write)).status).toBe(VIRTIO_BLK_S_OK);
    expect(r.device.stats.requests).toBe(1);
  });

  for (const v of RING_VARIANTS) {
    it(`${v.name}: a completion written but not yet published at the save is published by the restored device`, async () => {
      // Completions that land in one loop turn are published together in a later one.
      const deferred: (() => void)[] = [];
      const { r, backend } = heldRig(v.features, (cb) => deferred.push(cb));
      const write = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 6) });
      r.blk.notify();
      backend.held.shift()!();
      expect(deferred).toHaveLength(1);
      const saved = r.transport.save();
      expect(saved.device?.device).toMatchObject({ inFlight: [] });
      restart(r);
      expect((await r.blk.wait(write)).status).toBe(VIRTIO_BLK_S_OK);
    });
  }

  it('a request the backend finished after the snapshot is not completed twice by the original', async () => {
    const { r, backend } = heldRig(0n);
    const write = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 2) });
    r.blk.notify();
    const saved = JSON.parse(JSON.stringify(r.transport.save()));
    // The original device goes on: its transfer ends and completes the request there.
    backend.held.shift()!();
    expect((await r.blk.wait(write)).status).toBe(VIRTIO_BLK_S_OK);
    expect(r.transport.save().device?.device).toMatchObject({ inFlight: [] });
    expect(saved.device.device.inFlight).toHaveLength(1);
  });

  it('a request under way on a queue the driver stops using completes nothing there, and is not saved', async () => {
    const { r, backend } = heldRig(0n);
    const write = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 4) });
    r.blk.notify();
    expect(r.device.inFlight).toBe(1);
    r.transport.write(MMIO.QUEUE_SEL, 4, 0);
    r.transport.write(MMIO.QUEUE_READY, 4, 0);
    const used = r.transport.queues[0]!.save();
    expect(r.transport.save().device?.device).toMatchObject({ inFlight: [] });
    // The transfer ends: nothing is written to the stopped ring, and the device is not broken.
    backend.held.shift()!();
    await new Promise((res) => setTimeout(res, 5));
    expect(r.device.inFlight).toBe(0);
    expect(r.device.needsReset).toBe(false);
    expect(r.transport.queues[0]!.save()).toEqual(used);
    expect(write.settled).toBe(false);
    // The state restores.
    restart(r);
    expect(r.transport.read(MMIO.QUEUE_READY, 4)).toBe(0);
  });

  it('a completion written but not yet published when the driver stops the queue breaks nothing', () => {
    const deferred: (() => void)[] = [];
    const { r, backend } = heldRig(0n, (cb) => deferred.push(cb));
    r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 6) });
    r.blk.notify();
    // The transfer ends: its used element is written, its publication waits a loop turn.
    backend.held.shift()!();
    expect(deferred).toHaveLength(1);
    r.transport.write(MMIO.QUEUE_SEL, 4, 0);
    r.transport.write(MMIO.QUEUE_READY, 4, 0);
    const ring = r.transport.queues[0]!.save();
    deferred.shift()!();
    expect(r.device.lastError).toBeNull();
    expect(r.device.needsReset).toBe(false);
    expect(r.transport.queues[0]!.save()).toEqual(ring);
  });

  it('requests revived on a queue the driver stops before they are served are dropped with it', () => {
    const { r } = heldRig(0n);
    r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 5) });
    r.blk.notify();
    restart(r);
    // Before the pass the restore scheduled runs, the driver stops using queue 0.
    r.transport.write(MMIO.QUEUE_SEL, 4, 0);
    r.transport.write(MMIO.QUEUE_READY, 4, 0);
    const again = JSON.parse(JSON.stringify(r.transport.save()));
    expect(again.device.device.inFlight).toEqual([]);
    restart(r);
    expect(r.transport.read(MMIO.QUEUE_READY, 4)).toBe(0);
    expect(r.device.needsReset).toBe(false);
  });

  it('a saved request under way is checked against its queue, and refused naming the field', () => {
    const { r } = heldRig(0n);
    const write = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(4096, 3) });
    r.blk.notify();
    const good = JSON.parse(JSON.stringify(r.transport.save()));
    const fresh = () =>
      new MmioTransport(
        new BlockDevice({ ...r.deviceOptions, backend: new MemoryBackend(DISK) }),
        GuestMemory.create(r.memory.size),
        { logger: silentLogger },
      );
    const cases: [string, (s: Json) => void, RegExp][] = [
      ['head out of range', (s) => (s.device.device.inFlight[0].head = 4000), /inFlight\.0\.head/],
      ['unknown queue', (s) => (s.device.device.inFlight[0].queue = 3), /inFlight\.0\.queue/],
      [
        'a buffer outside guest memory',
        (s) => (s.device.device.inFlight[0].buffers[0] = [1 << 30, 16]),
        /inFlight\.0\.buffers/,
      ],
      [
        'writable before readable',
        (s) => (s.device.device.inFlight[0].writableFrom = 9),
        /inFlight\.0\.writableFrom/,
      ],
      [
        'twice the same head',
        (s) => s.device.device.inFlight.push(s.device.device.inFlight[0]),
        /inFlight\.1\.head/,
      ],
      ['not a list', (s) => (s.device.device.inFlight = 'x'), /device\.block\.inFlight/],
    ];
    for (const [name, mutate, field] of cases) {
      const bad = structuredClone(good);
      mutate(bad);
      const t = fresh();
      expect(() => t.restore(bad), name).toThrow(field);
      expect(t.status, name).toBe(0);
    }
    // An inactive device has nothing under way.
    const inactive = structuredClone(good);
    inactive.status = 0;
    expect(() => fresh().restore(inactive)).toThrow(SnapshotError);
    // The good state restores, and the request is served.
    const t = fresh();
    t.restore(good);
    expect(write.settled).toBe(false);
  });
});
