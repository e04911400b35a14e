import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { featureBit, STATUS_DEVICE_NEEDS_RESET, VIRTIO_ID_NET } from '../../src/devices/device.js';
import {
  createNetPair,
  NET_OFFLOAD_FEATURES,
  type NetBackend,
  type NetPort,
  type NetState,
  NetSwitch,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_S_LINK_UP,
} from '../../src/devices/net/index.js';
import { FeaturesRefusedError } from '../../src/driver/mmio.js';
import { INT_CONFIG_CHANGE, MMIO } from '../../src/transport/mmio.js';
import {
  BROADCAST,
  frameSeq,
  MAC_A,
  MAC_B,
  MAC_C,
  migrateNet,
  netSide,
  RINGS,
  testFrame,
  World,
} from './net-rig.js';

const MRG = featureBit(VIRTIO_NET_F_MRG_RXBUF);
const BASIC =
  featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_STATUS) | featureBit(VIRTIO_NET_F_MTU);

/** A frame source the test drives by hand through the device's port (sends are taken). */
function handSource(): { source: NetBackend; port: () => NetPort } {
  let attached: NetPort | null = null;
  const source: NetBackend = {
    offloads: 0n,
    attach: (p) => {
      attached = p;
    },
    detach: () => {
      attached = null;
    },
    send: () => true,
    resumeRx: () => {},
  };
  return {
    source,
    port: () => {
      if (attached === null) throw new Error('no device attached');
      return attached;
    },
  };
}

/** Two guests on one in-process cable. */
function pair(o: Parameters<typeof netSide>[2] = {}, ob: Parameters<typeof netSide>[2] = o) {
  const world = new World();
  const [ea, eb] = createNetPair();
  const a = netSide(world, ea, { ...o, device: { mac: MAC_A, ...o.device } });
  const b = netSide(world, eb, { ...ob, device: { mac: MAC_B, ...ob.device } });
  return { world, ea, eb, a, b };
}

