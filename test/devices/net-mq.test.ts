/**
 * virtio-net with several queue pairs and the control queue (VIRTIO 1.2 §5.1.6.5), through
 * virtio-mmio with a spec-exact driver: what is offered, VQ_PAIRS_SET and its refusals, traffic
 * on every pair with exact counts, flows that stay on one queue, a reset back to one pair,
 * snapshots mid-traffic.
 */
import { describe, expect, it } from 'vitest';
import { featureBit, hasFeature } from '../../src/devices/device.js';
import {
  NetDevice,
  SinkBackend,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
} from '../../src/devices/net/index.js';
import { SnapshotError } from '../../src/errors.js';
import { GuestMemory } from '../../src/memory/index.js';
import { silentLogger } from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';
import { HandBackend, MQ_FEATURES, migrateMq, mqSide, udpFlowSeq, udpFrame } from './net-mq-rig.js';
import { RINGS, World } from './net-rig.js';

const FLOWS = 12;

/** Pushes `perFlow` frames of each of FLOWS flows, interleaved; returns how many. */
function pushFlows(b: HandBackend, perFlow: number, base = 0): number {
  let n = 0;
  for (let s = 0; s < perFlow; s++) {
    for (let f = 0; f < FLOWS; f++) {
      expect(b.push(udpFrame(f, base + s))).toBe(true);
      n++;
    }
  }
  return n;
}

/** For each flow, the queues its frames arrived on and their sequence numbers in order. */
function byFlow(perQueue: Uint8Array[][]): Map<number, { queues: Set<number>; seqs: number[] }> {
  const m = new Map<number, { queues: Set<number>; seqs: number[] }>();
  perQueue.forEach((frames, q) => {
    for (const f of frames) {
      const [flow, seq] = udpFlowSeq(f);
      const e = m.get(flow) ?? { queues: new Set(), seqs: [] };
      e.queues.add(q);
      e.seqs.push(seq);
      m.set(flow, e);
    }
  });
  return m;
}

describe('virtio-net multiqueue: what the device offers', () => {
  it('offers CTRL_VQ and MQ with 2N+1 queues and max_virtqueue_pairs N; one pair offers neither', () => {
    const mq = new NetDevice({ backend: new SinkBackend(), queuePairs: 3, queueSize: 128 });
    expect(hasFeature(mq.offeredFeatures, VIRTIO_NET_F_CTRL_VQ)).toBe(true);
    expect(hasFeature(mq.offeredFeatures, VIRTIO_NET_F_MQ)).toBe(true);
    expect(mq.queueMaxSizes).toEqual([128, 128, 128, 128, 128, 128, 64]);
    expect(mq.controlQueue).toBe(6);
    const cfg = new Uint8Array(2);
    mq.readConfig(8, cfg);
    expect(cfg[0]! | (cfg[1]! << 8)).toBe(3);
    expect(mq.frontEndQueues).toMatchObject({ served: 6, queueNum: 3 });

    const one = new NetDevice({ backend: new SinkBackend() });
    expect(hasFeature(one.offeredFeatures, VIRTIO_NET_F_CTRL_VQ)).toBe(false);
    expect(hasFeature(one.offeredFeatures, VIRTIO_NET_F_MQ)).toBe(false);
    expect(one.queueMaxSizes.length).toBe(2);
    expect(one.frontEndQueues).toMatchObject({ served: 2, queueNum: 1 });
    one.readConfig(8, cfg);
    expect(cfg[0]! | (cfg[1]! << 8)).toBe(1);

    const ctrl = new NetDevice({ backend: new SinkBackend(), controlQueue: true });
    expect(hasFeature(ctrl.offeredFeatures, VIRTIO_NET_F_CTRL_VQ)).toBe(true);
    expect(hasFeature(ctrl.offeredFeatures, VIRTIO_NET_F_MQ)).toBe(false);
    expect(ctrl.queueMaxSizes.length).toBe(3);

    for (const bad of [0, 17, 1.5, Number.NaN]) {
      expect(() => new NetDevice({ backend: new SinkBackend(), queuePairs: bad })).toThrow(
        RangeError,
      );
    }
  });

  it('a front-end that leaves CTRL_VQ out of its features still gets MQ (vhost-user)', () => {
    const d = new NetDevice({ backend: new SinkBackend(), queuePairs: 2 });
    const acked = featureBit(32) | featureBit(VIRTIO_NET_F_MQ) | featureBit(VIRTIO_NET_F_MAC);
    expect(d.acceptFeatures(acked)).toBe(false); // §5.1.3.1 as a driver would send it
    const done = d.frontEndQueues!.completeFeatures(acked);
    expect(hasFeature(done, VIRTIO_NET_F_CTRL_VQ)).toBe(true);
    expect(d.acceptFeatures(done)).toBe(true);
    expect(d.frontEndQueues!.completeFeatures(featureBit(32))).toBe(featureBit(32));
  });
});

