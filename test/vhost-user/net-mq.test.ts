/**
 * A multiqueue network device behind the vhost-user back-end: the front-end serves the control
 * queue, so the back-end has only the 2N data rings, answers GET_QUEUE_NUM in queue pairs (as
 * QEMU's net/vhost-user.c and DPDK's vhost library count them), and accepts MQ without CTRL_VQ
 * in SET_FEATURES (DPDK's virtio-user strips CTRL_VQ).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import {
  NetDevice,
  SinkBackend,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MQ,
} from '../../src/devices/net/index.js';
import { SplitDriver } from '../../src/driver/index.js';
import {
  isNativeAvailable,
  loadNative,
  VhostUserBackend,
  type VhostUserNative,
} from '../../src/vhost-user/index.js';
import { HandBackend, udpFrame } from '../devices/net-mq-rig.js';
import {
  concat,
  Frontend,
  guestRam,
  HALF,
  memTable,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  QSIZE,
  R,
  RING_GPA,
  silent,
  USER0,
  USER1,
  u32s,
  u64,
  VERSION_1,
  vringAddr,
} from './frontend.js';

const nativeOk = isNativeAvailable();
const MQ = featureBit(VIRTIO_NET_F_MQ);
const CTRL_VQ = featureBit(VIRTIO_NET_F_CTRL_VQ);

describe.runIf(nativeOk)('vhost-user back-end with a multiqueue network device', () => {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });

  function serve(queuePairs: number) {
    const device = new NetDevice({ backend: new SinkBackend(), queuePairs, queueSize: 64 });
    const backend = new VhostUserBackend(device, { native: n, logger: silent });
    cleanups.push(() => backend.close());
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    cleanups.push(() => fe.close());
    return { device, backend, fe };
  }

  async function start(fe: Frontend): Promise<bigint> {
    const features = await fe.u64(R.GET_FEATURES);
    expect(features & PROTOCOL_BIT).toBe(PROTOCOL_BIT);
    await fe.u64(R.GET_PROTOCOL_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES));
    return features;
  }

  it('serves 2N rings, answers GET_QUEUE_NUM with N pairs and takes MQ without CTRL_VQ', async () => {
    const { backend, fe } = serve(3);
    const features = await start(fe);
    expect(features & (MQ | CTRL_VQ)).toBe(MQ | CTRL_VQ);
    expect(await fe.u64(R.GET_QUEUE_NUM)).toBe(3n);
    // max_virtqueue_pairs (offset 8) through GET_CONFIG.
    fe.send(R.GET_CONFIG, concat(u32s(8, 2, 0), new Uint8Array(2)));
    const cfg = await fe.recv();
    expect(new DataView(cfg!.payload.buffer).getUint16(12, true)).toBe(3);
    // The features DPDK's virtio-user acknowledges: MQ, with CTRL_VQ stripped.
    expect(await fe.acked(R.SET_FEATURES, u64(VERSION_1 | PROTOCOL_BIT | MQ))).toBe(0n);
    expect(backend.negotiatedFeatures & (MQ | CTRL_VQ)).toBe(MQ | CTRL_VQ);
    // Rings 0..5 exist; the control queue (6) is the front-end's.
    expect(await fe.acked(R.SET_VRING_NUM, u32s(5, 64))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_NUM, u32s(6, 64))).not.toBe(0n);
  });

  it('a region added by each vhost device of the connection (QEMU 7.2 multiqueue) is counted', async () => {
    const { backend, fe } = serve(2);
    await start(fe);
    const { memfd } = guestRam(n, cleanups);
    const region = (user: number) => concat(u64(0), u64(0), u64(HALF), u64(user), u64(0));
    expect(await fe.acked(R.ADD_MEM_REG, region(USER0), [memfd])).toBe(0n);
    expect(await fe.acked(R.ADD_MEM_REG, region(USER0), [memfd])).toBe(0n);
    expect(backend.memoryTable.regions.length).toBe(1);
    // Overlapping but not the same region: refused.
    expect(await fe.acked(R.ADD_MEM_REG, region(USER1), [memfd])).not.toBe(0n);
    expect(await fe.acked(R.REM_MEM_REG, region(USER0))).toBe(0n);
    expect(backend.memoryTable.regions.length).toBe(1);
    expect(await fe.acked(R.REM_MEM_REG, region(USER0))).toBe(0n);
    expect(backend.memoryTable.regions.length).toBe(0);
    expect(await fe.acked(R.REM_MEM_REG, region(USER0))).not.toBe(0n);
  });

  it('steers frames only to pairs whose receive ring runs (SET_VRING_ENABLE per ring)', async () => {
    const backend0 = new HandBackend();
    const device = new NetDevice({ backend: backend0, queuePairs: 2, queueSize: 64 });
    const backend = new VhostUserBackend(device, { native: n, logger: silent });
    cleanups.push(() => backend.close());
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    cleanups.push(() => fe.close());
    const { memfd, guest } = guestRam(n, cleanups);
    await start(fe);
    expect(await fe.acked(R.SET_FEATURES, u64(VERSION_1 | PROTOCOL_BIT | MQ))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);
    const rx = new Map<number, SplitDriver>();
    for (const ring of [0, 2]) {
      const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA + ring * 0x1000 });
      const { desc, avail, used } = driver.layout;
      const kick = n.eventfd(0, n.constants.EFD_NONBLOCK);
      cleanups.push(() => n.close(kick));
      expect(await fe.acked(R.SET_VRING_NUM, u32s(ring, QSIZE))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_BASE, u32s(ring, 0))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(ring, desc, avail, used))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_KICK, u64(ring), [kick])).toBe(0n);
      for (let i = 0; i < QSIZE; i++) {
        driver.add([], [{ addr: 0x1000 + (ring * QSIZE + i) * 0x800, len: 0x800 }]);
      }
      driver.kick();
      expect(await fe.acked(R.SET_VRING_ENABLE, u32s(ring, 1))).toBe(0n);
      rx.set(ring, driver);
    }
    expect(device.activePairs).toBe(2);
    /** Used receive buffers of `ring`, each posted again. */
    const drain = (ring: number) => {
      const d = rx.get(ring)!;
      let k = 0;
      for (let id = d.popUsed(); id >= 0; id = d.popUsed()) {
        d.add([], [{ addr: 0x1000 + (ring * QSIZE + k) * 0x800, len: 0x800 }]);
        k++;
      }
      d.kick();
      return k;
    };
    const push = () => {
      for (let f = 0; f < 12; f++) expect(backend0.push(udpFrame(f, 0))).toBe(true);
    };
    push();
    const first = [drain(0), drain(2)];
    expect(first[0]! + first[1]!).toBe(12);
    expect(first[0]).toBeGreaterThan(0);
    expect(first[1]).toBeGreaterThan(0);
    // The front-end disables pair 2's receive ring: nothing more goes there.
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(2, 0))).toBe(0n);
    push();
    expect(drain(2)).toBe(0);
    expect(drain(0)).toBe(12);
    expect(device.pendingFrames).toBe(0);
    expect(device.needsReset).toBe(false);
  });

  it('a single-pair device has two rings, one pair and no control queue', async () => {
    const { fe } = serve(1);
    const features = await start(fe);
    expect(features & (MQ | CTRL_VQ)).toBe(0n);
    expect(await fe.u64(R.GET_QUEUE_NUM)).toBe(1n);
    expect(await fe.acked(R.SET_VRING_NUM, u32s(2, 64))).not.toBe(0n);
  });
});
