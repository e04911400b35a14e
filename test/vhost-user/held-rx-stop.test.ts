/**
 * A split receive ring stopped with GET_VRING_BASE while the network device holds receive
 * chains (MRG_RXBUF, a frame waiting for more buffers): the base reported counts the held
 * chains as taken, so the device gives them back (used, length 0) before it answers. Before,
 * the device was reset once every ring had stopped and forgot them: the guest's buffers were
 * neither used nor given back, and a front-end resuming from that base lost them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { NetDevice, VIRTIO_NET_F_MRG_RXBUF } from '../../src/devices/net/index.js';
import { SplitDriver } from '../../src/driver/index.js';
import {
  isNativeAvailable,
  loadNative,
  VhostUserBackend,
  type VhostUserNative,
} from '../../src/vhost-user/index.js';
import { HandBackend, udpFrame } from '../devices/net-mq-rig.js';
import {
  Frontend,
  guestRam,
  memTable,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  QSIZE,
  R,
  RING_GPA,
  setupSplitRing,
  silent,
  u32s,
  u64,
  VERSION_1,
} from './frontend.js';

const nativeOk = isNativeAvailable();
const MRG = featureBit(VIRTIO_NET_F_MRG_RXBUF);

describe.runIf(nativeOk)('held receive chains across GET_VRING_BASE (split ring)', () => {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });

  it('every chain counted in the reported base is used (none silently dropped)', async () => {
    const hand = new HandBackend();
    const device = new NetDevice({ backend: hand, queuePairs: 1, queueSize: 64 });
    const backend = new VhostUserBackend(device, { native: n, logger: silent });
    cleanups.push(() => backend.close());
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    cleanups.push(() => fe.close());
    const { memfd, guest } = guestRam(n, cleanups);

    await fe.u64(R.GET_FEATURES);
    await fe.u64(R.GET_PROTOCOL_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES));
    expect(await fe.acked(R.SET_FEATURES, u64(VERSION_1 | PROTOCOL_BIT | MRG))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);

    const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA });
    const { used } = driver.layout;
    const kick = n.eventfd(0, n.constants.EFD_NONBLOCK);
    cleanups.push(() => n.close(kick));
    await setupSplitRing(fe, 0, driver.layout, kick);
    // One small receive buffer: a 1000-byte frame needs more (MRG_RXBUF), so the device holds it.
    driver.add([], [{ addr: 0x1000, len: 256 }]);
    driver.kick();
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);
    hand.push(udpFrame(1, 1, 1000));
    expect(device.heldRxChains).toBe(1);

    // The front-end stops the device (QEMU's vhost_dev_stop): GET_VRING_BASE on every ring.
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    const r0 = await fe.recv();
    const base = new DataView(r0!.payload.buffer).getUint32(4, true);
    fe.send(R.GET_VRING_BASE, u32s(1, 0));
    await fe.recv();
    expect(device.heldRxChains).toBe(0);

    const usedIdx = guest.readU16(used + 2);
    // The held buffer came back unused: length 0 in its used element.
    expect(usedIdx).toBe(1);
    expect(guest.readU32(used + 4)).toBe(0);
    expect(guest.readU32(used + 8)).toBe(0);
    // A chain the base says was taken must come back used (or the base must not count it).
    expect(
      base - usedIdx,
      `base ${base} counts chains that were never used (used.idx ${usedIdx})`,
    ).toBe(0);
  });
});
