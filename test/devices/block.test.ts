import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { AsyncBlockIo, BlockIoDone } from '../../src/devices/block/backend.js';
import {
  featureBit,
  STATUS_DEVICE_NEEDS_RESET,
  STATUS_DRIVER_OK,
} from '../../src/devices/device.js';
import {
  BLK_CONFIG,
  BlockDevice,
  MemoryBackend,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_ID_BLOCK,
} from '../../src/devices/index.js';
import {
  BlockRequestAbortedError,
  BlockStatusError,
  type BlockTicket,
} from '../../src/driver/devices/block-request.js';
import { FeaturesRefusedError } from '../../src/driver/mmio.js';
import { GuestMemory } from '../../src/memory/index.js';
import { FileBackend } from '../../src/node/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { INT_CONFIG_CHANGE, MMIO, MmioTransport } from '../../src/transport/mmio.js';
import {
  type BlockRig,
  blockRig,
  diffBytes,
  FlakyBackend,
  migrate,
  pattern,
  RING_VARIANTS,
} from './block-rig.js';

const F = featureBit;
/** Every block feature a driver could want. */
const ALL_BLK =
  F(VIRTIO_BLK_F_SIZE_MAX) |
  F(VIRTIO_BLK_F_SEG_MAX) |
  F(VIRTIO_BLK_F_RO) |
  F(VIRTIO_BLK_F_BLK_SIZE) |
  F(VIRTIO_BLK_F_FLUSH) |
  F(VIRTIO_BLK_F_TOPOLOGY) |
  F(VIRTIO_BLK_F_MQ) |
  F(VIRTIO_BLK_F_DISCARD) |
  F(VIRTIO_BLK_F_WRITE_ZEROES);
const DISK = 256 << 10;
const SECTORS = DISK / 512;

function u8(...xs: number[]): Uint8Array {
  return Uint8Array.from(xs);
}

/** A request header (type, reserved, sector) as bytes. */
function header(type: number, sector: bigint | number = 0): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return b;
}

/**
 * Puts a hand-built chain on queue 0: readable buffers with the given bytes, writable buffers
 * of the given lengths (filled with 0xee). Returns the writable buffers' addresses.
 */
function handChain(
  r: BlockRig,
  readable: Uint8Array[],
  writable: number[],
): { id: number; out: number[] } {
  const a = r.guest.alloc;
  const rd = readable.map((bytes) => {
    const addr = a.alloc(Math.max(1, bytes.length));
    r.memory.write(addr, bytes);
    return { addr, len: bytes.length };
  });
  const wr = writable.map((len) => {
    const addr = a.alloc(Math.max(1, len));
    r.memory.fill(addr, len, 0xee);
    return { addr, len };
  });
  const id = r.blk.queue(0).add(rd, wr);
  return { id, out: wr.map((w) => w.addr) };
}

/** Kicks queue 0 and collects one used entry. */
function collect(r: BlockRig): { id: number; len: number } {
  r.guest.kick(0);
  r.guest.ackInterrupt();
  const q = r.blk.queue(0);
  const id = q.popUsed();
  return { id, len: q.lastUsedLen };
}

