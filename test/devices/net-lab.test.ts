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

  it.each([
    { skew: 0, separate: true },
    { skew: 1, separate: false },
    { skew: 2, separate: true },
    { skew: 3, separate: false },
  ])(
    'reflect, buffers $skew bytes off a 16-byte boundary, header in its own descriptor: $separate; every size comes back exact',
    async ({ skew, separate }) => {
      // Off a word boundary, copies and the receive header take the byte-wise steps; a header
      // in its own descriptor makes the frame start a transmit buffer of its own.
      const reflect = new ReflectBackend();
      const a = netSide(new World(), reflect, {
        device: { mac: MAC_A },
        driver: { bufferMisalign: skew, txSeparateHeader: separate },
      });
      a.guest.init(ring.features | F);
      const sizes = [
        14, 15, 17, 18, 19, 60, 61, 63, 64, 65, 127, 128, 255, 256, 257, 600, 1513, 1514,
      ];
      for (const [i, n] of sizes.entries()) {
        const sent = testFrame(MAC_B, MAC_A, i, n);
        const got = a.guest.receive();
        await a.guest.send(sent);
        const f = (await got).data;
        expect(f.length).toBe(n);
        expect(Array.from(f.subarray(0, 6))).toEqual(Array.from(MAC_A));
        expect(Array.from(f.subarray(6, 12))).toEqual(Array.from(MAC_B));
        expect(Array.from(f.subarray(12))).toEqual(Array.from(sent.subarray(12)));
      }
      expect(reflect.frames).toBe(sizes.length);
    },
  );

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

