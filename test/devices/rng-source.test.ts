/**
 * The rng device's entropy sources: a file (virtq/node's openFileEntropySource) and what the
 * device does when a source fails (the request goes back to the ring and is tried again later,
 * nothing is completed with bytes that did not come).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { RNG_SOURCE_RETRY_MS, RngDevice } from '../../src/devices/rng/index.js';
import { openFileEntropySource } from '../../src/node/index.js';
import { VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1 } from '../../src/queue/index.js';
import { deviceRig, indirect, writeTable } from './budget-rig.js';

const TABLE = 0x40000;
const BUF = 0x80000;
const dir = mkdtempSync(join(tmpdir(), 'virtq-rng-source-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => {
  vi.useRealTimers();
});

describe('openFileEntropySource', () => {
  it('reads a regular file in a loop, from where it left off', () => {
    const file = join(dir, 'ten.bin');
    writeFileSync(file, Uint8Array.from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    const s = openFileEntropySource(file);
    expect(s.regular).toBe(true);
    const a = new Uint8Array(4);
    s.source(a);
    expect([...a]).toEqual([0, 1, 2, 3]);
    const b = new Uint8Array(13);
    s.source(b);
    expect([...b]).toEqual([4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6]);
    s.close();
    expect(() => s.source(a)).toThrow(/closed/);
  });

  it('reads a character device as a stream', () => {
    const s = openFileEntropySource('/dev/urandom');
    expect(s.regular).toBe(false);
    const out = new Uint8Array(100_000);
    s.source(out);
    // 100,000 random bytes are not all zero.
    expect(out.some((x) => x !== 0)).toBe(true);
    s.close();
  });

  it('refuses an empty file, a directory and a missing path', () => {
    const empty = join(dir, 'empty.bin');
    writeFileSync(empty, new Uint8Array(0));
    expect(() => openFileEntropySource(empty)).toThrow(/is empty/);
    expect(() => openFileEntropySource(dir)).toThrow(/neither a regular file nor a character/);
    expect(() => openFileEntropySource(join(dir, 'missing'))).toThrow(/ENOENT/);
  });
});

describe('a failing entropy source', () => {
  it('leaves the request in the ring and serves it once the source works again', () => {
    vi.useFakeTimers();
    let failing = true;
    const device = new RngDevice({
      source: (out) => {
        if (failing) throw new Error('EIO');
        out.fill(0xab);
      },
    });
    const rig = deviceRig(
      device,
      { format: 'split' },
      featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_F_INDIRECT_DESC),
    );
    const ring = rig.rings[0]!;
    ring.setChain(indirect(TABLE, writeTable(rig.memory, 'split', TABLE, [[BUF, 32, true]])));
    ring.offer(2);
    device.queueNotify(0);
    // Nothing completed, the device is not broken, and one retry is scheduled.
    expect(rig.used[0]).toBe(0);
    expect(device.sourceFailures).toBe(1);
    expect((device.lastSourceError as Error).message).toBe('EIO');
    expect(device.needsReset).toBe(false);
    expect(vi.getTimerCount()).toBe(1);
    // Still failing at the retry: tried once more, still nothing completed.
    vi.advanceTimersByTime(RNG_SOURCE_RETRY_MS);
    expect(device.sourceFailures).toBe(2);
    expect(rig.used[0]).toBe(0);
    failing = false;
    vi.advanceTimersByTime(RNG_SOURCE_RETRY_MS);
    // Both requests served whole, with the source's bytes.
    expect(rig.used[0]).toBe(2);
    expect(device.bytesServed).toBe(64);
    expect(rig.memory.slice(BUF, 32).every((x) => x === 0xab)).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
    device.reset();
  });
});