describe('virtio-blk: configuration and features (§5.2.3, §5.2.4)', () => {
  it('shows the guest capacity, limits, topology and queue count', () => {
    const r = blockRig({
      diskBytes: DISK + 300, // a partial last sector is not exposed
      device: {
        numQueues: 3,
        blockSize: 4096,
        sizeMax: 65536,
        segMax: 30,
        topology: { physicalBlockExp: 3, alignmentOffset: 1, minIoSize: 8, optIoSize: 256 },
        maxDiscardSectors: 2048,
        maxDiscardSegments: 4,
        discardSectorAlignment: 8,
        maxWriteZeroesSectors: 4096,
        maxWriteZeroesSegments: 2,
      },
    });
    expect(r.guest.probe()).toBe(VIRTIO_ID_BLOCK);
    const f = r.blk.init(ALL_BLK);
    expect(f & F(VIRTIO_BLK_F_RO)).toBe(0n);
    expect(r.blk.config).toEqual({
      capacity: SECTORS,
      readOnly: false,
      sizeMax: 65536,
      segMax: 30,
      blkSize: 4096,
      topology: { physicalBlockExp: 3, alignmentOffset: 1, minIoSize: 8, optIoSize: 256 },
      numQueues: 3,
      discard: { maxSectors: 2048, maxSegments: 4, sectorAlignment: 8 },
      writeZeroes: { maxSectors: 4096, maxSegments: 2, mayUnmap: false },
    });
    expect(r.blk.numQueues).toBe(3);
    // §5.2.5: padding bytes are zero; writeback is not offered (no CONFIG_WCE).
    expect(r.guest.readConfig(BLK_CONFIG.WRITEBACK, 1)).toBe(0);
    expect(r.guest.readConfig(BLK_CONFIG.WRITEBACK + 1, 1)).toBe(0);
    expect(r.guest.readConfig(BLK_CONFIG.WRITE_ZEROES_MAY_UNMAP + 1, 2)).toBe(0);
    // The configuration space is read-only.
    r.guest.writeConfig(BLK_CONFIG.CAPACITY, 4, 7);
    expect(r.guest.readConfig(BLK_CONFIG.CAPACITY, 4)).toBe(SECTORS);
  });

  it('offers a seg_max that fits a 128-entry ring whatever the maximum queue size', () => {
    // A front-end may set up rings smaller than the maximum (QEMU's vhost-user-blk uses 128 by
    // default), and §2.7.5.3.1 bounds every chain, indirect tables included, by the ring size.
    const big = blockRig({ device: { queueSize: 1024 } });
    big.blk.init(ALL_BLK);
    expect(big.blk.config?.segMax).toBe(126);
    const small = blockRig({ device: { queueSize: 64 } });
    small.blk.init(ALL_BLK);
    expect(small.blk.config?.segMax).toBe(62);
  });

  it('offers only what the backend supports', () => {
    const plain = blockRig({ memoryBackend: { flush: false, discard: false, writeZeroes: false } });
    const offered = plain.guest.deviceFeatures();
    for (const bit of [
      VIRTIO_BLK_F_FLUSH,
      VIRTIO_BLK_F_DISCARD,
      VIRTIO_BLK_F_WRITE_ZEROES,
      VIRTIO_BLK_F_RO,
      VIRTIO_BLK_F_MQ,
      VIRTIO_BLK_F_SIZE_MAX,
      VIRTIO_BLK_F_TOPOLOGY,
    ]) {
      expect(offered & F(bit)).toBe(0n);
    }
    for (const bit of [
      VIRTIO_BLK_F_SEG_MAX,
      VIRTIO_BLK_F_BLK_SIZE,
      VIRTIO_F_VERSION_1,
      VIRTIO_F_RING_PACKED,
      VIRTIO_F_EVENT_IDX,
      VIRTIO_F_INDIRECT_DESC,
    ]) {
      expect(offered & F(bit)).not.toBe(0n);
    }
    const full = blockRig();
    const all = full.guest.deviceFeatures();
    for (const bit of [VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES])
      expect(all & F(bit)).not.toBe(0n);
    const ro = blockRig({ memoryBackend: { readOnly: true } });
    const rof = ro.guest.deviceFeatures();
    expect(rof & F(VIRTIO_BLK_F_RO)).not.toBe(0n);
    expect(rof & (F(VIRTIO_BLK_F_DISCARD) | F(VIRTIO_BLK_F_WRITE_ZEROES))).toBe(0n);
  });

  it('accepts any subset of the offer and refuses features it did not offer', () => {
    const r = blockRig();
    expect(r.blk.init(0n)).toBe(F(VIRTIO_F_VERSION_1));
    expect(r.guest.status & STATUS_DRIVER_OK).not.toBe(0);
    // MQ is not offered by a single-queue device; RO not by a writable one.
    expect(() => r.guest.negotiate(0n, F(VIRTIO_F_VERSION_1) | F(VIRTIO_BLK_F_MQ))).toThrow(
      FeaturesRefusedError,
    );
    expect(() => r.guest.negotiate(0n, F(VIRTIO_F_VERSION_1) | F(VIRTIO_BLK_F_RO))).toThrow(
      FeaturesRefusedError,
    );
    // §6.1: no legacy interface.
    expect(() => r.guest.negotiate(0n, F(VIRTIO_BLK_F_FLUSH))).toThrow(FeaturesRefusedError);
    // After a refusal, a clean initialisation works.
    r.blk.init(F(VIRTIO_BLK_F_FLUSH));
    expect(r.blk.features).toBe(F(VIRTIO_F_VERSION_1) | F(VIRTIO_BLK_F_FLUSH));
  });

  it('rejects impossible device options with RangeError', () => {
    const backend = new MemoryBackend(4096);
    expect(() => new BlockDevice({ backend, id: 'x'.repeat(21) })).toThrow(RangeError);
    expect(() => new BlockDevice({ backend, id: 'é' })).toThrow(RangeError);
    expect(() => new BlockDevice({ backend, blockSize: 1000 })).toThrow(RangeError);
    expect(() => new BlockDevice({ backend, numQueues: 0 })).toThrow(RangeError);
    expect(() => new BlockDevice({ backend, maxDiscardSegments: 0 })).toThrow(RangeError);
    expect(() => new MemoryBackend(-1)).toThrow(RangeError);
  });

  it('reports a capacity change with a configuration interrupt (§5.2.6.2)', async () => {
    const r = blockRig();
    r.blk.init(0n);
    const gen = r.guest.bus.read(MMIO.CONFIG_GENERATION, 4);
    await expect(r.blk.read(SECTORS, 1)).rejects.toMatchObject({ status: VIRTIO_BLK_S_IOERR });
    (r.backend as MemoryBackend).resize(DISK * 2);
    expect(r.device.updateCapacity()).toBe(true);
    expect(r.device.updateCapacity()).toBe(false);
    expect(r.transport.interruptStatus & INT_CONFIG_CHANGE).not.toBe(0);
    expect(r.guest.bus.read(MMIO.CONFIG_GENERATION, 4)).not.toBe(gen);
    // The driver re-reads the configuration when it sees the interrupt.
    expect(r.blk.config?.capacity).toBe(SECTORS);
    r.blk.poll();
    expect(r.blk.config?.capacity).toBe(2 * SECTORS);
    expect(await r.blk.read(SECTORS, 1)).toEqual(new Uint8Array(512));
  });
});

