/**
 * The vhost-user socket fuzzer against virtq's network device (one queue pair: ring 0 receives,
 * ring 1 transmits), served by a VhostUserBackend in a child process whose frames go to a sink
 * or are reflected back: the hostile front-end of socket-fuzz.test.ts (well-formed messages
 * with random fields, mutated QEMU-like sessions) and a hostile guest on both rings. The
 * guest lays out transmit chains with bad virtio headers, zero-length, huge, looping (direct
 * and through an indirect table) and writable descriptors, and receive buffers that are too
 * small, read-only or never fit a frame, with and without VIRTIO_NET_F_MRG_RXBUF, over the
 * generic hostile ring contents, on split or packed rings; it kicks either ring at random, with
 * random messages between the kicks. Half of the guests are tame (well-formed rings, random
 * headers and lengths), so that frames reach the backend and come back into receive buffers.
 *
 * After every case: the back-end process is alive and answers (no crash, no hang, each wait
 * bounded), the device moved no more frames than the guest could have made available (each
 * publication of an available index and each message can open at most one ring's worth of
 * chains), the sink took exactly the frames the device transmitted and no frame was received
 * from it, and a clean front-end is then served with exact counts: frames it transmits reach
 * the sink, or come back from the reflector, byte for byte, MAC addresses swapped.
 *
 * Environment: as socket-fuzz.test.ts (VIRTQ_SOCKET_FUZZ_RUNS, _SEED, _PATH, _SHRINK).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { concat, PROTOCOL_BIT, QSIZE, R, u32s, u64, VERSION_1 } from './frontend.js';
import { sessionCase, wellFormedCase } from './socket-fuzz-cases.js';
import {
  F_EVENT_IDX,
  F_INDIRECT,
  F_PACKED,
  featureSet,
  RING0,
  randomWire,
  session,
  u32,
  wellFormedWire,
} from './socket-fuzz-gen.js';
import {
  F_MRG_RXBUF,
  HDR,
  type NetChain,
  type NetRingWrites,
  only,
  RINGS,
  TX_RING,
  writeNetRing,
} from './socket-fuzz-net-ring.js';
import { type FuzzDevice, NET_MAC, REPLAY_PATH, RUNS } from './socket-fuzz-process.js';
import { ringWritesModel } from './socket-fuzz-ring.js';
import { nativeAddonTest, nativeOk, socketFuzzSuite } from './socket-fuzz-runner.js';
import type { FuzzCase, Wire } from './socket-fuzz-wire.js';

/** Cases per generator and frame backend (the file runs in about 25 s on a 2-core machine). */
const DEFAULT_RUNS = { wellFormed: 30, session: 100 };

interface NetHostile {
  /** The session negotiated VIRTIO_F_RING_PACKED (chains are written in that format). */
  packed: boolean;
  /**
   * A guest whose rings are well formed (its chains only, in the directions the rings want,
   * no loops, indirect only when negotiated, no messages between kicks) but whose headers and
   * lengths are still random: its frames reach the device and the backend.
   */
  tame: boolean;
  rx: NetRingWrites;
  tx: NetRingWrites;
  /** Written over ring 1 after the first kick, while the device may be reading it. */
  again: NetRingWrites | null;
  /** Each kick names its ring and may follow a message. */
  kicks: { ring: number; message: Wire | null }[];
}
const header = fc.oneof(
  // A plain header (no offload), a well-formed one with random offload fields, or noise.
  { weight: 3, arbitrary: fc.constant(new Uint8Array(HDR)) },
  {
    weight: 3,
    arbitrary: fc
      .tuple(
        fc.nat(7),
        fc.constantFrom(0, 1, 3, 4, 5, 0x81, 0x85),
        fc.array(fc.nat(0xffff), {
          minLength: 5,
          maxLength: 5,
        }),
      )
      .map(([flags, gso, fields]) => {
        const h = new Uint8Array(HDR);
        const v = new DataView(h.buffer);
        v.setUint8(0, flags);
        v.setUint8(1, gso);
        fields.forEach((f, i) => {
          v.setUint16(2 + 2 * i, f, true);
        });
        return h;
      }),
  },
  { weight: 1, arbitrary: fc.uint8Array({ minLength: HDR, maxLength: HDR }) },
);