describe.each(RINGS)('frames lent to a backend that only reads, over $name', (ring) => {
  /** Records, per frame sent, whether it was the guest's own memory and its bytes. */
  const recorder = (readsFramesOnly: boolean) => {
    const seen: { guest: boolean; bytes: number[] }[] = [];
    let guestBuffer: ArrayBufferLike | null = null;
    const backend: NetBackend = {
      offloads: 0n,
      readsFramesOnly,
      attach() {},
      detach() {},
      send(frame, length) {
        seen.push({
          guest: frame.buffer === guestBuffer,
          bytes: Array.from(frame.subarray(0, length)),
        });
        // What a backend that changes frames in place does (reflect swaps MAC addresses).
        if (!readsFramesOnly) frame.fill(0xee, 0, length);
        return true;
      },
      resumeRx() {},
    };
    return { seen, backend, setGuest: (b: ArrayBufferLike) => (guestBuffer = b) };
  };
  const sizes = [60, 255, 256, 1000, 1514];

  it.each([
    {
      readsOnly: true,
      what: 'large frames reach it as views of the guest buffer, small ones seen once copied',
    },
    { readsOnly: false, what: 'a backend that may change frames always gets the device scratch' },
  ])('$what, bytes exact', async ({ readsOnly }) => {
    const r = recorder(readsOnly);
    const a = netSide(new World(), r.backend, { device: { mac: MAC_A } });
    r.setGuest(a.memory.regions[0]!.buffer);
    a.guest.init(ring.features | F);
    const sent = sizes.map((n, i) => testFrame(MAC_B, MAC_A, i, n));
    for (const f of sent) await a.guest.send(f);
    expect(r.seen.map((s) => s.guest)).toEqual(sizes.map((n) => readsOnly && n >= 256));
    expect(r.seen.map((s) => s.bytes)).toEqual(sent.map((f) => Array.from(f)));
  });

  it('a small frame is lent from the second time its buffer brings that length on, bytes exact', async () => {
    const r = recorder(true);
    const a = netSide(new World(), r.backend, { device: { mac: MAC_A } });
    r.setGuest(a.memory.regions[0]!.buffer);
    a.guest.init(ring.features | F);
    // One frame at a time: the driver sends each from the transmit buffer the last one freed.
    const lengths = [60, 60, 60, 61, 61, 60, 255, 255, 60, 60];
    const sent = lengths.map((n, i) => testFrame(MAC_B, MAC_A, i, n));
    for (const f of sent) await a.guest.send(f);
    const lent = [false, true, true, false, true, false, false, true, false, true];
    expect(r.seen.map((s) => s.guest)).toEqual(lent);
    expect(r.seen.map((s) => s.bytes)).toEqual(sent.map((f) => Array.from(f)));
    // A reset forgets what was seen: the first small frame after it is copied again.
    a.guest.init(ring.features | F);
    r.seen.length = 0;
    await a.guest.send(sent[0]!);
    await a.guest.send(sent[1]!);
    expect(r.seen.map((s) => s.guest)).toEqual([false, true]);
  });

  it('reflect changes frames, so it does not borrow them; sink, generate and tap only read', () => {
    expect((new ReflectBackend() as NetBackend).readsFramesOnly).not.toBe(true);
    expect(new SinkBackend().readsFramesOnly).toBe(true);
    expect(new GenerateBackend({ count: 0, size: 60 }).readsFramesOnly).toBe(true);
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

/** A backend that only hands its port to the test, and counts the device's calls to resume. */
function capture(): { backend: NetBackend; port: () => NetPort; resumed: () => number } {
  let port: NetPort | null = null;
  let resumed = 0;
  return {
    backend: {
      offloads: 0n,
      attach: (p) => {
        port = p;
      },
      detach: () => {},
      send: () => true,
      resumeRx: () => {
        resumed++;
      },
    },
    port: () => port!,
    resumed: () => resumed,
  };
}

describe.each(RINGS)('receive bursts over $name', (ring) => {
  it('frames offered in a burst are published after it: one used-index publication for all', () => {
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
      // Written straight into the driver's buffers (none waits in the device), not published.
      expect(a.device.stats.rxFrames).toBe(10);
      expect(a.device.pendingFrames).toBe(0);
      expect(publications).toBe(0);
      expect(a.guest.receiveAll()).toHaveLength(0);
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
    // Before activation the frames wait in the device; after it, each task finds 1024 receive
    // buffers (the guest reads every frame and posts its buffer again).
    const a = netSide(new World(), gen, {
      device: { mac: MAC_A, pendingFrames: 4096, queueSize: 1024 },
      driver: { queueSize: 1024 },
      memoryBytes: 16 << 20,
    });
    expect(gen.frames).toBe(8 * 32);
    expect(later).toHaveLength(1);
    a.guest.init(ring.features | F);
    for (let task = 2; task <= 3; task++) {
      expect(a.guest.receiveAll()).toHaveLength(8 * 32);
      later.shift()!();
      expect(gen.frames).toBe(task * 8 * 32);
      expect(later).toHaveLength(1);
      // These went straight into receive buffers: none waits in the device.
      expect(a.device.pendingFrames).toBe(0);
      expect(a.device.stats.rxFrames).toBe(task * 8 * 32);
    }
  });
});

describe('frames written straight into receive buffers during a burst', () => {
  const SPLIT = RINGS.find((r) => r.name === 'split')!.features;
  const offer = (port: NetPort, frames: Uint8Array[]): boolean[] => {
    const taken: boolean[] = [];
    port.burst(() => {
      for (const f of frames) taken.push(port.receive(f, f.length, null));
    });
    return taken;
  };
  /** A split device whose driver has posted no receive buffer yet, and its capturing backend. */
  const rig = () => {
    const c = capture();
    const a = netSide(new World(), c.backend, {
      device: { mac: MAC_A },
      driver: { postRxBuffers: false },
    });
    a.guest.init(SPLIT | F);
    return { c, a };
  };

  it('a frame the driver has no buffer for waits with the backend, which is resumed when buffers come', () => {
    const { c, a } = rig();
    const port = c.port();
    const f = [0, 1, 2].map((i) => testFrame(MAC_A, MAC_B, i, 100));
    expect(offer(port, [f[0]!])).toEqual([false]);
    // Refused, not kept: the backend still holds it.
    expect(a.device.pendingFrames).toBe(0);
    expect(c.resumed()).toBe(0);
    a.guest.postRx();
    expect(c.resumed()).toBe(1);
    expect(offer(port, f)).toEqual([true, true, true]);
    expect(a.guest.receiveAll().map((g) => frameSeq(g.data))).toEqual([0, 1, 2]);
  });

  it('frames waiting in the device go first: a burst behind them waits', () => {
    const { c, a } = rig();
    const port = c.port();
    const f = [0, 1, 2].map((i) => testFrame(MAC_A, MAC_B, i, 100));
    // Outside a burst a frame with no buffer waits in the device.
    expect(port.receive(f[0]!, f[0]!.length, null)).toBe(true);
    expect(a.device.pendingFrames).toBe(1);
    expect(offer(port, [f[1]!])).toEqual([false]);
    a.guest.postRx();
    expect(a.device.pendingFrames).toBe(0);
    expect(c.resumed()).toBe(1);
    expect(offer(port, [f[1]!, f[2]!])).toEqual([true, true]);
    expect(a.guest.receiveAll().map((g) => frameSeq(g.data))).toEqual([0, 1, 2]);
  });

  it('a broken receive chain fails the device, not the backend: the frame waits in the device', () => {
    const { c, a } = rig();
    // A split ring's available entry naming a descriptor outside the table (§2.7.13.2).
    const q = a.transport.queues[0]!;
    const idx = a.memory.readU16(q.availRingAddress + 2);
    a.memory.writeU16(q.availRingAddress + 4 + 2 * (idx % q.size), 0xffff);
    a.memory.writeU16(q.availRingAddress + 2, (idx + 1) & 0xffff);
    const f = testFrame(MAC_A, MAC_B, 7, 100);
    expect(offer(c.port(), [f, f])).toEqual([true, true]);
    expect(a.device.needsReset).toBe(true);
    expect(a.device.lastError?.code).toBe('DESC_HEAD_OUT_OF_RANGE');
    expect(a.device.pendingFrames).toBe(2);
    expect(a.device.stats.rxFrames).toBe(0);
  });
});