describe.each(RING_VARIANTS)('virtio-blk over $name', ({ features }) => {
  const wanted =
    features | F(VIRTIO_BLK_F_FLUSH) | F(VIRTIO_BLK_F_DISCARD) | F(VIRTIO_BLK_F_WRITE_ZEROES);

  it('serves IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES with OK and the right used lengths', async () => {
    const r = blockRig({ device: { id: 'virtq-disk-0001' }, driver: { segmentBytes: 1536 } });
    r.blk.init(wanted);
    const backend = r.backend as MemoryBackend;
    const data = pattern(8192, 7);
    const w = await r.blk.submit({ type: 'out', sector: 100, data });
    expect(w).toMatchObject({ status: VIRTIO_BLK_S_OK, usedLen: 1 });
    expect(backend.bytes.subarray(100 * 512, 100 * 512 + 8192)).toEqual(data);
    const rd = await r.blk.submit({ type: 'in', sector: 100, sectors: 16 });
    expect(rd.status).toBe(VIRTIO_BLK_S_OK);
    expect(rd.usedLen).toBe(8192 + 1);
    expect(rd.data).toEqual(data);
    const flushes = backend.flushes;
    expect(await r.blk.submit({ type: 'flush' })).toMatchObject({
      status: VIRTIO_BLK_S_OK,
      usedLen: 1,
    });
    expect(backend.flushes).toBe(flushes + 1);
    const id = await r.blk.submit({ type: 'get-id' });
    expect(id.usedLen).toBe(21);
    expect(await r.blk.getId()).toBe('virtq-disk-0001');
    // Two segments in one discard; a write-zeroes with and without unmap.
    await r.blk.submit({
      type: 'discard',
      segments: [
        { sector: 100, sectors: 2 },
        { sector: 110, sectors: 1 },
      ],
    });
    await r.blk.writeZeroes(104, 2, true);
    await r.blk.writeZeroes(108, 1, false);
    const expected = data.slice();
    for (const [s, n] of [
      [0, 2],
      [10, 1],
      [4, 2],
      [8, 1],
    ] as const) {
      expected.fill(0, s * 512, (s + n) * 512);
    }
    expect(await r.blk.read(100, 16)).toEqual(expected);
    // A zero-length read at the end of the disk is in range.
    expect(await r.blk.submit({ type: 'in', sector: SECTORS, sectors: 0 })).toMatchObject({
      status: VIRTIO_BLK_S_OK,
      usedLen: 1,
    });
    expect(r.device.needsReset).toBe(false);
  });

  it('answers IOERR for out-of-range, malformed and failed requests, and UNSUPP for unknown ones', async () => {
    const flaky = new FlakyBackend(new MemoryBackend(DISK));
    const r = blockRig({
      backend: flaky,
      device: { maxDiscardSegments: 2, maxWriteZeroesSectors: 8 },
    });
    r.blk.init(wanted);
    const status = async (req: Parameters<typeof r.blk.submit>[0]) =>
      (await r.blk.submit(req)).status;
    const IOERR = VIRTIO_BLK_S_IOERR;
    const UNSUPP = VIRTIO_BLK_S_UNSUPP;
    // §5.2.6.1: beyond capacity.
    expect(await status({ type: 'in', sector: SECTORS - 1, sectors: 2 })).toBe(IOERR);
    expect(await status({ type: 'out', sector: SECTORS, data: new Uint8Array(512) })).toBe(IOERR);
    expect(
      await status({
        type: 'raw',
        requestType: VIRTIO_BLK_T_IN,
        sector: 2n ** 64n - 1n,
        writableBytes: 512,
      }),
    ).toBe(IOERR);
    expect(
      await status({
        type: 'raw',
        requestType: VIRTIO_BLK_T_IN,
        sector: 2n ** 53n,
        writableBytes: 512,
      }),
    ).toBe(IOERR);
    expect(await status({ type: 'discard', segments: [{ sector: SECTORS - 1, sectors: 2 }] })).toBe(
      IOERR,
    );
    expect(
      await status({ type: 'write-zeroes', segments: [{ sector: 2 ** 52, sectors: 1 }] }),
    ).toBe(IOERR);
    // Framing (§5.2.6.1): lengths, directions, segment limits.
    expect(await status({ type: 'raw', requestType: VIRTIO_BLK_T_IN, writableBytes: 100 })).toBe(
      IOERR,
    );
    expect(
      await status({ type: 'raw', requestType: VIRTIO_BLK_T_OUT, readable: new Uint8Array(700) }),
    ).toBe(IOERR);
    expect(
      await status({
        type: 'raw',
        requestType: VIRTIO_BLK_T_IN,
        readable: new Uint8Array(512),
        writableBytes: 512,
      }),
    ).toBe(IOERR);
    expect(
      await status({
        type: 'raw',
        requestType: VIRTIO_BLK_T_OUT,
        readable: new Uint8Array(512),
        writableBytes: 512,
      }),
    ).toBe(IOERR);
    expect(await status({ type: 'raw', requestType: 8, writableBytes: 19 })).toBe(IOERR);
    expect(await status({ type: 'raw', requestType: 11, readable: new Uint8Array(15) })).toBe(
      IOERR,
    );
    expect(await status({ type: 'raw', requestType: 11 })).toBe(IOERR);
    const three = [0, 1, 2].map((i) => ({ sector: i, sectors: 1 }));
    expect(await status({ type: 'discard', segments: three })).toBe(IOERR);
    expect(await status({ type: 'write-zeroes', segments: [{ sector: 0, sectors: 9 }] })).toBe(
      IOERR,
    );
    // §5.2.6.2: UNSUPP for unknown types and flags, and unmap on a discard.
    for (const t of [
      VIRTIO_BLK_T_GET_LIFETIME,
      VIRTIO_BLK_T_SECURE_ERASE,
      2,
      5,
      16,
      99,
      0x80000000,
      0xffffffff,
    ]) {
      expect(await status({ type: 'raw', requestType: t, writableBytes: 6 })).toBe(UNSUPP);
    }
    expect(
      await status({ type: 'discard', segments: [{ sector: 0, sectors: 1, unmap: true }] }),
    ).toBe(UNSUPP);
    expect(
      await status({ type: 'write-zeroes', segments: [{ sector: 0, sectors: 1, flags: 2 }] }),
    ).toBe(UNSUPP);
    // Flags are checked before ranges: a bad flag in a later segment wins over a range error.
    expect(
      await status({
        type: 'write-zeroes',
        segments: [
          { sector: SECTORS, sectors: 8 },
          { sector: 0, sectors: 1, flags: 0x80000000 },
        ],
      }),
    ).toBe(UNSUPP);
    // Backend failures (the disk is not touched by a failing call).
    const before = flaky.inner.bytes.slice();
    flaky.failWhen = () => true;
    expect(await status({ type: 'out', sector: 0, data: pattern(1024, 3) })).toBe(IOERR);
    expect(await status({ type: 'in', sector: 0, sectors: 1 })).toBe(IOERR);
    expect(await status({ type: 'flush' })).toBe(IOERR);
    expect(await status({ type: 'discard', segments: [{ sector: 0, sectors: 1 }] })).toBe(IOERR);
    expect(await status({ type: 'write-zeroes', segments: [{ sector: 0, sectors: 1 }] })).toBe(
      IOERR,
    );
    expect(diffBytes(flaky.inner.bytes, before)).toBe('equal');
    expect(r.device.stats.backendErrors).toBe(5);
    expect(String(r.device.lastBackendError)).toMatch(/injected writeZeroes failure/);
    flaky.failWhen = () => false;
    await expect(r.blk.read(0, 1)).resolves.toHaveLength(512);
    expect(r.device.stats.unsupported).toBe(11);
    expect(r.device.needsReset).toBe(false);
  });

  it('keeps many requests in flight on several queues and completes each once', async () => {
    const r = blockRig({ device: { numQueues: 3, queueSize: 32 } });
    r.blk.init(wanted | F(VIRTIO_BLK_F_MQ));
    expect(r.blk.numQueues).toBe(3);
    const tickets: BlockTicket[] = [];
    for (let i = 0; i < 30; i++)
      tickets.push(r.blk.enqueue({ type: 'out', sector: i * 4, data: pattern(2048, i) }));
    expect(r.blk.inFlight).toBe(30);
    r.blk.notify();
    const done = await Promise.all(tickets.map((t) => r.blk.wait(t)));
    expect(done.every((c) => c.status === VIRTIO_BLK_S_OK)).toBe(true);
    expect(new Set(tickets.map((t) => t.queue))).toEqual(new Set([0, 1, 2]));
    const reads = Array.from({ length: 30 }, (_, i) => r.blk.read(i * 4, 4, i % 3));
    const got = await Promise.all(reads);
    got.forEach((d, i) => {
      expect(d).toEqual(pattern(2048, i));
    });
    expect(r.blk.inFlight).toBe(0);
    expect(r.device.stats.requests).toBe(60);
  });

  it('rejects requests in flight when the driver resets, and restarts clean', async () => {
    const r = blockRig();
    r.blk.init(wanted);
    const backend = () => (r.backend as MemoryBackend).bytes;
    // Notified and completed, but not collected: the write happened.
    const done = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(512, 1) });
    r.blk.notify();
    // Available but never notified: the device never saw it.
    const waiting = r.blk.enqueue({ type: 'out', sector: 1, data: pattern(512, 2) });
    r.blk.reset();
    await expect(r.blk.wait(done)).rejects.toBeInstanceOf(BlockRequestAbortedError);
    await expect(r.blk.wait(waiting)).rejects.toBeInstanceOf(BlockRequestAbortedError);
    expect(backend().subarray(0, 512)).toEqual(pattern(512, 1));
    expect(backend().subarray(512, 1024)).toEqual(new Uint8Array(512));
    expect(r.transport.status).toBe(0);
    r.blk.init(wanted);
    await r.blk.write(1, pattern(512, 3));
    expect(await r.blk.read(0, 2)).toEqual(
      new Uint8Array([...pattern(512, 1), ...pattern(512, 3)]),
    );
    expect(r.device.needsReset).toBe(false);
  });

  it('survives a snapshot and restore in the middle of I/O: nothing lost, nothing done twice', async () => {
    const r = blockRig({ device: { numQueues: 2, queueSize: 16 } });
    r.blk.init(wanted | F(VIRTIO_BLK_F_MQ));
    await r.blk.write(0, pattern(4096, 10));
    // In flight at the snapshot: completed but uncollected, and available but not notified.
    const completed = [0, 1].map((q) =>
      r.blk.enqueue({ type: 'out', sector: 16 + q * 8, data: pattern(4096, 20 + q) }, q),
    );
    r.blk.notify();
    const unnotified = [0, 1].map((q) =>
      r.blk.enqueue({ type: 'out', sector: 48 + q * 8, data: pattern(4096, 30 + q) }, q),
    );
    const readBack = r.blk.enqueue({ type: 'in', sector: 0, sectors: 8 }, 0);
    const oldDevice = r.device;
    const oldDisk = (r.backend as MemoryBackend).bytes;
    const oldRequests = oldDevice.stats.requests;
    migrate(r);
    expect(r.device).not.toBe(oldDevice);
    expect(r.device.stats.requests).toBe(oldRequests);
    expect(r.transport.status & STATUS_DRIVER_OK).not.toBe(0);
    r.blk.notify();
    const results = await Promise.all(
      [...completed, ...unnotified, readBack].map((t) => r.blk.wait(t)),
    );
    expect(results.map((c) => c.status)).toEqual([0, 0, 0, 0, 0]);
    expect(results[4]!.data).toEqual(pattern(4096, 10));
    // Each request ran exactly once: the restored device served only the three new ones.
    expect(r.device.stats.requests).toBe(oldRequests + 3);
    expect(oldDevice.stats.requests).toBe(oldRequests);
    const disk = (r.backend as MemoryBackend).bytes;
    for (const [sector, seed] of [
      [16, 20],
      [24, 21],
      [48, 30],
      [56, 31],
    ] as const) {
      expect(disk.subarray(sector * 512, sector * 512 + 4096)).toEqual(pattern(4096, seed));
    }
    // The source VM's disk did not see the requests run after the snapshot.
    expect(oldDisk.subarray(48 * 512, 48 * 512 + 4096)).toEqual(new Uint8Array(4096));
    // And the guest goes on.
    await r.blk.write(64, pattern(512, 40));
    expect(await r.blk.read(64, 1, 1)).toEqual(pattern(512, 40));
  });
});

