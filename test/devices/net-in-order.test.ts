/**
 * VIRTIO_F_IN_ORDER on the network device: every queue's buffers are used in the order the
 * driver made them available (§2.7.9, §2.8.8), which the spec-exact drivers check (an id out of
 * order is a DeviceBehaviourError). The receive side's one hard case: chains held for a mergeable
 * frame, then an unusable buffer behind them. The transmit side completes a pass with one used
 * entry.
 */
import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import {
  createNetPair,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
} from '../../src/devices/net/index.js';
import { VIRTIO_NET_HDR_SIZE } from '../../src/devices/net/request.js';
import { VIRTIO_F_IN_ORDER } from '../../src/queue/constants.js';
import { frameSeq, MAC_A, MAC_B, netSide, RINGS, testFrame, World } from './net-rig.js';

const IN_ORDER = featureBit(VIRTIO_F_IN_ORDER);
const BASE = featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
/** Receive buffers the test posts itself, past what the driver allocates. */
const RAW = 0x3f0000;

function pair(inOrderOffered = true) {
  const world = new World();
  const [ea, eb] = createNetPair();
  const a = netSide(world, ea, { device: { mac: MAC_A, inOrder: inOrderOffered } });
  const b = netSide(world, eb, {
    device: { mac: MAC_B, inOrder: inOrderOffered },
    driver: { postRxBuffers: false },
  });
  return { world, a, b };
}

describe.each(RINGS)('virtio-net with VIRTIO_F_IN_ORDER over $name', (ring) => {
  const F = ring.features | BASE | IN_ORDER;

  it('is offered and negotiated', () => {
    const { a, b } = pair();
    a.guest.init(F);
    b.guest.init(F);
    expect(a.device.offeredFeatures & IN_ORDER).toBe(IN_ORDER);
    expect(b.guest.features & IN_ORDER).toBe(IN_ORDER);
    expect(pair(false).a.device.offeredFeatures & IN_ORDER).toBe(0n);
  });

  it('chains held for a frame go back, in order, before an unusable buffer made available after them', async () => {
    const { a, b } = pair();
    a.guest.init(F);
    b.guest.init(F);
    const rx = b.guest.mmio.queues[0]!;
    const good = [0, 1].map((k) => rx.add([], [{ addr: RAW + k * 0x100, len: 64 }]));
    // A 200-byte frame needs four 64-byte buffers: the device holds the two it has.
    await a.guest.send(testFrame(MAC_B, MAC_A, 1, 200));
    b.guest.mmio.kick(0);
    expect(b.device.pendingFrames).toBe(1);
    expect(rx.popUsed()).toBe(-1);
    // A device-readable buffer cannot take a frame: it goes back unused, and with IN_ORDER the
    // two held before it go back first.
    const bad = rx.add([{ addr: RAW + 0x800, len: 64 }], []);
    b.guest.mmio.kick(0);
    const back: [number, number][] = [];
    for (let id = rx.popUsed(); id >= 0; id = rx.popUsed()) back.push([id, rx.lastUsedLen]);
    expect(back).toEqual([
      [good[0]!, 0],
      [good[1]!, 0],
      [bad, 0],
    ]);
    expect(b.device.stats.rxBadBuffers).toBe(1);
    expect(b.device.stats.rxInOrderReturned).toBe(2);
    // Four good buffers: the frame arrives whole, in them, in order.
    const ids = [0, 1, 2, 3].map((k) => rx.add([], [{ addr: RAW + 0x1000 + k * 0x100, len: 64 }]));
    b.guest.mmio.kick(0);
    const used: number[] = [];
    let total = 0;
    for (let id = rx.popUsed(); id >= 0; id = rx.popUsed()) {
      used.push(id);
      total += rx.lastUsedLen;
    }
    expect(used).toEqual(ids);
    expect(total).toBe(VIRTIO_NET_HDR_SIZE + 200);
    expect(b.memory.readU16(RAW + 0x1000 + 10)).toBe(4); // num_buffers
    expect(b.device.pendingFrames).toBe(0);
  });

  it('transmit: many frames in one pass come back as one batch, and all arrive in order', async () => {
    const { a, b } = pair();
    a.guest.init(F);
    b.guest.init(F);
    b.guest.postRx();
    for (let s = 0; s < 20; s++)
      expect(a.guest.trySend(testFrame(MAC_B, MAC_A, s, 100))).toBe(true);
    const got: number[] = [];
    for (let f = b.guest.tryReceive(); f !== null; f = b.guest.tryReceive())
      got.push(frameSeq(f.data));
    expect(got).toEqual(Array.from({ length: 20 }, (_, s) => s));
    a.guest.reapTx();
    expect(a.guest.txPending).toBe(0);
    expect(a.device.stats.txFrames).toBe(20);
  });
});