/** Chains for ring `k`: mostly the direction it wants, sometimes the other. */
function netChain(k: number): fc.Arbitrary<NetChain> {
  const writable = k === 0;
  return fc.record({
    parts: fc.array(
      fc.record({
        len: fc.oneof(
          { weight: 4, arbitrary: fc.constantFrom(0, 1, 11, 12, 13, 26, 60, 74, 1514, 2048) },
          { weight: 1, arbitrary: fc.constantFrom(0x1_0000, 0x10_0000, 0xffff_ffff) },
          { weight: 1, arbitrary: u32 },
        ),
        writable: fc.oneof(
          { weight: 5, arbitrary: fc.constant(writable) },
          { weight: 1, arbitrary: fc.constant(!writable) },
        ),
      }),
      { minLength: 1, maxLength: 4 },
    ),
    indirect: fc.boolean(),
    loop: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, fc.constant(true)),
    header,
  });
}

function netRingWrites(k: number): fc.Arbitrary<NetRingWrites> {
  const model = ringWritesModel(RINGS[k]!);
  return fc.record({
    ...model,
    chains: fc.array(netChain(k), { maxLength: 4 }),
    quiet: fc.boolean(),
  });
}

const hostile: fc.Arbitrary<NetHostile> = fc.record({
  packed: fc.constant(false),
  tame: fc.boolean(),
  rx: netRingWrites(0),
  tx: netRingWrites(1),
  again: fc.option(netRingWrites(1), { nil: null, freq: 3 }),
  kicks: fc.array(
    fc.record({
      ring: fc.nat(1),
      message: fc.option(fc.oneof(wellFormedWire, randomWire), { nil: null, freq: 5 }),
    }),
    { minLength: 1, maxLength: 6 },
  ),
});

const netSession = (features: bigint, protocol?: bigint) => session(features, protocol, RINGS);

const isPacked = (features: bigint) => (features & F_PACKED) !== 0n;

/** `h` as a guest that follows the ring rules would lay it out (see {@link NetHostile.tame}). */
function tamed(h: NetHostile, features: bigint): NetHostile {
  const indirect = (features & F_INDIRECT) !== 0n;
  const ring = (k: number, w: NetRingWrites): NetRingWrites =>
    only(
      w.chains.map((ch) => ({
        ...ch,
        // Lengths within the chain's buffer area (0x800 bytes apart), so no part leaves memory.
        parts: ch.parts.map((p) => ({ len: p.len % 0x801, writable: k === 0 })),
        indirect: ch.indirect && indirect,
        loop: false,
      })),
    );
  return {
    packed: isPacked(features),
    tame: true,
    rx: ring(0, h.rx),
    tx: ring(1, h.tx),
    again: null,
    kicks: h.kicks.map((k) => ({ ...k, message: null })),
  };
}

const netSessionCase = sessionCase({
  features: featureSet([F_EVENT_IDX, F_INDIRECT, F_MRG_RXBUF, F_PACKED]),
  open: netSession,
  hostile,
  negotiated: (h, features) => (h.tame ? tamed(h, features) : { ...h, packed: isPacked(features) }),
});

/**
 * Most chains a guest can have made available on one ring during a case: a ring's worth for
 * the state the session starts from, for each publication of the ring's available index, and
 * for each message (one may restart the ring at another index).
 */
function chainBound(c: FuzzCase<NetHostile>, publications: number): number {
  const messages = c.wires.length + (c.hostile?.kicks.filter((k) => k.message).length ?? 0);
  return QSIZE * (1 + publications + messages);
}

/** The counters one fuzzer moved, summed over its cases. */
const moved = {
  txFrames: 0,
  txUnsupported: 0,
  rxFrames: 0,
  rxBadBuffers: 0,
  /** Frames transmitted through packed rings. */
  packedTxFrames: 0,
};