describe('virtio-blk: read-only devices (§5.2.6.2)', () => {
  it('fails writes, discards and write-zeroes with IOERR and writes nothing', async () => {
    const data = pattern(DISK, 5);
    const backend = new MemoryBackend(data.slice(), { readOnly: true });
    const r = blockRig({ backend });
    r.blk.init(ALL_BLK);
    expect(r.blk.config?.readOnly).toBe(true);
    expect(await r.blk.read(3, 2)).toEqual(data.subarray(1536, 2560));
    const seg = [{ sector: 0, sectors: 1 }];
    for (const req of [
      { type: 'out', sector: 0, data: new Uint8Array(512) },
      { type: 'discard', segments: seg },
      { type: 'write-zeroes', segments: seg },
    ] as const) {
      expect((await r.blk.submit(req)).status).toBe(VIRTIO_BLK_S_IOERR);
    }
    await expect(r.blk.write(0, new Uint8Array(512))).rejects.toBeInstanceOf(BlockStatusError);
    expect(await r.blk.submit({ type: 'flush' })).toMatchObject({ status: VIRTIO_BLK_S_OK });
    expect(diffBytes(backend.bytes, data)).toBe('equal');
    expect(backend.writes + backend.discards + backend.zeroings).toBe(0);
  });
});

describe('virtio-blk: flush semantics (§5.2.6.2)', () => {
  it('flushes every write before completing it when FLUSH was offered but not negotiated', async () => {
    const r = blockRig();
    r.blk.init(F(VIRTIO_BLK_F_WRITE_ZEROES));
    const b = r.backend as MemoryBackend;
    await r.blk.write(0, new Uint8Array(1024));
    await r.blk.writeZeroes(0, 1);
    expect(b.flushes).toBe(2);
    expect(r.device.stats.flushes).toBe(2);
    await r.blk.read(0, 1);
    expect(b.flushes).toBe(2);
  });

  it('leaves durability to FLUSH requests when FLUSH is negotiated', async () => {
    const r = blockRig();
    r.blk.init(F(VIRTIO_BLK_F_FLUSH));
    const b = r.backend as MemoryBackend;
    await r.blk.write(0, new Uint8Array(1024));
    expect(b.flushes).toBe(0);
    await r.blk.flush();
    expect(b.flushes).toBe(1);
  });

  it('answers FLUSH with UNSUPP when the backend cannot flush, and DISCARD when not negotiated', async () => {
    const r = blockRig({ memoryBackend: { flush: false } });
    r.blk.init(ALL_BLK & ~F(VIRTIO_BLK_F_DISCARD));
    expect((await r.blk.submit({ type: 'flush' })).status).toBe(VIRTIO_BLK_S_UNSUPP);
    expect(
      (await r.blk.submit({ type: 'discard', segments: [{ sector: 0, sectors: 1 }] })).status,
    ).toBe(VIRTIO_BLK_S_UNSUPP);
    expect(
      (await r.blk.submit({ type: 'write-zeroes', segments: [{ sector: 0, sectors: 1 }] })).status,
    ).toBe(VIRTIO_BLK_S_OK);
  });

  it('never acknowledges a write the backend did not take', async () => {
    const flaky = new FlakyBackend(new MemoryBackend(DISK));
    let n = 0;
    flaky.failWhen = (op) => op === 'write' && n++ % 3 === 1;
    const r = blockRig({ backend: flaky, device: { queueSize: 128 } });
    r.blk.init(F(VIRTIO_BLK_F_FLUSH));
    const tickets = Array.from({ length: 40 }, (_, i) =>
      r.blk.enqueue({ type: 'out', sector: i, data: pattern(512, i + 1) }),
    );
    r.blk.notify();
    const results = await Promise.all(tickets.map((t) => r.blk.wait(t)));
    let failed = 0;
    results.forEach((c, i) => {
      const onDisk = flaky.inner.bytes.subarray(i * 512, (i + 1) * 512);
      if (c.status === VIRTIO_BLK_S_OK) expect(onDisk).toEqual(pattern(512, i + 1));
      else {
        expect(c.status).toBe(VIRTIO_BLK_S_IOERR);
        expect(onDisk).toEqual(new Uint8Array(512));
        failed++;
      }
    });
    expect(failed).toBe(13);
    expect(r.device.stats.ioErrors).toBe(13);
  });
});

