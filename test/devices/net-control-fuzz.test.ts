/**
 * Hostile control-queue chains against a multiqueue virtio-net device (VIRTIO 1.2 §5.1.6.5):
 * random classes, commands and data lengths, answers with no room or more room than one byte,
 * the command split over descriptors, buffers outside guest memory. Properties: nothing but a
 * guest error leaves the device (and that one becomes DEVICE_NEEDS_RESET), every turn takes at
 * most its chain budget, the chains are all answered within a bounded number of turns, answers
 * are only OK or ERR, the pairs in use stay within 1..max, and after a reset a clean driver
 * gets its VQ_PAIRS_SET answered.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { VIRTIO_F_RING_PACKED } from '../../src/queue/index.js';
import { HandBackend, MQ_FEATURES, mqSide, udpFrame } from './net-mq-rig.js';
import { RINGS, World } from './net-rig.js';

const BUDGET = 8;

const command = fc.record({
  cls: fc.oneof(fc.constantFrom(0, 1, 2, 3, 4, 4, 4, 5), fc.integer({ min: 0, max: 255 })),
  cmd: fc.oneof(fc.constantFrom(0, 0, 1, 2), fc.integer({ min: 0, max: 255 })),
  data: fc.uint8Array({ maxLength: 6 }),
  /** Readable bytes actually given (may cut class and command). */
  cut: fc.option(fc.integer({ min: 0, max: 8 }), { nil: undefined }),
  ackBytes: fc.constantFrom(0, 1, 1, 1, 3),
  split: fc.boolean(),
  outside: fc.constantFrom(false, false, false, false, false, false, false, true),
});

describe('virtio-net control queue against hostile chains', () => {
  it('answers or fails cleanly, within its budget, and keeps working after a reset', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...RINGS),
        fc.array(command, { minLength: 1, maxLength: 120 }),
        (ring, cmds) => {
          const later: (() => void)[] = [];
          const b = new HandBackend();
          const a = mqSide(new World(), b, {
            maxChainsPerTurn: BUDGET,
            schedule: (run) => later.push(run),
          });
          const g = a.guest;
          g.init(ring.features | MQ_FEATURES);
          const q = g.ctrl!;
          const mem = g.memory;
          const cmdBuf = g.alloc.alloc(64 * 16, 16);
          const ackBuf = g.alloc.alloc(64 * 4, 16);
          const far = mem.size + 0x10000;
          const expectAck = new Map<number, number>(); // id -> its ack address, or -1: none
          let submitted = 0;
          let answered = 0;
          let turns = 0;
          const handled = () => {
            const st = a.device.control.stats;
            return st.ok + st.refused + st.unanswerable;
          };
          const turn = (fn: () => void) => {
            const before = handled();
            fn(); // never throws: a guest error becomes DEVICE_NEEDS_RESET
            turns++;
            expect(handled() - before).toBeLessThanOrEqual(BUDGET);
          };
          const collect = () => {
            for (let id = q.popUsed(); id >= 0; id = q.popUsed()) {
              const w = expectAck.get(id);
              expect(w).toBeDefined();
              expectAck.delete(id);
              answered++;
              if (w! < 0) expect(q.lastUsedLen).toBe(0);
              else {
                expect(q.lastUsedLen).toBe(1);
                expect([0, 1]).toContain(mem.readU8(w!));
              }
            }
          };
          let i = 0;
          while (i < cmds.length && !a.device.needsReset) {
            // Fill what the ring has room for, then one notification and its continuations.
            while (i < cmds.length && q.numFree >= 3) {
              const c = cmds[i++]!;
              const bytes = Uint8Array.of(c.cls, c.cmd, ...c.data);
              const len = Math.min(c.cut ?? bytes.length, bytes.length);
              const slot = submitted % 64;
              const at = c.outside ? far : cmdBuf + slot * 16;
              if (!c.outside) mem.write(at, bytes.subarray(0, len));
              const readable =
                c.split && len >= 2
                  ? [
                      { addr: at, len: 1 },
                      { addr: at + 1, len: len - 1 },
                    ]
                  : [{ addr: at, len }];
              // A zero-length readable buffer is still a descriptor: keep it only when cut to 0.
              const r = len === 0 ? [] : readable;
              const w = c.ackBytes === 0 ? [] : [{ addr: ackBuf + slot * 4, len: c.ackBytes }];
              if (r.length === 0 && w.length === 0) continue;
              const id = q.add(r, w);
              mem.writeU8(ackBuf + slot * 4, 0xee);
              expectAck.set(id, w.length === 0 ? -1 : ackBuf + slot * 4);
              submitted++;
            }
            q.kick(); // publish; the notification goes whatever the driver's suppression says
            turn(() => g.mmio.notify(g.ctrlIndex));
            for (let k = 0; k < 64 && later.length > 0; k++) turn(later.shift()!);
            expect(later.length).toBe(0);
            collect();
            if (!a.device.needsReset) expect(expectAck.size).toBe(0);
          }
          expect(turns).toBeLessThan(4 * cmds.length + 8);
          expect(a.device.activePairs).toBeGreaterThanOrEqual(1);
          expect(a.device.activePairs).toBeLessThanOrEqual(2);
          if (!cmds.some((c) => c.outside)) {
            expect(a.device.needsReset).toBe(false);
            expect(answered).toBe(submitted);
          }
          // A reset ends whatever happened; a clean driver is served.
          g.reset();
          g.init(ring.features | MQ_FEATURES);
          expect(a.device.needsReset).toBe(false);
          expect(g.setPairs(2)).toBe(0);
          expect(b.push(udpFrame(1, 1))).toBe(true);
          for (const run of later.splice(0)) run();
          expect(g.receiveAll(0).length + g.receiveAll(1).length).toBe(1);
        },
      ),
      { numRuns: Number(process.env.VIRTQ_NET_CONTROL_FUZZ_RUNS ?? 60) },
    );
  });

  it('a chain outside guest memory puts the device into DEVICE_NEEDS_RESET, not an exception', () => {
    const a = mqSide(new World(), new HandBackend());
    const g = a.guest;
    g.init(RINGS[2]!.features | MQ_FEATURES | featureBit(VIRTIO_F_RING_PACKED));
    g.ctrl!.add([{ addr: g.memory.size + 4096, len: 4 }], [{ addr: 0x100, len: 1 }]);
    expect(() => g.mmio.kick(g.ctrlIndex)).not.toThrow();
    expect(a.device.needsReset).toBe(true);
    expect(a.device.lastError?.code).toBeDefined();
  });
});