describe.each(RINGS)('virtio-net multiqueue over $name', (ring) => {
  it('uses one pair until VQ_PAIRS_SET, then both; each flow stays on one queue, in order', () => {
    const b = new HandBackend();
    const a = mqSide(new World(), b);
    a.guest.init(ring.features | MQ_FEATURES);
    expect(a.device.activePairs).toBe(1);

    // §5.1.6.5.5: before VQ_PAIRS_SET only receiveq1 is used.
    const n0 = pushFlows(b, 2);
    expect(a.guest.receiveAll(0).length).toBe(n0);
    expect(a.guest.receiveAll(1).length).toBe(0);

    expect(a.guest.setPairs(2)).toBe(0);
    expect(a.device.activePairs).toBe(2);
    const got: Uint8Array[][] = [[], []];
    let n = 0;
    for (let round = 0; round < 5; round++) {
      n += pushFlows(b, 2, 100 + round * 2);
      got[0]!.push(...a.guest.receiveAll(0));
      got[1]!.push(...a.guest.receiveAll(1));
    }
    expect(got[0]!.length + got[1]!.length).toBe(n);
    expect(got[0]!.length).toBeGreaterThan(0);
    expect(got[1]!.length).toBeGreaterThan(0);
    const flows = byFlow(got);
    expect(flows.size).toBe(FLOWS);
    for (const [, e] of flows) {
      expect(e.queues.size).toBe(1);
      expect(e.seqs).toEqual(Array.from({ length: 10 }, (_, i) => 100 + i));
    }
    expect(a.device.stats.rxFrames).toBe(n0 + n);
    expect(a.device.needsReset).toBe(false);
  });

  it('sends what every transmit queue holds: the backend gets exactly every frame', () => {
    const b = new HandBackend();
    const a = mqSide(new World(), b, { queuePairs: 3 });
    a.guest.init(ring.features | MQ_FEATURES);
    expect(a.guest.setPairs(3)).toBe(0);
    let bytes = 0;
    for (let i = 0; i < 150; i++) {
      const f = udpFrame(i % 3, i, 60 + (i % 200));
      bytes += f.length;
      expect(a.guest.send(i % 3, f)).toBe(true);
    }
    expect(b.sent.length).toBe(150);
    expect(a.device.stats.txFrames).toBe(150);
    expect(a.device.stats.txBytes).toBe(bytes);
    expect(b.sent.map((f) => udpFlowSeq(f)[1])).toEqual(Array.from({ length: 150 }, (_, i) => i));
  });

  it('answers what it does not implement with VIRTIO_NET_ERR and refuses 0 or too many pairs', () => {
    const a = mqSide(new World(), new HandBackend());
    a.guest.init(ring.features | MQ_FEATURES);
    const g = a.guest;
    expect(g.setPairs(0)).toBe(1);
    expect(g.setPairs(3)).toBe(1);
    expect(g.setPairs(0x8000)).toBe(1);
    expect(a.device.activePairs).toBe(1);
    expect(g.control(4, 0, Uint8Array.of(2))).toBe(1); // data too short
    expect(g.control(4, 0, Uint8Array.of(2, 0, 0))).toBe(1); // too long
    expect(g.control(4, 1, new Uint8Array(8))).toBe(1); // RSS_CONFIG: RSS not offered
    expect(g.control(0, 0, Uint8Array.of(1))).toBe(1); // RX PROMISC: CTRL_RX not offered
    expect(g.control(1, 1, new Uint8Array(6))).toBe(1); // MAC_ADDR_SET: not offered
    expect(g.control(3, 0)).toBe(1); // ANNOUNCE
    expect(g.control(99, 0)).toBe(1);
    expect(a.device.control.lastRefusal).toBe('unknown-class');
    // Nowhere to answer: returned with nothing written and not executed; the device carries on.
    expect(g.control(4, 0, Uint8Array.of(2, 0), 0)).toBe(-1);
    expect(a.device.activePairs).toBe(1);
    expect(a.device.control.stats.unanswerable).toBe(1);
    expect(g.setPairs(2)).toBe(0);
    expect(a.device.activePairs).toBe(2);
    expect(a.device.control.stats.ok).toBe(1);
    expect(a.device.needsReset).toBe(false);
  });

  it('refuses VQ_PAIRS_SET when the driver did not negotiate MQ', () => {
    const b = new HandBackend();
    const a = mqSide(new World(), b);
    a.guest.init(ring.features | featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_CTRL_VQ));
    expect(a.guest.setPairs(2)).toBe(1);
    expect(a.device.control.lastRefusal).toBe('not-negotiated');
    const n = pushFlows(b, 1);
    expect(a.guest.receiveAll(0).length).toBe(n);
  });

  it('fewer pairs: frames waiting for a queue no longer used move to the first one', () => {
    const b = new HandBackend();
    const a = mqSide(new World(), b);
    a.guest.init(ring.features | MQ_FEATURES, { holdRx: [1] });
    expect(a.guest.setPairs(2)).toBe(0);
    const n = pushFlows(b, 2);
    const first = a.guest.receiveAll(0);
    const waiting = a.device.pendingFramesOf(1);
    expect(waiting).toBeGreaterThan(0);
    expect(first.length + waiting).toBe(n);
    expect(a.guest.setPairs(1)).toBe(0);
    expect(a.device.pendingFramesOf(1)).toBe(0);
    const moved = a.guest.receiveAll(0);
    expect(moved.length).toBe(waiting);
    expect(a.device.stats.rxQueueDropped).toBe(0);
    // Every flow is complete and in order on the first queue.
    for (const [, e] of byFlow([[...first, ...moved]])) expect(e.seqs).toEqual([0, 1]);
  });

  it('a reset goes back to one pair; the driver enables two again', () => {
    const b = new HandBackend();
    const a = mqSide(new World(), b);
    a.guest.init(ring.features | MQ_FEATURES);
    expect(a.guest.setPairs(2)).toBe(0);
    a.guest.reset();
    expect(a.device.activePairs).toBe(1);
    a.guest.init(ring.features | MQ_FEATURES);
    expect(a.device.activePairs).toBe(1);
    const n = pushFlows(b, 1);
    expect(a.guest.receiveAll(0).length).toBe(n);
    expect(a.guest.receiveAll(1).length).toBe(0);
    expect(a.guest.setPairs(2)).toBe(0);
    const m = pushFlows(b, 1);
    expect(a.guest.receiveAll(0).length + a.guest.receiveAll(1).length).toBe(m);
  });

  it('a snapshot mid-traffic keeps the pairs in use and every waiting frame, delivered once', () => {
    const world = new World();
    const b = new HandBackend();
    let a = mqSide(world, b, { pendingFrames: 64 });
    a.guest.init(ring.features | MQ_FEATURES, { rxBuffers: 4 });
    expect(a.guest.setPairs(2)).toBe(0);
    const got: Uint8Array[][] = [[], []];
    const n = pushFlows(b, 4);
    got[0]!.push(...a.guest.receiveAll(0, false));
    got[1]!.push(...a.guest.receiveAll(1, false));
    expect(a.device.pendingFramesOf(0)).toBeGreaterThan(0);
    expect(a.device.pendingFramesOf(1)).toBeGreaterThan(0);

    const b2 = new HandBackend();
    a = migrateMq(world, a, b2);
    expect(a.device.activePairs).toBe(2);
    world.run(() => a.device.kick());
    for (let i = 0; i < 40 && got[0]!.length + got[1]!.length < n; i++) {
      got[0]!.push(...a.guest.receiveAll(0));
      got[1]!.push(...a.guest.receiveAll(1));
      a.guest.postRx(0);
      a.guest.postRx(1);
    }
    expect(got[0]!.length + got[1]!.length).toBe(n);
    for (const [, e] of byFlow(got)) {
      expect(e.queues.size).toBe(1);
      expect(e.seqs).toEqual([0, 1, 2, 3]);
    }
    // New frames after the restore keep going to both queues.
    const m = world.run(() => pushFlows(b2, 1, 10));
    let after = 0;
    for (let i = 0; i < 10 && after < m; i++) {
      after += a.guest.receiveAll(0).length + a.guest.receiveAll(1).length;
    }
    expect(after).toBe(m);
  });

  it('validates the multiqueue parts of a saved state', () => {
    const a = mqSide(new World(), new HandBackend());
    a.guest.init(ring.features | MQ_FEATURES);
    expect(a.guest.setPairs(2)).toBe(0);
    const good = JSON.parse(JSON.stringify(a.transport.save()));
    const tryRestore = (mutate: (d: Record<string, unknown>) => void): unknown => {
      const s = structuredClone(good);
      mutate(s.device.device);
      const copy = GuestMemory.create(a.memory.size);
      copy.write(0, a.memory.slice(0, a.memory.size));
      const t = new MmioTransport(new NetDevice({ ...a.options }), copy, {
        logger: silentLogger,
      });
      try {
        t.restore(s);
        return null;
      } catch (e) {
        return e;
      }
    };
    expect(tryRestore(() => {})).toBeNull();
    const bad = (mutate: (d: Record<string, unknown>) => void, path: string) => {
      const e = tryRestore(mutate);
      expect(e).toBeInstanceOf(SnapshotError);
      expect((e as SnapshotError).message).toContain(path);
    };
    bad((d) => {
      d.activePairs = 3;
    }, 'device.net.activePairs');
    bad((d) => {
      d.activePairs = 0;
    }, 'device.net.activePairs');
    bad((d) => {
      d.rxQueues = [];
    }, 'device.net.rxQueues');
    bad((d) => {
      (d.rxQueues as { segmentsDone: number }[])[0]!.segmentsDone = 2;
    }, 'device.net.rxQueues.0.segmentsDone');
    bad((d) => {
      (d.rxQueues as { pending: unknown[] }[])[0]!.pending = [{ data: '!!', header: [] }];
    }, 'device.net.rxQueues.0.pending.0');
  });
});