function fuzzerFor(device: FuzzDevice) {
  const sink = device === 'net-sink';
  return socketFuzzSuite<NetHostile>({
    label: `${device} socket fuzz`,
    device,
    async clean(s) {
      const features = await s.negotiate();
      expect(features & F_MRG_RXBUF).toBe(F_MRG_RXBUF);
      const cfg = await s.ask(R.GET_CONFIG, concat(u32s(0, 6, 0), new Uint8Array(6)));
      expect(new Uint8Array(cfg.buffer, cfg.byteOffset + 12, 6)).toEqual(NET_MAC);
      const mergeable = s.run % 2 === 1;
      await s.acked(R.SET_FEATURES, u64(VERSION_1 | PROTOCOL_BIT | (mergeable ? F_MRG_RXBUF : 0n)));
      await s.memory();
      const rx = await s.ring(0, RING0.desc);
      const tx = await s.ring(1, TX_RING.desc);
      const before = await s.probe();
      const g = s.guest;
      const frames = [60, 61 + (s.run % 50), 1514].map((len, i) => {
        const f = new Uint8Array(len).map((_, j) => (j * 7 + i + s.run) & 0xff);
        f.set([0x02, 0, 0, 0, 0, i, ...NET_MAC], 0);
        return f;
      });
      // Receive buffers, one per ring slot, each put back once used.
      const rxBuf = (i: number) => ({ addr: 0x4_0000 + 0x1000 * i, len: 2048 });
      const slotOf = new Map<number, number>();
      if (!sink) {
        for (let i = 0; i < QSIZE; i++) slotOf.set(rx.add([], [rxBuf(i)]), i);
        s.notify(rx, 0);
      }
      s.step = 'transmit';
      frames.forEach((f, i) => {
        const at = 0x1_0000 + 0x1000 * i;
        g.fill(at, HDR);
        g.write(at + 0x100, f);
        tx.add([
          { addr: at, len: HDR },
          { addr: at + 0x100, len: f.length },
        ]);
      });
      await s.serve(tx, 1);
      let sent = 0;
      await s.until(() => {
        while (tx.popUsed() >= 0) sent++;
        return sent === frames.length;
      }, `${sent} of ${frames.length} transmit chains used`);
      let received = 0;
      if (!sink) {
        // Frames the device held from the case come first (they belong to the link and
        // survive the reset of the disconnect); ours are the last ones, in order, exact.
        s.step = 'receive';
        const got: Uint8Array[] = [];
        await s.until(() => {
          for (let head = rx.popUsed(); head >= 0; head = rx.popUsed()) {
            const slot = slotOf.get(head)!;
            const bytes = new Uint8Array(rx.lastUsedLen);
            g.read(rxBuf(slot).addr, bytes);
            got.push(bytes);
            slotOf.delete(head);
            slotOf.set(rx.add([], [rxBuf(slot)]), slot);
            s.notify(rx, 0);
          }
          return got.length >= frames.length && got.at(-1)!.length === HDR + frames.at(-1)!.length;
        }, 'the reflected frames did not all come back');
        // Frames, not buffers: with MRG_RXBUF a large frame held from the case spans several
        // buffers, its first one's num_buffers says how many.
        for (let i = 0; i < got.length; i += mergeable ? Math.max(1, got[i]![10]!) : 1) received++;
        frames.forEach((f, i) => {
          const back = got[got.length - frames.length + i]!;
          if (mergeable) expect(back[10], 'num_buffers').toBe(1);
          const swapped = concat(f.subarray(6, 12), f.subarray(0, 6), f.subarray(12));
          expect(back.subarray(HDR)).toEqual(swapped);
        });
      }
      const after = await s.probe();
      const bytes = frames.reduce((a, f) => a + f.length, 0);
      expect(after.lab!.frames - before.lab!.frames).toBe(frames.length);
      expect(after.lab!.bytes - before.lab!.bytes).toBe(bytes);
      expect(after.device.txFrames! - before.device.txFrames!).toBe(frames.length);
      expect(after.device.rxFrames! - before.device.rxFrames!).toBe(received);
      const base = await s.ask(R.GET_VRING_BASE, u32s(1, 0));
      expect(base.getUint32(4, true)).toBe(frames.length);
    },
    async play(h, g) {
      const ram = g.pool.ram;
      writeNetRing(ram, 0, h.rx, h.packed);
      writeNetRing(ram, 1, h.tx, h.packed);
      for (const [i, k] of h.kicks.entries()) {
        if (k.message !== null && !(await g.send(k.message))) return;
        g.kick(k.ring);
        await g.settle(2);
        if (i === 0 && h.again !== null) writeNetRing(ram, 1, h.again, h.packed);
      }
    },
    afterCase(c, before, after) {
      const d = (name: string) => after.device[name]! - before.device[name]!;
      const frames = after.lab!.frames - before.lab!.frames;
      const txBound = chainBound(c, c.hostile === null ? 0 : c.hostile.again === null ? 1 : 2);
      const rxBound = chainBound(c, c.hostile === null ? 0 : 1);
      expect(d('txFrames') + d('txUnsupported'), 'transmit chains taken').toBeLessThanOrEqual(
        txBound,
      );
      expect(d('rxFrames'), 'frames received').toBeLessThanOrEqual(rxBound);
      if (sink) {
        // The sink took every frame the device sent it, and sent none back.
        expect(frames).toBe(d('txFrames'));
        expect(d('rxFrames')).toBe(0);
      } else {
        expect(frames).toBeLessThanOrEqual(d('txFrames'));
      }
      moved.txFrames += d('txFrames');
      moved.txUnsupported += d('txUnsupported');
      moved.rxFrames += d('rxFrames');
      moved.rxBadBuffers += d('rxBadBuffers');
      if (c.hostile?.packed) moved.packedTxFrames += d('txFrames');
    },
  });
}

