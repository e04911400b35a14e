/**
 * The network device with IN_ORDER and mergeable receive buffers across a migration and a
 * receive queue the driver stops (MMIO QueueReady 0): held chains go back in order after a
 * restore; a stopped receive queue with held chains and a frame waiting gets nothing written,
 * and after a reset the frame is delivered. Over every ring variant.
 */
import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import {
  createNetPair,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
} from '../../src/devices/net/index.js';
import { SnapshotError } from '../../src/errors.js';
import { VIRTIO_F_IN_ORDER } from '../../src/queue/constants.js';
import { MMIO } from '../../src/transport/mmio.js';
import { MAC_A, MAC_B, migrateNet, netSide, RINGS, testFrame, World } from './net-rig.js';

const IN_ORDER = featureBit(VIRTIO_F_IN_ORDER);
const BASE = featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
const RAW = 0x3f0000;

describe.each(RINGS)(
  'net, IN_ORDER and mergeable buffers across a restore and a stopped queue, $name',
  (ring) => {
    const F = ring.features | BASE | IN_ORDER;
    it('held chains survive a migration and go back in order', async () => {
      const world = new World();
      const [ea, eb] = createNetPair();
      const a = netSide(world, ea, { device: { mac: MAC_A, inOrder: true } });
      let b = netSide(world, eb, {
        device: { mac: MAC_B, inOrder: true },
        driver: { postRxBuffers: false },
      });
      a.guest.init(F);
      b.guest.init(F);
      const rx = b.guest.mmio.queues[0]!;
      const good = [0, 1].map((k) => rx.add([], [{ addr: RAW + k * 0x100, len: 64 }]));
      await a.guest.send(testFrame(MAC_B, MAC_A, 1, 200));
      b.guest.mmio.kick(0);
      expect(b.device.heldRxChains).toBe(2);
      const [, eb2] = createNetPair();
      b = migrateNet(world, b, eb2);
      expect(b.device.heldRxChains).toBe(2);
      const bad = rx.add([{ addr: RAW + 0x800, len: 64 }], []);
      b.guest.mmio.kick(0);
      const back: number[] = [];
      for (let id = rx.popUsed(); id >= 0; id = rx.popUsed()) back.push(id);
      expect(back).toEqual([good[0], good[1], bad]);
      const ids = [0, 1, 2, 3].map((k) =>
        rx.add([], [{ addr: RAW + 0x1000 + k * 0x100, len: 64 }]),
      );
      b.guest.mmio.kick(0);
      await new Promise((r) => setTimeout(r, 5));
      const used: number[] = [];
      for (let id = rx.popUsed(); id >= 0; id = rx.popUsed()) used.push(id);
      expect(used).toEqual(ids);
    });

    it('QueueReady 0 on the receive queue with held chains and a pending frame: nothing written, reset recovers the frame', async () => {
      const world = new World();
      const [ea, eb] = createNetPair();
      const a = netSide(world, ea, { device: { mac: MAC_A, inOrder: true } });
      const b = netSide(world, eb, {
        device: { mac: MAC_B, inOrder: true },
        driver: { postRxBuffers: false },
      });
      a.guest.init(F);
      b.guest.init(F);
      const rx = b.guest.mmio.queues[0]!;
      [0, 1].map((k) => rx.add([], [{ addr: RAW + k * 0x100, len: 64 }]));
      await a.guest.send(testFrame(MAC_B, MAC_A, 7, 200));
      b.guest.mmio.kick(0);
      expect(b.device.heldRxChains).toBe(2);
      b.transport.write(MMIO.QUEUE_SEL, 4, 0);
      b.transport.write(MMIO.QUEUE_READY, 4, 0);
      expect(b.device.heldRxChains).toBe(0);
      const before = b.memory.slice(0, b.memory.size).slice();
      rx.add([], [{ addr: RAW + 0x2000, len: 1600 }]);
      const snap = b.memory.slice(0, b.memory.size).slice();
      b.transport.write(MMIO.QUEUE_NOTIFY, 4, 0);
      await a.guest.send(testFrame(MAC_B, MAC_A, 8, 100));
      await new Promise((r) => setTimeout(r, 5));
      const after = b.memory.slice(0, b.memory.size);
      let diff = -1;
      for (let i = 0; i < after.length; i++)
        if (after[i] !== snap[i]) {
          diff = i;
          break;
        }
      expect(diff).toBe(-1);
      void before;
      // save/restore round trip over the stopped queue
      const state = JSON.parse(JSON.stringify(b.transport.save()));
      b.transport.restore(state);
      // reset and re-init: both frames arrive, in order
      b.guest.init(F);
      b.guest.postRx();
      await new Promise((r) => setTimeout(r, 5));
      const got = b.guest
        .receiveAll()
        .map((f) => new DataView(f.data.buffer, f.data.byteOffset).getUint32(14));
      expect(got).toEqual([7, 8]);
    });
  },
);

describe('net restore: a control buffer in flight is refused', () => {
  it('on a new device (the control queue comes from the state restored, not the device now)', () => {
    const world = new World();
    const [ea] = createNetPair();
    const a = netSide(world, ea, { device: { mac: MAC_A, controlQueue: true } });
    const F = RINGS[2]!.features | BASE | featureBit(VIRTIO_NET_F_CTRL_VQ); // packed
    const m = a.guest.mmio;
    m.negotiate(F);
    for (let i = 0; i < 3; i++) m.setupQueue(i, 16);
    m.start();
    const state = JSON.parse(JSON.stringify(a.transport.save()));
    expect(state.queues[2].active).toBe(true);
    // The control queue (2) with a buffer in flight: the device answers control requests at
    // once, so no state it saved has one; a crafted state that does is refused.
    for (const q of [state.queues[2], state.device.queues[2]]) {
      q.nextAvail = 1;
      q.inFlight = [[0, 1]];
    }
    const b = netSide(world, createNetPair()[0], { device: { mac: MAC_A, controlQueue: true } });
    let error: unknown = null;
    try {
      b.transport.restore(state);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(SnapshotError);
    expect(String(error)).toMatch(/queue 2 has buffers in flight/);
  });
});