describe.each(RINGS)('virtio-net over $name', (ring) => {
  const F = ring.features | BASIC | MRG;

  it('frames offered from one buffer at other offsets, lengths and buffers each arrive as offered', async () => {
    // The device keeps the array of the last large frame it copied (rx-frames.ts, frameBytes):
    // a frame of the same length from another offset, or from the same offset with another
    // length, or from another buffer, must not be served from it.
    const { source, port } = handSource();
    const world = new World();
    const b = netSide(world, source, { device: { mac: MAC_B } });
    b.guest.init(F);
    const big = new Uint8Array(8192);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >>> 8)) & 0xff;
    const other = big.slice();
    other.reverse();
    const offers: [Uint8Array, number, number][] = [
      [big, 0, 1400],
      [big, 100, 1400],
      [big, 3, 1400],
      [big, 3, 1300],
      [big, 3, 1300],
      [other, 3, 1300],
      [big, 3, 1300],
      [big, 3, 1400],
    ];
    const want: Uint8Array[] = [];
    world.run(() => {
      for (const [buf, off, len] of offers) {
        // A view longer than the frame: only `length` bytes are the frame.
        const frame = buf.subarray(off, off + len + 16);
        port().burst(() => expect(port().receive(frame, len, null)).toBe(true));
        want.push(buf.slice(off, off + len));
      }
    });
    for (const w of want) expect((await b.guest.receive()).data).toEqual(w);
  });

  it('an unusable receive buffer taken during a burst is given back when the burst ends', () => {
    const { source, port } = handSource();
    const world = new World();
    const b = netSide(world, source, {
      device: { mac: MAC_B },
      driver: { postRxBuffers: false },
    });
    b.guest.init(F);
    const rx = b.guest.mmio.queues[0]!;
    // The driver's only receive buffer is device-readable: the device must return it unused.
    const bad = rx.add([{ addr: 0x3f0000, len: 64 }], []);
    rx.kick(); // published, not notified
    const frame = testFrame(MAC_B, MAC_A, 1, 200);
    world.run(() => {
      port().burst(() => expect(port().receive(frame, frame.length, null)).toBe(false));
    });
    expect(b.device.stats.rxBadBuffers).toBe(1);
    // Published when the burst ended, with no notification from the driver.
    expect(rx.popUsed()).toBe(bad);
    expect(rx.lastUsedLen).toBe(0);
  });

  it('two devices exchange frames both ways, contents intact and in order', async () => {
    const { a, b } = pair();
    a.guest.init(F);
    b.guest.init(F);
    const sizes = [14, 60, 64, 100, 512, 1000, 1514, 1513, 15, 1200];
    const toB = sizes.map((n, i) => testFrame(MAC_B, MAC_A, i, n));
    const toA = sizes.map((n, i) => testFrame(MAC_A, MAC_B, 1000 + i, n));
    const recvB = Promise.all(toB.map(() => b.guest.receive()));
    const recvA = Promise.all(toA.map(() => a.guest.receive()));
    for (let i = 0; i < sizes.length; i++) {
      await a.guest.send(toB[i]!);
      await b.guest.send(toA[i]!);
    }
    const [gotB, gotA] = await Promise.all([recvB, recvA]);
    expect(gotB.map((f) => f.data)).toEqual(toB);
    expect(gotA.map((f) => f.data)).toEqual(toA);
    for (const f of [...gotA, ...gotB]) {
      expect(f.header).toEqual({
        flags: 0,
        gsoType: 0,
        hdrLen: 0,
        gsoSize: 0,
        csumStart: 0,
        csumOffset: 0,
      });
    }
    expect(a.device.stats.txFrames).toBe(sizes.length);
    expect(b.device.stats.rxFrames).toBe(sizes.length);
    expect(a.device.stats.txBytes).toBe(sizes.reduce((s, n) => s + n, 0));
    a.guest.reapTx();
    expect(a.guest.txPending).toBe(0);
  });

  it('the guest sees MAC, link status and MTU, and a configuration interrupt when the link changes', () => {
    const { a, b } = pair({ device: { mtu: 9000 } });
    a.guest.init(F);
    expect(a.transport.read(MMIO.DEVICE_ID, 4)).toBe(VIRTIO_ID_NET);
    expect(Array.from(a.guest.mac!)).toEqual(Array.from(MAC_A));
    expect(a.guest.mtu).toBe(9000);
    expect(a.guest.status).toBe(VIRTIO_NET_S_LINK_UP);
    expect(a.guest.linkUp).toBe(true);
    const gen = a.transport.read(MMIO.CONFIG_GENERATION, 4);
    a.device.setLinkUp(false);
    expect(a.transport.interruptStatus & INT_CONFIG_CHANGE).not.toBe(0);
    expect(a.transport.read(MMIO.CONFIG_GENERATION, 4)).not.toBe(gen);
    a.guest.handleInterrupt();
    expect(a.guest.linkUp).toBe(false);
    expect(a.guest.configChanges).toBe(1);
    // Link down: transmitted frames are dropped and counted.
    b.guest.init(F);
    expect(a.guest.trySend(testFrame(MAC_B, MAC_A, 1, 64))).toBe(true);
    expect(a.device.stats.txLinkDown).toBe(1);
    expect(b.guest.tryReceive()).toBeNull();
    a.device.setLinkUp(true);
    a.guest.handleInterrupt();
    expect(a.guest.linkUp).toBe(true);
    expect(a.guest.trySend(testFrame(MAC_B, MAC_A, 2, 64))).toBe(true);
    expect(frameSeq(b.guest.tryReceive()!.data)).toBe(2);
  });

  it('without MAC/STATUS/MTU negotiated the guest assumes the link is up and reads nothing', () => {
    const { a } = pair({ device: { mtu: 1500 } });
    a.guest.init(ring.features);
    expect(a.guest.mac).toBeNull();
    expect(a.guest.mtu).toBeNull();
    expect(a.guest.linkUp).toBe(true);
  });

  it('mergeable receive buffers: a frame spreads over several small buffers', async () => {
    const { a, b } = pair({}, { driver: { rxBufferSize: 128, rxDescriptors: 2 } });
    a.guest.init(F);
    b.guest.init(F);
    const frames = [1514, 116, 117, 500, 14].map((n, i) => testFrame(MAC_B, MAC_A, i, n));
    for (const f of frames) await a.guest.send(f);
    const got = [];
    for (let i = 0; i < frames.length; i++) got.push(await b.guest.receive());
    expect(got.map((g) => g.data)).toEqual(frames);
    // 12 header bytes + frame, in buffers of 128 bytes.
    expect(got.map((g) => g.buffers)).toEqual([12, 1, 2, 4, 1]);
  });

  it('without MRG_RXBUF a frame uses one buffer, and a frame larger than the buffer is dropped', async () => {
    const { a, b } = pair({}, { driver: { rxBufferSize: 600 } });
    const f = ring.features | BASIC;
    a.guest.init(f);
    b.guest.init(f);
    await a.guest.send(testFrame(MAC_B, MAC_A, 1, 588));
    await a.guest.send(testFrame(MAC_B, MAC_A, 2, 589)); // 589 + 12 > 600
    await a.guest.send(testFrame(MAC_B, MAC_A, 3, 100));
    const got = b.guest.receiveAll();
    expect(got.map((g) => [frameSeq(g.data), g.buffers])).toEqual([
      [1, 1],
      [3, 1],
    ]);
    expect(b.device.stats.rxTooBig).toBe(1);
  });

  it('back-pressure: frames sent while the receiver has no buffers all arrive, in order, once buffers come', async () => {
    const { a, b } = pair(
      { device: { pendingFrames: 8 } },
      { device: { pendingFrames: 8 }, driver: { postRxBuffers: false } },
    );
    a.guest.init(F);
    b.guest.init(F);
    const total = 200;
    let sent = 0;
    while (sent < total && a.guest.trySend(testFrame(MAC_B, MAC_A, sent, 60 + (sent % 50)))) sent++;
    // The receiver's device holds 8 frames; the sender's device waits with the rest in its ring.
    expect(b.device.pendingFrames).toBe(8);
    expect(a.device.stats.txFrames).toBe(8);
    expect(sent).toBeGreaterThan(8);
    expect(sent).toBeLessThan(total);
    const seqs: number[] = [];
    b.guest.postRx(3);
    for (let round = 0; seqs.length < total && round < 1000; round++) {
      for (const f of b.guest.receiveAll()) seqs.push(frameSeq(f.data));
      while (sent < total && a.guest.trySend(testFrame(MAC_B, MAC_A, sent, 60 + (sent % 50))))
        sent++;
    }
    expect(seqs).toEqual(Array.from({ length: total }, (_, i) => i));
    expect(b.device.pendingFrames).toBe(0);
    expect(a.device.stats.txFrames).toBe(total);
  });

  it('back-pressure with async senders and a receiver that starts late', async () => {
    const { a, b } = pair(
      { device: { pendingFrames: 4 } },
      { device: { pendingFrames: 4 }, driver: { postRxBuffers: false } },
    );
    a.guest.init(F);
    b.guest.init(F);
    const n = 150;
    const sender = (async () => {
      for (let i = 0; i < n; i++) await a.guest.send(testFrame(MAC_B, MAC_A, i, 200));
    })();
    const receiver = (async () => {
      for (let i = 0; i < 50; i++) await Promise.resolve();
      b.guest.postRx();
      const out: number[] = [];
      for (let i = 0; i < n; i++) out.push(frameSeq((await b.guest.receive()).data));
      return out;
    })();
    const [, got] = await Promise.all([sender, receiver]);
    expect(got).toEqual(Array.from({ length: n }, (_, i) => i));
  });

  it('feature negotiation: dependencies of §5.1.3.1 are enforced at FEATURES_OK', () => {
    const { a } = pair();
    const v1 = ring.features;
    const bit = (b: number) => featureBit(b);
    const accepted = a.guest.init(F | NET_OFFLOAD_FEATURES);
    expect(accepted & NET_OFFLOAD_FEATURES).toBe(NET_OFFLOAD_FEATURES);
    const refused = [
      bit(VIRTIO_NET_F_GUEST_TSO4), // needs GUEST_CSUM
      bit(VIRTIO_NET_F_HOST_TSO4), // needs CSUM
      bit(VIRTIO_NET_F_HOST_TSO6),
      bit(VIRTIO_NET_F_GUEST_ECN) | bit(VIRTIO_NET_F_GUEST_CSUM), // needs GUEST_TSO4 or 6
      bit(VIRTIO_NET_F_HOST_ECN) | bit(VIRTIO_NET_F_CSUM),
      bit(VIRTIO_NET_F_MQ), // not offered (needs CTRL_VQ)
      bit(VIRTIO_NET_F_CTRL_VQ),
    ];
    for (const f of refused) {
      expect(() => a.guest.init(0n, v1 | f)).toThrow(FeaturesRefusedError);
    }
    // And the device still works afterwards.
    a.guest.init(
      v1 |
        bit(VIRTIO_NET_F_GUEST_TSO4) |
        bit(VIRTIO_NET_F_GUEST_CSUM) |
        bit(VIRTIO_NET_F_GUEST_ECN),
    );
  });

  it('a device on a backend without offloads offers none', () => {
    const world = new World();
    const plain: NetBackend = {
      offloads: 0n,
      attach() {},
      detach() {},
      send: () => true,
      resumeRx() {},
    };
    const side = netSide(world, plain);
    expect(side.device.offeredFeatures & NET_OFFLOAD_FEATURES).toBe(0n);
    expect(() => side.guest.init(0n, ring.features | featureBit(VIRTIO_NET_F_CSUM))).toThrow(
      FeaturesRefusedError,
    );
    // And options can narrow an offloading backend: HOST_TSO4 without CSUM is not offered.
    const [eb] = createNetPair();
    const narrow = netSide(world, eb, {
      device: {
        offloads: featureBit(VIRTIO_NET_F_HOST_TSO4) | featureBit(VIRTIO_NET_F_GUEST_CSUM),
      },
    });
    expect(narrow.device.offeredFeatures & NET_OFFLOAD_FEATURES).toBe(
      featureBit(VIRTIO_NET_F_GUEST_CSUM),
    );
  });

  it('drops and counts unsupported transmit headers, then keeps working (§5.1.6.2)', async () => {
    const { a, b } = pair();
    a.guest.init(F);
    b.guest.init(F);
    const f = testFrame(MAC_B, MAC_A, 1, 200);
    await a.guest.send(f, { gsoType: VIRTIO_NET_HDR_GSO_TCPV4, gsoSize: 100 });
    expect(a.device.lastTxUnsupported).toBe('gso-not-negotiated');
    await a.guest.send(f, { flags: VIRTIO_NET_HDR_F_NEEDS_CSUM, csumStart: 20, csumOffset: 4 });
    expect(a.device.lastTxUnsupported).toBe('csum-not-negotiated');
    expect(a.device.stats.txUnsupported).toBe(2);
    expect(b.guest.tryReceive()).toBeNull();
    await a.guest.send(testFrame(MAC_B, MAC_A, 2, 200));
    expect(frameSeq((await b.guest.receive()).data)).toBe(2);
    a.guest.reapTx();
    expect(a.guest.txPending).toBe(0);
  });

  it('receive chains smaller than the header are returned unused and counted', async () => {
    const { a, b } = pair({}, { driver: { rxBufferSize: 8, rxBuffers: 2 } });
    a.guest.init(F);
    b.guest.init(F);
    expect(b.device.stats.rxBadBuffers).toBe(0);
    await a.guest.send(testFrame(MAC_B, MAC_A, 1, 64));
    expect(b.device.stats.rxBadBuffers).toBe(2);
    expect(b.guest.tryReceive()).toBeNull();
    expect(b.guest.rxErrors).toBe(2);
    expect(b.device.pendingFrames).toBe(1);
    expect(b.transport.status & STATUS_DEVICE_NEEDS_RESET).toBe(0);
  });

  it('reset in the middle of I/O: frames waiting in the device survive, ring contents and held chains do not', async () => {
    const { a, b } = pair(
      {},
      { device: { pendingFrames: 6 }, driver: { postRxBuffers: false, rxBufferSize: 128 } },
    );
    a.guest.init(F);
    b.guest.init(F);
    let sent = 0;
    while (a.guest.trySend(testFrame(MAC_B, MAC_A, sent, 300))) sent++;
    expect(b.device.pendingFrames).toBe(6);
    expect(a.device.stats.txFrames).toBe(6);
    expect(sent).toBeGreaterThan(6);
    // The sender resets with frames 6.. still in its ring: they go with its queues.
    a.guest.reset();
    expect(a.transport.status).toBe(0);
    a.guest.init(F);
    for (let i = 0; i < 5; i++)
      expect(a.guest.trySend(testFrame(MAC_B, MAC_A, 500 + i, 100))).toBe(true);
    expect(a.device.stats.txFrames).toBe(6);
    b.guest.postRx(2); // 256 bytes: not enough for 312, held by the device
    expect(b.device.heldRxChains).toBe(2);
    // The receiver resets and starts over: the frames inside its device are still there.
    b.guest.reset();
    expect(b.device.heldRxChains).toBe(0);
    expect(b.device.pendingFrames).toBe(6);
    b.guest.init(F);
    b.guest.postRx();
    const got: number[] = [];
    for (let i = 0; i < 10 && got.length < 11; i++) {
      for (const f of b.guest.receiveAll()) got.push(frameSeq(f.data));
      await Promise.resolve();
    }
    expect(got).toEqual([0, 1, 2, 3, 4, 5, 500, 501, 502, 503, 504]);
    expect(b.transport.status & STATUS_DEVICE_NEEDS_RESET).toBe(0);
  });

  it('snapshot in the middle of I/O: restored devices over copies of memory lose and repeat nothing', async () => {
    const { world, a, b } = pair(
      { device: { pendingFrames: 8 }, memoryBytes: 1 << 20 },
      {
        device: { pendingFrames: 8 },
        driver: { postRxBuffers: false, rxBufferSize: 256 },
        memoryBytes: 1 << 20,
      },
    );
    a.guest.init(F);
    b.guest.init(F);
    const total = 30;
    let sent = 0;
    while (sent < total && a.guest.trySend(testFrame(MAC_B, MAC_A, sent, 400))) sent++;
    b.guest.postRx(1); // 256 < 412: the chain is held inside the device
    expect(b.device.pendingFrames).toBe(8);
    expect(b.device.heldRxChains).toBe(1);
    const inRing = sent - a.device.stats.txFrames;
    expect(inRing).toBeGreaterThan(0);
    // Both VMs move to restored copies on a new cable.
    const [ea2, eb2] = createNetPair();
    const a2 = migrateNet(world, a, ea2);
    const b2 = migrateNet(world, b, eb2);
    expect(b2.device.pendingFrames).toBe(8);
    expect(b2.device.heldRxChains).toBe(1);
    expect(b2.device.stats.rxFrames).toBe(0);
    world.run(() => {
      a2.device.kick();
      b2.device.kick();
    });
    // One more 256-byte buffer: with the held one, just enough for the first frame.
    b.guest.postRx(1);
    const first = b.guest.tryReceive();
    expect(first === null ? null : [frameSeq(first.data), first.buffers]).toEqual([0, 2]);
    const seqs: number[] = [0];
    b.guest.postRx();
    for (let round = 0; seqs.length < total && round < 500; round++) {
      for (const f of b.guest.receiveAll()) {
        expect(f.data).toEqual(testFrame(MAC_B, MAC_A, frameSeq(f.data), 400));
        seqs.push(frameSeq(f.data));
      }
      while (sent < total && a.guest.trySend(testFrame(MAC_B, MAC_A, sent, 400))) sent++;
      await Promise.resolve();
    }
    expect(seqs).toEqual(Array.from({ length: total }, (_, i) => i));
    a.guest.reapTx();
    expect(a.guest.txPending).toBe(0);
    expect(a2.device.stats.txFrames).toBe(total);
    // The old devices stayed where they were.
    expect(b.device.stats.rxFrames).toBe(0);
  });

  it('restore rejects a corrupted device state', () => {
    const { a, b } = pair({}, { driver: { postRxBuffers: false, rxBufferSize: 64 } });
    a.guest.init(F);
    b.guest.init(F);
    a.guest.trySend(testFrame(MAC_B, MAC_A, 1, 100));
    b.guest.postRx(1);
    const good = JSON.parse(JSON.stringify(b.transport.save()));
    type Saved = { device: { device: NetState } };
    const cases: [(s: Saved) => void, RegExp][] = [
      [
        (s) => {
          s.device.device.pending[0]!.data = '!!!!';
        },
        /pending\.0\.data/,
      ],
      [
        (s) => {
          (s.device.device.pending[0]!.header as number[]) = [1, 2, 3];
        },
        /pending\.0\.header/,
      ],
      [
        (s) => {
          s.device.device.heldRx[0]!.buffers[0]![0] = 2 ** 40;
        },
        /heldRx\.0\.buffers/,
      ],
      [
        (s) => {
          s.device.device.heldRx[0]!.buffers[0]![1] = 4;
        },
        /heldRx\.0\.buffers/,
      ],
      [
        (s) => {
          s.device.device.heldRx.push({ ...s.device.device.heldRx[0]! });
        },
        /heldRx\.1\.head/,
      ],
      [
        (s) => {
          s.device.device.mac = 'xx';
        },
        /device\.net\.mac/,
      ],
      [
        (s) => {
          s.device.device.segmentsDone = 3;
        },
        /segmentsDone/,
      ],
    ];
    for (const [corrupt, field] of cases) {
      const bad = JSON.parse(JSON.stringify(good));
      corrupt(bad);
      const world = new World();
      const fresh = netSide(world, createNetPair()[0]);
      expect(() => fresh.transport.restore(bad)).toThrow(field);
      expect(fresh.transport.status).toBe(0);
    }
  });
});