describe('virtio-blk: hostile chains', () => {
  function live(o: Parameters<typeof blockRig>[0] = {}): BlockRig {
    const r = blockRig(o);
    r.blk.init(F(VIRTIO_BLK_F_FLUSH) | F(VIRTIO_BLK_F_DISCARD));
    return r;
  }

  it('a header shorter than 16 bytes is answered with IOERR in the status byte', () => {
    const r = live();
    const { id, out } = handChain(r, [header(VIRTIO_BLK_T_OUT).subarray(0, 8)], [1]);
    expect(collect(r)).toEqual({ id, len: 1 });
    expect(r.memory.readU8(out[0]!)).toBe(VIRTIO_BLK_S_IOERR);
    // Also when the short header hides in the writable part.
    const c2 = handChain(r, [], [8, 1]);
    expect(collect(r).id).toBe(c2.id);
    expect(r.memory.readU8(c2.out[1]!)).toBe(VIRTIO_BLK_S_IOERR);
    expect(r.device.needsReset).toBe(false);
  });

  it('a chain with no device-writable byte puts the device in DEVICE_NEEDS_RESET, after completing what came before', () => {
    const r = live();
    const ok = handChain(r, [header(VIRTIO_BLK_T_IN, 0)], [512, 1]);
    handChain(r, [header(VIRTIO_BLK_T_OUT, 0), new Uint8Array(512)], []);
    r.guest.kick(0);
    expect(r.device.needsReset).toBe(true);
    expect(r.device.lastError?.code).toBe('IOVEC_SHORT');
    expect(r.guest.status & STATUS_DEVICE_NEEDS_RESET).not.toBe(0);
    expect(r.guest.ackInterrupt() & INT_CONFIG_CHANGE).not.toBe(0);
    // The request before the broken one was completed and published.
    expect(r.blk.queue(0).popUsed()).toBe(ok.id);
    expect(r.memory.readU8(ok.out[1]!)).toBe(VIRTIO_BLK_S_OK);
    // Notifications are ignored until the reset.
    const c = handChain(r, [header(VIRTIO_BLK_T_IN, 0)], [512, 1]);
    r.guest.kick(0);
    expect(r.memory.readU8(c.out[1]!)).toBe(0xee);
  });

  it('the driver sees a device that needs a reset: requests in flight are aborted, and a reset recovers', async () => {
    const r = live();
    // The broken chain comes first, so the request behind it is never served.
    handChain(r, [header(VIRTIO_BLK_T_OUT, 0)], []);
    const t = r.blk.enqueue({ type: 'out', sector: 0, data: pattern(512, 9) });
    r.blk.notify();
    expect(r.device.needsReset).toBe(true);
    await expect(r.blk.wait(t)).rejects.toBeInstanceOf(BlockRequestAbortedError);
    expect(r.blk.inFlight).toBe(0);
    expect((r.backend as MemoryBackend).bytes.subarray(0, 512)).toEqual(new Uint8Array(512));
    r.blk.init(0n);
    expect(r.device.needsReset).toBe(false);
    expect(r.device.lastError).toBeNull();
    await r.blk.write(0, pattern(512, 1));
    expect(await r.blk.read(0, 1)).toEqual(pattern(512, 1));
  });

  it('any arrangement of descriptors works (§2.6.4): byte-sized header pieces, status sharing a buffer with data', () => {
    const r = live();
    const disk = (r.backend as MemoryBackend).bytes;
    disk.set(pattern(1024, 9), 512 * 3);
    const h = header(VIRTIO_BLK_T_IN, 3);
    const pieces = Array.from(h, (b) => u8(b));
    const { id, out } = handChain(r, pieces, [1025]);
    expect(collect(r)).toEqual({ id, len: 1025 });
    expect(r.memory.slice(out[0]!, 1024)).toEqual(pattern(1024, 9));
    expect(r.memory.readU8(out[0]! + 1024)).toBe(VIRTIO_BLK_S_OK);
    // A write whose data shares the header's buffer.
    const hw = new Uint8Array([...header(VIRTIO_BLK_T_OUT, 7), ...pattern(512, 4)]);
    const w = handChain(r, [hw], [1]);
    expect(collect(r)).toEqual({ id: w.id, len: 1 });
    expect(disk.subarray(7 * 512, 8 * 512)).toEqual(pattern(512, 4));
  });

  it('buffers that cross from one memory region into the next are read and written piece by piece', () => {
    const boundary = 0x100000;
    const r = blockRig({ splitAt: boundary, memoryBytes: 2 << 20, allocEnd: boundary });
    r.blk.init(0n);
    const q = r.blk.queue(0);
    const h = r.guest.alloc.alloc(16);
    const st = r.guest.alloc.alloc(1);
    const data = pattern(4096, 77);
    // A write whose single data buffer crosses the boundary, then a read into another one.
    r.memory.write(h, header(VIRTIO_BLK_T_OUT, 5));
    r.memory.write(boundary - 1000, data);
    q.add(
      [
        { addr: h, len: 16 },
        { addr: boundary - 1000, len: 4096 },
      ],
      [{ addr: st, len: 1 }],
    );
    expect(collect(r).len).toBe(1);
    expect(r.memory.readU8(st)).toBe(VIRTIO_BLK_S_OK);
    expect(
      diffBytes((r.backend as MemoryBackend).bytes.subarray(5 * 512, 5 * 512 + 4096), data),
    ).toBe('equal');
    r.memory.write(h, header(VIRTIO_BLK_T_IN, 5));
    r.memory.fill(boundary - 3000, 4097);
    // The status byte lies in the second region, in the same buffer as the data.
    q.add([{ addr: h, len: 16 }], [{ addr: boundary - 3000, len: 4097 }]);
    expect(collect(r).len).toBe(4097);
    const back = new Uint8Array(4096);
    r.memory.read(boundary - 3000, back);
    expect(diffBytes(back, data)).toBe('equal');
    expect(r.memory.readU8(boundary - 3000 + 4096)).toBe(VIRTIO_BLK_S_OK);
  });

  it('random chains never throw out of the device; each gets a status or a reset, then the device works', () => {
    const types = [0, 1, 4, 8, 11, 13, 10, 99];
    fc.assert(
      fc.property(
        fc.record({
          type: fc.constantFrom(...types),
          sector: fc.oneof(
            fc.nat(SECTORS + 4),
            fc.constant(2 ** 40),
            fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
          ),
          readable: fc.array(fc.nat(1100), { maxLength: 4 }),
          writable: fc.array(fc.nat(1100), { maxLength: 4 }),
          segment: fc.record({
            sector: fc.nat(SECTORS + 2),
            count: fc.nat(4),
            flags: fc.constantFrom(0, 1, 2),
          }),
        }),
        (c) => {
          const r = blockRig({ memoryBytes: 1 << 20, driver: { arenaBytes: 64 << 10 } });
          r.blk.init(
            F(VIRTIO_BLK_F_FLUSH) | F(VIRTIO_BLK_F_DISCARD) | F(VIRTIO_BLK_F_WRITE_ZEROES),
          );
          const h = header(c.type, c.sector);
          const seg = new Uint8Array(16);
          const sv = new DataView(seg.buffer);
          sv.setUint32(0, c.segment.sector, true);
          sv.setUint32(8, c.segment.count, true);
          sv.setUint32(12, c.segment.flags, true);
          const body = new Uint8Array([...h, ...seg, ...new Uint8Array(4096)]);
          let at = 0;
          const readable = c.readable.map((n) => {
            const b = body.subarray(at, Math.min(body.length, at + n));
            at += b.length;
            return b;
          });
          if (readable.length + c.writable.length === 0) return;
          const { id, out } = handChain(r, readable, c.writable);
          r.guest.kick(0);
          const totalW = c.writable.reduce((a, b) => a + b, 0);
          if (totalW === 0) {
            expect(r.device.needsReset).toBe(true);
          } else {
            expect(r.device.needsReset).toBe(false);
            const q = r.blk.queue(0);
            expect(q.popUsed()).toBe(id);
            const len = q.lastUsedLen;
            expect(len === 1 || len === totalW).toBe(true);
            // The status is the last writable byte.
            let last = -1;
            for (let i = c.writable.length - 1; i >= 0 && last < 0; i--) {
              if (c.writable[i]! > 0) last = out[i]! + c.writable[i]! - 1;
            }
            expect([0, 1, 2]).toContain(r.memory.readU8(last));
          }
          r.blk.init(0n);
          const d = pattern(512, 1);
          r.blk.enqueue({ type: 'out', sector: 1, data: d });
          r.blk.notify();
          expect(r.blk.poll()).toBe(1);
          expect((r.backend as MemoryBackend).bytes.subarray(512, 1024)).toEqual(d);
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('virtio-blk: FileBackend', () => {
  const dirs: string[] = [];
  const tmp = (): string => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'virtq-blk-'));
    dirs.push(d);
    return path.join(d, 'disk.img');
  };
  afterEach(() => {
    vi.restoreAllMocks();
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });

  it('reads, writes and flushes a file with fdatasync, and offers no discard', async () => {
    const file = tmp();
    const backend = FileBackend.open(file, { create: true, size: DISK + 100 });
    const sync = vi.spyOn(fs, 'fdatasyncSync');
    const r = blockRig({ backend, memoryBytes: 2 << 20 });
    const f = r.blk.init(ALL_BLK);
    expect(f & F(VIRTIO_BLK_F_DISCARD)).toBe(0n);
    expect(f & F(VIRTIO_BLK_F_FLUSH)).not.toBe(0n);
    // DISK + 100 bytes: the partial last sector counts (see the next test).
    expect(r.blk.config?.capacity).toBe(SECTORS + 1);
    expect(r.blk.config?.writeZeroes?.mayUnmap).toBe(false);
    const data = pattern(8192, 3);
    await r.blk.write(10, data);
    expect(sync).not.toHaveBeenCalled();
    await r.blk.flush();
    expect(sync).toHaveBeenCalledTimes(1);
    expect(fs.readFileSync(file).subarray(5120, 5120 + 8192)).toEqual(Buffer.from(data));
    expect(await r.blk.read(10, 16)).toEqual(data);
    await r.blk.writeZeroes(11, 2);
    const back = await r.blk.read(10, 16);
    expect(back.subarray(512, 1536)).toEqual(new Uint8Array(1024));
    expect(
      (await r.blk.submit({ type: 'discard', segments: [{ sector: 0, sectors: 1 }] })).status,
    ).toBe(VIRTIO_BLK_S_UNSUPP);
    backend.close();
    // A closed file fails every request with IOERR.
    expect((await r.blk.submit({ type: 'in', sector: 0, sectors: 1 })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
  });

  it('serves a file that is not a whole number of sectors as qemu-storage-daemon does: the last sector padded with zeroes, and a write there lengthens the file', async () => {
    const file = tmp();
    const tail = pattern(100, 7);
    fs.writeFileSync(file, Buffer.concat([Buffer.alloc(DISK), Buffer.from(tail)]));
    const backend = FileBackend.open(file);
    expect(backend.size).toBe(DISK + 512);
    const r = blockRig({ backend, memoryBytes: 2 << 20 });
    r.blk.init(ALL_BLK);
    expect(r.blk.config?.capacity).toBe(SECTORS + 1);
    // Two sectors across the end of the file: whole data, then the tail, then zeroes.
    const before = await r.blk.read(SECTORS - 1, 2);
    expect(before.subarray(512, 612)).toEqual(tail);
    expect(before.subarray(612)).toEqual(new Uint8Array(412));
    expect(fs.statSync(file).size).toBe(DISK + 100); // reading does not change the file
    // Past the padded sector is past the capacity: IOERR, as for any disk.
    expect((await r.blk.submit({ type: 'in', sector: SECTORS + 1, sectors: 1 })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    const last = pattern(512, 11);
    await r.blk.write(SECTORS, last);
    expect(fs.statSync(file).size).toBe(DISK + 512);
    expect(await r.blk.read(SECTORS, 1)).toEqual(last);
    // The file shrinking under the device is an I/O error, not zeroes.
    fs.truncateSync(file, DISK - 4096);
    expect((await r.blk.submit({ type: 'in', sector: SECTORS - 2, sectors: 1 })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    backend.close();
  });

  it('moves a request scattered over guest memory with one preadv / pwritev', () => {
    const file = tmp();
    const backend = FileBackend.open(file, { create: true, size: DISK });
    const r = blockRig({ backend, memoryBytes: 2 << 20 });
    r.blk.init(ALL_BLK);
    const a = r.guest.alloc;
    // Three data buffers with gaps between them, so no two coalesce into one piece.
    const piece = (len: number): number => {
      const addr = a.alloc(len);
      a.alloc(64);
      return addr;
    };
    const lens = [512, 1024, 512];
    const data = pattern(2048, 9);
    const out = lens.map(piece);
    let at = 0;
    for (let i = 0; i < lens.length; i++) {
      r.memory.write(out[i]!, data.subarray(at, at + lens[i]!));
      at += lens[i]!;
    }
    const writev = vi.spyOn(fs, 'writevSync');
    const write = vi.spyOn(fs, 'writeSync');
    const status = () => {
      const addr = a.alloc(1);
      r.memory.fill(addr, 1, 0xee);
      return { addr, len: 1 };
    };
    const hdr = header(VIRTIO_BLK_T_OUT, 4);
    const h = a.alloc(16);
    r.memory.write(h, hdr);
    const ws = status();
    r.blk
      .queue(0)
      .add([{ addr: h, len: 16 }, ...out.map((addr, i) => ({ addr, len: lens[i]! }))], [ws]);
    collect(r);
    expect(r.memory.slice(ws.addr, 1)[0]).toBe(VIRTIO_BLK_S_OK);
    expect(writev).toHaveBeenCalledTimes(1);
    expect(write).not.toHaveBeenCalled();
    expect(fs.readFileSync(file).subarray(2048, 4096)).toEqual(Buffer.from(data));

    // Read it back into three scattered buffers; the first preadv stops short (as a signal
    // may make it), and the rest is read buffer by buffer.
    const real = fs.readvSync;
    const readv = vi
      .spyOn(fs, 'readvSync')
      .mockImplementationOnce((fd, buffers, position) =>
        real(
          fd,
          [(buffers as Uint8Array[])[0]!, (buffers as Uint8Array[])[1]!.subarray(0, 100)],
          position,
        ),
      );
    const read = vi.spyOn(fs, 'readSync');
    const back = lens.map(piece);
    for (let i = 0; i < lens.length; i++) r.memory.fill(back[i]!, lens[i]!, 0xee);
    const h2 = a.alloc(16);
    r.memory.write(h2, header(VIRTIO_BLK_T_IN, 4));
    const rs = status();
    r.blk
      .queue(0)
      .add([{ addr: h2, len: 16 }], [...back.map((addr, i) => ({ addr, len: lens[i]! })), rs]);
    const { len } = collect(r);
    expect(len).toBe(2048 + 1);
    expect(r.memory.slice(rs.addr, 1)[0]).toBe(VIRTIO_BLK_S_OK);
    expect(readv).toHaveBeenCalledTimes(1);
    // The rest of the second buffer, then the third.
    expect(read).toHaveBeenCalledTimes(2);
    const got = new Uint8Array(2048);
    at = 0;
    for (let i = 0; i < lens.length; i++) {
      got.set(r.memory.slice(back[i]!, lens[i]!), at);
      at += lens[i]!;
    }
    expect(got).toEqual(data);
    backend.close();
  });

  it('serves guest memory in a SharedArrayBuffer', async () => {
    const backend = FileBackend.open(tmp(), { create: true, size: DISK });
    const r = blockRig({ backend });
    // Replace the rig's memory by shared memory: a fresh rig over it.
    const shared = GuestMemory.create(2 << 20, { shared: true });
    const t = new MmioTransport(r.device, shared, { logger: silentLogger });
    const { GuestAllocator } = await import('../../src/driver/allocator.js');
    const { MmioGuestDriver } = await import('../../src/driver/mmio.js');
    const { BlockDriver } = await import('../../src/driver/devices/block.js');
    const blk = new BlockDriver(
      new MmioGuestDriver(t, shared, new GuestAllocator(shared, 0x1000, 2 << 20)),
    );
    blk.init(0n);
    await blk.write(1, pattern(1024, 8));
    expect(await blk.read(1, 2)).toEqual(pattern(1024, 8));
    backend.close();
  });

  it('opens an image read-only', async () => {
    const file = tmp();
    fs.writeFileSync(file, pattern(DISK, 4));
    const backend = FileBackend.open(file, { readOnly: true });
    const r = blockRig({ backend });
    r.blk.init(ALL_BLK);
    expect(r.blk.config?.readOnly).toBe(true);
    expect(await r.blk.read(0, 1)).toEqual(pattern(DISK, 4).subarray(0, 512));
    expect((await r.blk.submit({ type: 'out', sector: 0, data: new Uint8Array(512) })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    expect(diffBytes(fs.readFileSync(file), pattern(DISK, 4))).toBe('equal');
    expect(() => FileBackend.open(file, { readOnly: true, create: true })).toThrow(TypeError);
    backend.close();
  });

  it('discards through a hole puncher, and writes zeroes where the file system has none', async () => {
    const file = tmp();
    fs.writeFileSync(file, pattern(DISK, 6));
    const punched: [number, number][] = [];
    let supported = true;
    const backend = FileBackend.open(file, {
      punchHole: (fd, offset, length) => {
        if (!supported) throw Object.assign(new Error('EOPNOTSUPP'), { code: 'EOPNOTSUPP' });
        punched.push([offset, length]);
        // Stand-in for the kernel: the range reads as zeroes afterwards.
        fs.writeSync(fd, new Uint8Array(length), 0, length, offset);
      },
    });
    expect(backend.supportsDiscard).toBe(true);
    expect(backend.writeZeroesMayUnmap).toBe(true);
    const r = blockRig({ backend });
    const f = r.blk.init(ALL_BLK);
    expect(f & F(VIRTIO_BLK_F_DISCARD)).not.toBe(0n);
    const discard = (sector: number, sectors: number) =>
      r.blk.submit({ type: 'discard', segments: [{ sector, sectors }] });
    expect((await discard(2, 2)).status).toBe(VIRTIO_BLK_S_OK);
    expect(punched).toEqual([[1024, 1024]]);
    // Write-zeroes with unmap may release the range too; without unmap it writes zeroes.
    await r.blk.writeZeroes(8, 1, true);
    await r.blk.writeZeroes(10, 1, false);
    expect(punched).toEqual([
      [1024, 1024],
      [4096, 512],
    ]);
    supported = false;
    expect((await discard(12, 1)).status).toBe(VIRTIO_BLK_S_OK);
    const bytes = fs.readFileSync(file);
    const want = pattern(DISK, 6);
    for (const [at, n] of [
      [2, 2],
      [8, 1],
      [10, 1],
      [12, 1],
    ] as const) {
      want.fill(0, at * 512, (at + n) * 512);
    }
    expect(diffBytes(bytes, want)).toBe('equal');
    // A read-only image never punches.
    const ro = FileBackend.open(file, { readOnly: true, punchHole: () => {} });
    expect(ro.supportsDiscard).toBe(false);
    ro.close();
    backend.close();
  });

  it('asyncIo: several reads and writes under way at once, each completed when it ends', async () => {
    const file = tmp();
    fs.writeFileSync(file, pattern(DISK, 7));
    const backend = FileBackend.open(file);
    const io = backend.async;
    let now = 0;
    let peak = 0;
    const counted =
      (call: (o: number, b: Uint8Array[], d: BlockIoDone) => void) =>
      (o: number, b: Uint8Array[], d: BlockIoDone) => {
        now++;
        peak = Math.max(peak, now);
        call(o, b, (e) => {
          now--;
          d(e);
        });
      };
    const wrapped: AsyncBlockIo = {
      readv: counted(io.readv),
      writev: counted(io.writev),
      flush: io.flush,
    };
    Object.defineProperty(backend, 'async', { value: wrapped });
    // Completions arrive from libuv's thread pool: the driver waits a loop turn between polls.
    const r = blockRig({
      backend,
      device: { asyncIo: true, asyncMinBytes: 512 },
      driver: { waiter: { wait: () => new Promise((res) => setTimeout(res, 1)) } },
    });
    r.blk.init(ALL_BLK);
    await Promise.all([0, 1, 2, 3].map((i) => r.blk.write(i * 8, pattern(4096, 10 + i))));
    expect(peak).toBeGreaterThan(1);
    const back = await Promise.all([0, 1, 2, 3].map((i) => r.blk.read(i * 8, 8)));
    back.forEach((d, i) => {
      expect(d).toEqual(pattern(4096, 10 + i));
    });
    await r.blk.flush();
    expect(r.device.inFlight).toBe(0);
    const disk = fs.readFileSync(file);
    for (let i = 0; i < 4; i++) {
      expect(diffBytes(disk.subarray(i * 4096, (i + 1) * 4096), pattern(4096, 10 + i))).toBe(
        'equal',
      );
    }
    // A failed transfer is an IOERR for that request only.
    const failing: AsyncBlockIo = {
      ...wrapped,
      writev: (_o, _b, d) => queueMicrotask(() => d(new Error('EIO'))),
    };
    Object.defineProperty(backend, 'async', { value: failing });
    expect((await r.blk.submit({ type: 'out', sector: 40, data: pattern(512, 3) })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    expect(r.device.stats.ioErrors).toBe(1);
    // whenIdle answers at once when nothing is under way, and after the last transfer otherwise.
    let idle = 0;
    r.device.whenIdle(() => idle++);
    expect(idle).toBe(1);
    backend.close();
  });

  it('turns fs errors into IOERR and keeps every acknowledged write', async () => {
    const file = tmp();
    const backend = FileBackend.open(file, { create: true, size: DISK });
    const r = blockRig({ backend });
    r.blk.init(F(VIRTIO_BLK_F_FLUSH));
    await r.blk.write(0, pattern(512, 1));
    const real = fs.writeSync;
    const spy = vi.spyOn(fs, 'writeSync').mockImplementationOnce(() => {
      throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
    });
    expect((await r.blk.submit({ type: 'out', sector: 1, data: pattern(512, 2) })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    spy.mockImplementation(real as never);
    vi.spyOn(fs, 'fdatasyncSync').mockImplementationOnce(() => {
      throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
    });
    expect((await r.blk.submit({ type: 'flush' })).status).toBe(VIRTIO_BLK_S_IOERR);
    await r.blk.write(2, pattern(512, 3));
    await r.blk.flush();
    const img = fs.readFileSync(file);
    expect(img.subarray(0, 512)).toEqual(Buffer.from(pattern(512, 1)));
    expect(img.subarray(512, 1024)).toEqual(Buffer.alloc(512));
    expect(img.subarray(1024, 1536)).toEqual(Buffer.from(pattern(512, 3)));
    // A file truncated behind the device's back: reads past its end fail rather than invent data.
    fs.truncateSync(file, 4096);
    expect((await r.blk.submit({ type: 'in', sector: 100, sectors: 1 })).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    expect(backend.refreshSize()).toBe(4096);
    expect(r.device.updateCapacity()).toBe(true);
    expect(r.blk.readConfig().capacity).toBe(8);
    backend.close();
  });
});
