/**
 * A restore of a device in a worker happens in one step of the worker's loop (CMD_RESTORE), as
 * in process: a sibling device of the same worker (the link partner of a net pair) that keeps
 * sending cannot deliver a frame into the device between its activation and the commit of its
 * state. Before, those were three commands with the loop running in between, and the commit
 * found the rings changed and killed the device.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { VIRTIO_NET_F_MAC } from '../../src/devices/net/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { NetGuestDriver } from '../../src/driver/devices/net.js';
import { GuestMemory } from '../../src/memory/index.js';
import type { DeviceWorkerSpec } from '../../src/node/device-factories.js';
import { NodeDeviceWorker } from '../../src/node/index.js';
import { silentLogger, VIRTIO_F_VERSION_1 } from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';

const src = (path: string) => JSON.stringify(new URL(`../../src/${path}`, import.meta.url).href);

// Two virtio-net devices on one cable, with a budget of one chain per turn (a sender keeps
// going through continuations the device schedules itself).
const MODULE = `
import { NetDevice, createNetPair } from ${src('devices/net/index.ts')};
export function pair(o) {
  const [a, b] = createNetPair();
  return [
    new NetDevice({ backend: a, mac: '52:54:00:00:00:01', queueSize: 256, maxChainsPerTurn: 1 }),
    new NetDevice({ backend: b, mac: '52:54:00:00:00:02', queueSize: 256, maxChainsPerTurn: 1 }),
  ];
}
`;

const spec: DeviceWorkerSpec = {
  kind: 'module',
  module: `data:text/javascript,${encodeURIComponent(MODULE)}`,
  export: 'pair',
};

const open: NodeDeviceWorker[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((w) => w.close()));
});

describe('restore of a net device in a worker while its link partner sends', () => {
  it('the restored device survives, as it does in-process', async () => {
    const memory = GuestMemory.create(16 << 20, { shared: true });
    const worker = await NodeDeviceWorker.spawn(spec, memory, {
      timeoutMs: 3000,
      host: { logging: 'silent' },
    });
    open.push(worker);
    const ends = [0, 1].map((i) => {
      const proxy = worker.devices[i]!;
      const t = new MmioTransport(proxy, memory, { logger: silentLogger });
      const drv = new NetGuestDriver(
        t,
        memory,
        new GuestAllocator(memory, 0x10000 + i * 0x700000, 0x700000 + i * 0x700000),
        { waiter: proxy.waiter(20), queueSize: 256, rxBuffers: 256, txSlots: 256 },
      );
      drv.init(featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MAC));
      return { proxy, t, drv };
    });
    const [a, b] = ends as [(typeof ends)[0], (typeof ends)[0]];
    const frame = new Uint8Array(1000);
    frame.set(a.drv.mac!, 0);
    frame.set(b.drv.mac!, 6);
    frame[12] = 0x88;
    frame[13] = 0xb5;
    let failures = 0;
    for (let round = 0; round < 5 && failures === 0; round++) {
      // B sends a burst to A; its device works through it one chain per loop turn.
      for (let k = 0; k < 200; k++) if (!b.drv.trySend(frame)) break;
      // A's VM is saved and restored (a rollback to a consistent state of its own) meanwhile.
      const state = JSON.parse(JSON.stringify(a.t.save()));
      a.t.restore(state);
      if (a.proxy.error !== null) failures++;
      await new Promise((res) => setTimeout(res, 30));
      a.drv.receiveAll();
      a.drv.postRx();
      b.drv.reapTx();
    }
    expect(a.proxy.error?.message ?? null).toBeNull();
  }, 30_000);
});
