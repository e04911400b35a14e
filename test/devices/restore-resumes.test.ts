/**
 * Work a device had scheduled for itself is not part of its saved state: a continuation after a
 * spent turn budget, the rng's wait for its rate limit or for a failed source. A restored live
 * device looks at each of its rings once, so nothing the driver made available before the
 * snapshot waits for a kick the driver already gave. Over split and packed rings, through the
 * MMIO transport and a driver of the guest's.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { featureBit, type VirtioDevice } from '../../src/devices/device.js';
import { BlockDevice, MemoryBackend, RngDevice } from '../../src/devices/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { MmioGuestDriver } from '../../src/driver/mmio.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { MMIO, MmioTransport } from '../../src/transport/mmio.js';

const MEM = 1 << 20;
const DATA = 0x80000;
const olds: VirtioDevice[] = [];
afterEach(() => {
  for (const d of olds.splice(0)) d.reset();
});

function rig(device: VirtioDevice, packed: boolean) {
  const memory = GuestMemory.create(MEM);
  const transport = new MmioTransport(device, memory, { logger: silentLogger });
  const guest = new MmioGuestDriver(transport, memory, new GuestAllocator(memory, 0x1000, DATA));
  guest.negotiate(
    featureBit(VIRTIO_F_VERSION_1) |
      featureBit(VIRTIO_F_EVENT_IDX) |
      (packed ? featureBit(VIRTIO_F_RING_PACKED) : 0n),
  );
  guest.setupQueue(0, 16);
  guest.start();
  return { memory, transport, guest };
}

/**
 * Restores `device` (new) from the rig's transport over the same guest memory, and stops the old
 * device for good (a VM restarted from its snapshot): whatever it had scheduled does nothing.
 */
function restart(r: ReturnType<typeof rig>, device: VirtioDevice): MmioTransport {
  const state: unknown = JSON.parse(JSON.stringify(r.transport.save()));
  olds.push(r.transport.device);
  r.transport.device.reset();
  const t = new MmioTransport(device, r.memory, { logger: silentLogger });
  t.restore(state);
  return t;
}

const sleep = (ms: number) => new Promise((res) => setTimeout(res, ms));

/** Used buffers the driver collects from queue 0 within `ms`, with their lengths. */
async function collect(r: ReturnType<typeof rig>, want: number, ms = 1000): Promise<number[]> {
  const q = r.guest.queues[0]!;
  const lens: number[] = [];
  const deadline = Date.now() + ms;
  for (;;) {
    while (q.popUsed() >= 0) lens.push(q.lastUsedLen);
    if (lens.length >= want || Date.now() >= deadline) break;
    await sleep(2);
  }
  return lens;
}

describe('a restored device serves what its rings held, with no new notification', () => {
  for (const packed of [false, true]) {
    const ring = packed ? 'packed' : 'split';

    it(`rng over ${ring}: a request waiting for the rate limit`, async () => {
      const options = { queueSize: 16, rateLimit: { maxBytes: 32, periodMs: 40 } };
      const r = rig(new RngDevice(options), packed);
      const q = r.guest.queues[0]!;
      q.add([], [{ addr: DATA, len: 32 }]);
      q.add([], [{ addr: DATA + 64, len: 32 }]);
      r.guest.kick(0);
      expect(await collect(r, 1, 0)).toEqual([32]);
      // The second waits for the next period; the snapshot is taken now.
      const restored = new RngDevice(options);
      restart(r, restored);
      expect(await collect(r, 1)).toEqual([32]);
      expect(restored.requestsServed).toBe(2);
    });

    it(`rng over ${ring}: a request waiting for a failed source to work again`, async () => {
      let failing = true;
      const source = (out: Uint8Array) => {
        if (failing) throw new Error('EIO');
        out.fill(7);
      };
      const r = rig(new RngDevice({ queueSize: 16, source }), packed);
      r.guest.queues[0]!.add([], [{ addr: DATA, len: 32 }]);
      r.guest.kick(0);
      expect(await collect(r, 1, 0)).toEqual([]);
      failing = false;
      const restored = new RngDevice({ queueSize: 16, source });
      restart(r, restored);
      expect(await collect(r, 1)).toEqual([32]);
      expect(r.memory.slice(DATA, 32).every((b) => b === 7)).toBe(true);
    });

    it(`block over ${ring}: requests left for the next turn when the budget ran out`, async () => {
      const backend = new MemoryBackend(64 * 1024);
      const options = { backend, queueSize: 16, maxChainsPerTurn: 1, logger: silentLogger };
      const device = new BlockDevice(options);
      const r = rig(device, packed);
      const q = r.guest.queues[0]!;
      for (let i = 0; i < 3; i++) {
        const at = DATA + i * 0x1000;
        r.memory.write(at, new Uint8Array(16)); // IN, sector 0
        q.add(
          [{ addr: at, len: 16 }],
          [
            { addr: at + 0x100, len: 512 },
            { addr: at + 0x400, len: 1 },
          ],
        );
      }
      r.guest.kick(0);
      // One request per turn: one served, a continuation scheduled for the rest.
      expect(await collect(r, 1, 0)).toEqual([513]);
      expect(device.yields).toBe(1);
      const restored = new BlockDevice({ ...options, backend: new MemoryBackend(64 * 1024) });
      restart(r, restored);
      expect(await collect(r, 2)).toEqual([513, 513]);
      // Passes after a restore are not yields of a spent budget.
      expect(restored.stats.requests).toBe(3);
    });
  }

  it('a device restored inactive, or needing a reset, schedules nothing', () => {
    const scheduled: number[] = [];
    const schedule = (_cb: () => void, q: number) => scheduled.push(q);
    const r = rig(new RngDevice({ queueSize: 16, schedule }), false);
    const live = JSON.parse(JSON.stringify(r.transport.save()));
    // Needing a reset: the device serves nothing until the driver resets it.
    const broken = structuredClone(live);
    broken.device.needsReset = true;
    const d = new RngDevice({ queueSize: 16, schedule });
    new MmioTransport(d, r.memory, { logger: silentLogger }).restore(broken);
    expect(scheduled).toEqual([]);
    // Reset by the driver (status 0): inactive.
    r.transport.write(MMIO.STATUS, 4, 0);
    const inactive = JSON.parse(JSON.stringify(r.transport.save()));
    new MmioTransport(new RngDevice({ queueSize: 16, schedule }), r.memory, {
      logger: silentLogger,
    }).restore(inactive);
    expect(scheduled).toEqual([]);
    // The live state schedules one pass over the ring (the test's control).
    new MmioTransport(new RngDevice({ queueSize: 16, schedule }), r.memory, {
      logger: silentLogger,
    }).restore(live);
    expect(scheduled).toEqual([0]);
  });
});