describe('virtio-net offloads between two devices', () => {
  const V1 = RINGS[0]!.features;
  const bits = (...b: number[]) => b.reduce((s, x) => s | featureBit(x), 0n);

  /** An IPv4/TCP frame with `payload` bytes, the TCP checksum field holding the pseudo-header sum. */
  function tcp4(payload: number, seq = 1000): Uint8Array {
    const f = new Uint8Array(14 + 20 + 20 + payload);
    const v = new DataView(f.buffer);
    f.set(MAC_B, 0);
    f.set(MAC_A, 6);
    v.setUint16(12, 0x0800);
    f[14] = 0x45;
    v.setUint16(16, 20 + 20 + payload);
    v.setUint16(18, 0x1234);
    f[22] = 64;
    f[23] = 6;
    f.set([10, 0, 0, 1], 26);
    f.set([10, 0, 0, 2], 30);
    v.setUint16(34, 40000);
    v.setUint16(36, 80);
    v.setUint32(38, seq);
    f[46] = 0x50;
    f[47] = 0x18 | 0x01; // PSH, ACK, FIN
    for (let i = 0; i < payload; i++) f[54 + i] = (i * 13) & 0xff;
    return f;
  }

  function sum16(b: Uint8Array, start: number, end: number, init = 0): number {
    let s = init;
    for (let i = start; i < end; i += 2) s += (b[i]! << 8) | (i + 1 < end ? b[i + 1]! : 0);
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    return s;
  }

  /** True when the IPv4 header and TCP checksums of `f` are correct. */
  function checksumsValid(f: Uint8Array): boolean {
    const ihl = (f[14]! & 15) * 4;
    if (sum16(f, 14, 14 + ihl) !== 0xffff) return false;
    const tcpLen = f.length - 14 - ihl;
    const pseudo = sum16(f, 26, 34) + 6 + tcpLen;
    return sum16(f, 14 + ihl, f.length, pseudo) === 0xffff;
  }

  /** Sets the TCP checksum field to the pseudo-header sum (what a driver does with NEEDS_CSUM). */
  function partial(f: Uint8Array): Uint8Array {
    const v = new DataView(f.buffer);
    v.setUint16(50, 0);
    v.setUint16(50, sum16(f, 26, 34) + 6 + (f.length - 34));
    v.setUint16(24, 0);
    v.setUint16(24, ~sum16(f, 14, 34) & 0xffff);
    return f;
  }

  it('TSO frames pass through with their header to a driver that negotiated them', async () => {
    const { a, b } = pair({}, { driver: { rxBufferSize: 2048 } });
    a.guest.init(V1 | MRG | bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4));
    b.guest.init(V1 | MRG | bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4));
    const f = partial(tcp4(5000));
    const hdr = {
      flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      hdrLen: 54,
      gsoSize: 1448,
      csumStart: 34,
      csumOffset: 16,
    };
    await a.guest.send(f, hdr);
    const got = await b.guest.receive();
    expect(got.data).toEqual(f);
    expect(got.header).toEqual(hdr);
    expect(b.device.stats.rxSoftwareSegmented).toBe(0);
  });

  it('a TSO frame to a driver without GUEST_TSO4 arrives as checksummed segments', async () => {
    const { a, b } = pair();
    a.guest.init(V1 | MRG | bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4));
    b.guest.init(V1 | MRG);
    const payload = 5000;
    const f = partial(tcp4(payload, 0xfffff000));
    await a.guest.send(f, {
      flags: 1,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      hdrLen: 54,
      gsoSize: 1448,
      csumStart: 34,
      csumOffset: 16,
    });
    const segs = b.guest.receiveAll();
    expect(segs.length).toBe(4);
    expect(b.device.stats.rxSoftwareSegmented).toBe(1);
    let data: number[] = [];
    segs.forEach((s, i) => {
      expect(s.header.flags).toBe(0);
      expect(s.header.gsoType).toBe(0);
      expect(checksumsValid(s.data)).toBe(true);
      const v = new DataView(s.data.buffer);
      expect(v.getUint16(16)).toBe(s.data.length - 14);
      expect(v.getUint16(18)).toBe((0x1234 + i) & 0xffff);
      expect(v.getUint32(38)).toBe((0xfffff000 + i * 1448) >>> 0);
      const flags = s.data[47]!;
      expect(flags & 0x09).toBe(i === 3 ? 0x09 : 0); // FIN and PSH on the last segment only
      data = data.concat(Array.from(s.data.subarray(54)));
    });
    expect(segs.map((s) => s.data.length - 54)).toEqual([1448, 1448, 1448, 656]);
    expect(Uint8Array.from(data)).toEqual(f.subarray(54));
  });

  it('a partially checksummed frame to a driver without GUEST_CSUM arrives checksummed', async () => {
    const { a, b } = pair();
    a.guest.init(V1 | MRG | bits(VIRTIO_NET_F_CSUM));
    b.guest.init(V1 | MRG);
    const f = partial(tcp4(333));
    expect(checksumsValid(f)).toBe(false);
    await a.guest.send(f, { flags: 1, csumStart: 34, csumOffset: 16 });
    const got = await b.guest.receive();
    expect(got.header.flags).toBe(0);
    expect(checksumsValid(got.data)).toBe(true);
    expect(b.device.stats.rxSoftwareChecksums).toBe(1);
    // With GUEST_CSUM the partial checksum passes through untouched.
    b.guest.init(V1 | MRG | bits(VIRTIO_NET_F_GUEST_CSUM));
    await a.guest.send(f, { flags: 1, csumStart: 34, csumOffset: 16 });
    const raw = await b.guest.receive();
    expect(raw.data).toEqual(f);
    expect(raw.header).toMatchObject({ flags: 1, csumStart: 34, csumOffset: 16 });
  });

  it('ECN on a TSO frame needs GUEST_ECN to pass through', async () => {
    const { a, b } = pair();
    a.guest.init(V1 | MRG | bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_ECN));
    b.guest.init(V1 | MRG | bits(VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4));
    const f = partial(tcp4(3000));
    await a.guest.send(f, {
      flags: 1,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4 | 0x80,
      hdrLen: 54,
      gsoSize: 1000,
      csumStart: 34,
      csumOffset: 16,
    });
    expect(b.guest.receiveAll().map((s) => s.header.gsoType)).toEqual([0, 0, 0]);
  });

  it('malformed TSO frames are dropped and counted at the receiver', async () => {
    const { a, b } = pair();
    a.guest.init(V1 | MRG | bits(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4));
    b.guest.init(V1 | MRG);
    const f = partial(tcp4(3000));
    f[23] = 17; // not TCP
    await a.guest.send(f, {
      flags: 1,
      gsoType: VIRTIO_NET_HDR_GSO_TCPV4,
      gsoSize: 1000,
      csumStart: 34,
      csumOffset: 16,
    });
    expect(b.guest.receiveAll()).toEqual([]);
    expect(b.device.stats.rxMalformed).toBe(1);
  });

  it('frames over the negotiated MTU are not passed to the driver (§5.1.4.1)', async () => {
    const { a, b } = pair({}, { device: { mtu: 1000 } });
    a.guest.init(V1 | MRG);
    b.guest.init(V1 | MRG | bits(VIRTIO_NET_F_MTU));
    await a.guest.send(testFrame(MAC_B, MAC_A, 1, 1014));
    await a.guest.send(testFrame(MAC_B, MAC_A, 2, 1015));
    expect(b.guest.receiveAll().map((f) => frameSeq(f.data))).toEqual([1]);
    expect(b.device.stats.rxOverMtu).toBe(1);
  });
});

