import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import {
  GENERATE_ETHERTYPE,
  GenerateBackend,
  NET_MAX_FRAME,
  type NetBackend,
  type NetPort,
  ReflectBackend,
  SinkBackend,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
} from '../../src/devices/net/index.js';
import { frameSeq, MAC_A, MAC_B, netSide, RINGS, testFrame, World } from './net-rig.js';

const F = featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_MRG_RXBUF);

describe.each(RINGS)('lab frame backends over $name', (ring) => {
  it('reflect: every frame comes back once, MAC addresses swapped, nothing lost when the guest is slow', async () => {
    const world = new World();
    const reflect = new ReflectBackend();
    // Few receive buffers: the device's receive side fills and the transmit side must wait.
    const a = netSide(world, reflect, {
      device: { mac: MAC_A, pendingFrames: 4 },
      driver: { rxDescriptors: 4 },
    });
    a.guest.init(ring.features | F);
    const n = 200;
    const sent = Array.from({ length: n }, (_, i) => testFrame(MAC_B, MAC_A, i, 60 + (i % 1400)));
    const got = Promise.all(sent.map(() => a.guest.receive()));
    for (const f of sent) await a.guest.send(f);
    const back = await got;
    expect(back.map((f) => frameSeq(f.data))).toEqual(sent.map((_, i) => i));
    for (let i = 0; i < n; i++) {
      const f = back[i]!.data;
      expect(Array.from(f.subarray(0, 6))).toEqual(Array.from(MAC_A));
      expect(Array.from(f.subarray(6, 12))).toEqual(Array.from(MAC_B));
      expect(f.length).toBe(sent[i]!.length);
      expect(Array.from(f.subarray(12))).toEqual(Array.from(sent[i]!.subarray(12)));
    }
    expect(reflect.frames).toBe(n);
    expect(a.device.stats.rxFrames).toBe(n);
  });

  it('sink: counts exactly the frames and bytes the guest sent', async () => {
    const sink = new SinkBackend();
    const a = netSide(new World(), sink, { device: { mac: MAC_A } });
    a.guest.init(ring.features | F);
    let bytes = 0;
    for (let i = 0; i < 300; i++) {
      const f = testFrame(MAC_B, MAC_A, i, 60 + ((i * 37) % 1455));
      bytes += f.length;
      await a.guest.send(f);
    }
    expect(sink.frames).toBe(300);
    expect(sink.bytes).toBe(bytes);
  });

  it('generate: the guest receives exactly count frames, in sequence, none twice', async () => {
    const gen = new GenerateBackend({ count: 500, size: 128 });
    // The device is built (and the generator attached) before the driver exists: frames wait
    // in the device, the generator waits for room, and all arrive once the driver is up.
    // 500 frames outrun a turn's budget (a ring's worth of chains): the device continues in a
    // later turn on its own, with no notification (with EVENT_IDX the driver sends none). Here
    // the scheduler is a microtask, which the driver's waits let run.
    const a = netSide(new World(), gen, {
      device: { mac: MAC_A, pendingFrames: 8, schedule: (run) => queueMicrotask(run) },
    });
    a.guest.init(ring.features | F);
    const got = [];
    for (let i = 0; i < 500; i++) got.push(await a.guest.receive());
    expect(got.map((f) => new DataView(f.data.buffer, f.data.byteOffset).getUint32(14))).toEqual(
      Array.from({ length: 500 }, (_, i) => i),
    );
    for (const f of got) {
      expect(f.data.length).toBe(128);
      expect((f.data[12]! << 8) | f.data[13]!).toBe(GENERATE_ETHERTYPE);
    }
    expect(gen.done).toBe(true);
    expect(gen.frames).toBe(500);
    expect(a.guest.tryReceive()).toBeNull();
  });
});

describe('GenerateBackend options', () => {
  it('refuses a size outside 60..NET_MAX_FRAME and a count that is not a non-negative integer', () => {
    expect(() => new GenerateBackend({ count: 1, size: 59 })).toThrow(RangeError);
    expect(() => new GenerateBackend({ count: 1, size: NET_MAX_FRAME + 1 })).toThrow(RangeError);
    expect(() => new GenerateBackend({ count: -1, size: 64 })).toThrow(RangeError);
    expect(() => new GenerateBackend({ count: 1.5, size: 64 })).toThrow(RangeError);
    expect(new GenerateBackend({ count: 0, size: 64 }).done).toBe(true);
  });
});

describe.each(RINGS)('receive bursts over $name', (ring) => {
  /** A backend that only hands its port to the test. */
  function capture(): { backend: NetBackend; port: () => NetPort } {
    let port: NetPort | null = null;
    return {
      backend: {
        offloads: 0n,
        attach: (p) => {
          port = p;
        },
        detach: () => {},
        send: () => true,
        resumeRx: () => {},
      },
      port: () => port!,
    };
  }

  it('frames offered in a burst are delivered after it: one used-index publication for all', () => {
    const c = capture();
    const a = netSide(new World(), c.backend, { device: { mac: MAC_A } });
    a.guest.init(ring.features | F);
    const rxq = a.transport.queues[0]!;
    let publications = 0;
    const publish = rxq.advanceUsedRingIdx.bind(rxq);
    rxq.advanceUsedRingIdx = () => {
      publications++;
      publish();
    };
    const port = c.port();
    const frames = Array.from({ length: 10 }, (_, i) => testFrame(MAC_A, MAC_B, i, 60 + 100 * i));
    port.burst(() => {
      for (const f of frames) expect(port.receive(f, f.length, null)).toBe(true);
      // Taken, not delivered yet.
      expect(a.device.stats.rxFrames).toBe(0);
      expect(a.device.pendingFrames).toBe(10);
    });
    expect(a.device.stats.rxFrames).toBe(10);
    expect(publications).toBe(1);
    const got = a.guest.receiveAll();
    expect(got.map((f) => frameSeq(f.data))).toEqual(frames.map((_, i) => i));
    expect(got.map((f) => f.data.length)).toEqual(frames.map((f) => f.length));
    // Outside a burst, each frame is delivered as it comes: one publication each.
    publications = 0;
    for (const f of frames.slice(0, 3)) port.receive(f, f.length, null);
    expect(publications).toBe(3);
    expect(a.guest.receiveAll()).toHaveLength(3);
  });

  it('generate: hands the event loop back after a few bursts the device all took', () => {
    const later: (() => void)[] = [];
    const gen = new GenerateBackend({
      count: 100_000,
      size: 60,
      schedule: (run) => later.push(run),
    });
    // Room for far more than the bursts of one task: the device never refuses a frame here.
    const a = netSide(new World(), gen, { device: { mac: MAC_A, pendingFrames: 4096 } });
    a.guest.init(ring.features | F);
    expect(gen.frames).toBe(8 * 32);
    expect(later).toHaveLength(1);
    later.shift()!();
    expect(gen.frames).toBe(2 * 8 * 32);
    expect(later).toHaveLength(1);
  });
});