nativeAddonTest('the vhost-user net socket fuzzer');

for (const device of ['net-sink', 'net-reflect'] as const) {
  describe.runIf(nativeOk)(`vhost-user back-end socket fuzzer, network device (${device})`, () => {
    const { fuzz, fuzzOne } = fuzzerFor(device);

    it('(b) well-formed messages of every request type with random fields', async () => {
      const ring = netSession(VERSION_1 | PROTOCOL_BIT);
      await fuzz('well-formed', wellFormedCase(ring), DEFAULT_RUNS.wellFormed);
    });

    it('(c) mutated sessions with hostile transmit chains and receive buffers', async () => {
      for (const key of Object.keys(moved) as (keyof typeof moved)[]) moved[key] = 0;
      const numRuns = RUNS > 0 ? RUNS : DEFAULT_RUNS.session;
      await fuzz('mutated session', netSessionCase, numRuns, ['hostileRings', 'fuzzCalls']);
      console.log(`${device} socket fuzz: the hostile guests moved ${JSON.stringify(moved)}`);
      if (REPLAY_PATH === undefined && numRuns >= 100) {
        // The hostile chains reach the device: frames go out, bad chains are refused.
        expect(moved.txFrames).toBeGreaterThan(0);
        expect(moved.txUnsupported).toBeGreaterThan(0);
        expect(moved.packedTxFrames).toBeGreaterThan(0);
        // Reflected frames land in the hostile receive buffers.
        if (device === 'net-reflect') expect(moved.rxFrames).toBeGreaterThan(0);
      }
    });

    it.each([
      ['split', false],
      ['packed', true],
    ])(
      '%s: takes no frame from looping transmit chains and no buffer from looping receive ones',
      async (_, packed) => {
        const plain = new Uint8Array(HDR);
        const loop = (indirect: boolean, writable: boolean): NetChain => ({
          parts: [
            { len: HDR, writable },
            { len: 60, writable },
          ],
          indirect,
          loop: true,
          header: plain,
        });
        for (const key of Object.keys(moved) as (keyof typeof moved)[]) moved[key] = 0;
        const probe = await fuzzOne({
          wires: netSession(VERSION_1 | PROTOCOL_BIT | F_INDIRECT | (packed ? F_PACKED : 0n)),
          hostile: {
            packed,
            tame: false,
            rx: only([loop(false, true), loop(true, true)]),
            tx: only([loop(false, false), loop(true, false)]),
            again: null,
            kicks: [
              { ring: 0, message: null },
              { ring: 1, message: null },
            ],
          },
        });
        expect(probe.connected).toBe(false);
        // afterCase summed what the case moved (the clean session after it is not counted).
        expect(moved.txFrames).toBe(0);
        expect(moved.rxFrames).toBe(0);
      },
    );
  });
}