describe('virtio-net on a switch', () => {
  const F = RINGS[3]!.features | BASIC | MRG;

  it('floods broadcast and unknown destinations, then forwards by learned MAC', async () => {
    const world = new World();
    const sw = new NetSwitch({ ports: 4 });
    const macs = [MAC_A, MAC_B, MAC_C];
    const sides = macs.map((mac) => netSide(world, sw.port(), { device: { mac } }));
    for (const s of sides) s.guest.init(F);
    const [a, b, c] = sides as [(typeof sides)[0], (typeof sides)[0], (typeof sides)[0]];
    await a.guest.send(testFrame(BROADCAST, MAC_A, 1, 60));
    expect(b.guest.receiveAll().length).toBe(1);
    expect(c.guest.receiveAll().length).toBe(1);
    expect(sw.lookup(MAC_A)).toBe(0);
    // B is unknown: flooded. A is known: only A gets the reply.
    await a.guest.send(testFrame(MAC_B, MAC_A, 2, 60));
    expect(b.guest.receiveAll().length).toBe(1);
    expect(c.guest.receiveAll().length).toBe(1);
    await b.guest.send(testFrame(MAC_A, MAC_B, 3, 60));
    expect(frameSeq(a.guest.receiveAll()[0]!.data)).toBe(3);
    expect(c.guest.receiveAll().length).toBe(0);
    await a.guest.send(testFrame(MAC_B, MAC_A, 4, 60));
    expect(b.guest.receiveAll().length).toBe(1);
    expect(c.guest.receiveAll().length).toBe(0);
    expect(sw.forwarded).toBe(2);
    expect(sw.flooded).toBe(2);
  });

  it('is lossless: a sender waits while a destination is full', async () => {
    const world = new World();
    const sw = new NetSwitch({ mode: 'hub' });
    const a = netSide(world, sw.port(), { device: { mac: MAC_A } });
    const b = netSide(world, sw.port(), {
      device: { mac: MAC_B, pendingFrames: 4 },
      driver: { postRxBuffers: false },
    });
    const c = netSide(world, sw.port(), { device: { mac: MAC_C } });
    for (const s of [a, b, c]) s.guest.init(F);
    let sent = 0;
    while (sent < 40 && a.guest.trySend(testFrame(BROADCAST, MAC_A, sent, 100))) sent++;
    expect(b.device.pendingFrames).toBe(4);
    expect(c.guest.receiveAll().length).toBe(4);
    const gotB: number[] = [];
    const gotC: number[] = [];
    b.guest.postRx();
    for (let r = 0; r < 100 && gotB.length < 40; r++) {
      for (const f of b.guest.receiveAll()) gotB.push(frameSeq(f.data));
      for (const f of c.guest.receiveAll()) gotC.push(frameSeq(f.data));
      while (sent < 40 && a.guest.trySend(testFrame(BROADCAST, MAC_A, sent, 100))) sent++;
    }
    for (const f of c.guest.receiveAll()) gotC.push(frameSeq(f.data));
    expect(gotB).toEqual(Array.from({ length: 40 }, (_, i) => i));
    expect(gotC.length).toBe(36);
  });
});

