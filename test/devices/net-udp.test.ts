import { afterEach, describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import {
  NET_OFFLOAD_FEATURES,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
} from '../../src/devices/net/index.js';
import type { InterruptWaiter } from '../../src/driver/devices/waiter.js';
import { FeaturesRefusedError } from '../../src/driver/mmio.js';
import { UdpNetBackend } from '../../src/node/index.js';
import { frameSeq, MAC_A, MAC_B, netSide, RINGS, testFrame, World } from './net-rig.js';

/** Datagrams arrive through the event loop: let it run between polls. */
const eventLoop: InterruptWaiter = { wait: () => new Promise((resolve) => setTimeout(resolve, 1)) };

const open: UdpNetBackend[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((b) => b.close()));
});

async function udpPair(): Promise<[UdpNetBackend, UdpNetBackend]> {
  const a = await UdpNetBackend.open({ localAddress: '127.0.0.1' });
  const b = await UdpNetBackend.open({ localAddress: '127.0.0.1' });
  open.push(a, b);
  a.connect(b.localPort, '127.0.0.1');
  b.connect(a.localPort, '127.0.0.1');
  return [a, b];
}

describe('virtio-net over a UDP datagram backend (127.0.0.1)', () => {
  it('carries frames both ways, one datagram each, and offers no offload', async () => {
    const [ua, ub] = await udpPair();
    const world = new World();
    const a = netSide(world, ua, {
      device: { mac: MAC_A },
      driver: { waiter: eventLoop, maxWaits: 2000 },
    });
    const b = netSide(world, ub, {
      device: { mac: MAC_B },
      driver: { waiter: eventLoop, maxWaits: 2000 },
    });
    expect(a.device.offeredFeatures & NET_OFFLOAD_FEATURES).toBe(0n);
    expect(() => a.guest.init(0n, RINGS[0]!.features | featureBit(VIRTIO_NET_F_CSUM))).toThrow(
      FeaturesRefusedError,
    );
    const f =
      RINGS[3]!.features | featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
    a.guest.init(f);
    b.guest.init(f);
    const n = 40;
    const toB = Array.from({ length: n }, (_, i) => testFrame(MAC_B, MAC_A, i, 60 + i * 30));
    const toA = Array.from({ length: n }, (_, i) => testFrame(MAC_A, MAC_B, 100 + i, 1514 - i));
    const gotB = (async () => {
      const out: Uint8Array[] = [];
      while (out.length < n) out.push((await b.guest.receive()).data);
      return out;
    })();
    const gotA = (async () => {
      const out: Uint8Array[] = [];
      while (out.length < n) out.push((await a.guest.receive()).data);
      return out;
    })();
    for (let i = 0; i < n; i++) {
      await a.guest.send(toB[i]!);
      await b.guest.send(toA[i]!);
    }
    const [rb, ra] = await Promise.all([gotB, gotA]);
    // Loopback keeps datagram order; compare sorted anyway so the check is about loss/duplication.
    const bySeq = (x: Uint8Array, y: Uint8Array) => frameSeq(x) - frameSeq(y);
    expect(rb.sort(bySeq)).toEqual(toB);
    expect(ra.sort(bySeq)).toEqual(toA);
    expect(ua.sent).toBe(n);
    expect(ub.received).toBe(n);
    expect(ub.dropped).toBe(0);
  });

  it('keeps datagrams in a backlog while the device has no room, and delivers them later', async () => {
    const [ua, ub] = await udpPair();
    const world = new World();
    const a = netSide(world, ua, { device: { mac: MAC_A }, driver: { waiter: eventLoop } });
    const b = netSide(world, ub, {
      device: { mac: MAC_B, pendingFrames: 2 },
      driver: { waiter: eventLoop, postRxBuffers: false, maxWaits: 2000 },
    });
    const f = RINGS[0]!.features | featureBit(VIRTIO_NET_F_MRG_RXBUF);
    a.guest.init(f);
    b.guest.init(f);
    for (let i = 0; i < 10; i++) await a.guest.send(testFrame(MAC_B, MAC_A, i, 100));
    for (let i = 0; i < 200 && ub.received < 10; i++) await eventLoop.wait();
    expect(ub.received).toBe(10);
    expect(b.device.pendingFrames).toBe(2);
    b.guest.postRx();
    const got: number[] = [];
    while (got.length < 10) got.push(frameSeq((await b.guest.receive()).data));
    expect(got.sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });
});