describe('virtio-net properties', () => {
  it('any frames through any receive buffer sizes arrive intact, once, in order', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...RINGS),
        fc.boolean(),
        fc.integer({ min: 80, max: 2000 }),
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.integer({ min: 14, max: 1514 }), { minLength: 1, maxLength: 40 }),
        fc.integer({ min: 1, max: 16 }),
        async (ring, mergeable, bufSize, descs, lens, pendingFrames) => {
          // Enough buffers for a largest frame, each of at most 3 descriptors in a ring of 64.
          const rxBufferSize = mergeable ? bufSize : 1526;
          const { a, b } = pair(
            {},
            {
              device: { pendingFrames },
              driver: { rxBufferSize, rxDescriptors: descs, rxBuffers: 20, postRxBuffers: false },
            },
          );
          const f = ring.features | (mergeable ? MRG : 0n);
          a.guest.init(f);
          b.guest.init(f);
          const frames = lens.map((n, i) => testFrame(MAC_B, MAC_A, i, n));
          let sent = 0;
          const got: Uint8Array[] = [];
          b.guest.postRx(3);
          for (let r = 0; r < 2000 && got.length < frames.length; r++) {
            while (sent < frames.length && a.guest.trySend(frames[sent]!)) sent++;
            for (const g of b.guest.receiveAll()) got.push(g.data);
            b.guest.postRx();
          }
          expect(got).toEqual(frames);
        },
      ),
      { numRuns: 60 },
    );
  });
});
