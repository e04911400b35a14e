import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChainReader, ChainWriter } from '../../src/iovec/index.js';
import {
  DescriptorChain,
  InOrderCompleter,
  type Queue,
  type RingFormat,
} from '../../src/queue/index.js';
import { drivenQueue } from './driven-queue.js';

/**
 * A device written once against the `Queue` interface: it reads each request (a u32 sequence
 * number then payload bytes), answers with the sequence number and the payload reversed, and
 * completes either immediately or, with IN_ORDER, possibly out of order through
 * InOrderCompleter. It never learns which ring format or features the driver negotiated.
 */
class EchoDevice {
  private readonly chain = new DescriptorChain();
  private readonly reader = new ChainReader();
  private readonly writer = new ChainWriter();
  private readonly scratch = new Uint8Array(4096);
  private readonly completer: InOrderCompleter | null;
  /** Finished but not yet completed (in-order mode), to complete in a scrambled order. */
  private held: [number, number][] = [];
  served = 0;

  constructor(
    private readonly queue: Queue,
    inOrder: boolean,
  ) {
    this.completer = inOrder ? new InOrderCompleter(queue) : null;
  }

  /** Serves every available chain; returns whether the driver wants an interrupt. */
  process(scramble: (n: number) => number): boolean {
    for (;;) {
      const c = this.queue.popOrEnableNotification(this.chain);
      if (c === null) break;
      const r = this.reader.reset(c);
      const w = this.writer.reset(c);
      const seq = r.readU32();
      const n = r.remaining;
      r.readExact(this.scratch, 0, n);
      this.scratch.subarray(0, n).reverse();
      w.writeU32(seq);
      w.writeExact(this.scratch, 0, n);
      this.served++;
      if (this.completer === null) this.queue.addUsed(c.head, w.bytesWritten);
      else {
        this.completer.popped(c.head);
        this.held.push([c.head, w.bytesWritten]);
      }
    }
    if (this.completer !== null) {
      // Complete in an order the test chooses; only the contiguous prefix gets published.
      while (this.held.length > 0) {
        const [id, len] = this.held.splice(scramble(this.held.length) % this.held.length, 1)[0]!;
        this.completer.complete(id, len);
        this.completer.flush();
      }
      return this.queue.prepareKick();
    }
    this.queue.advanceUsedRingIdx();
    return this.queue.prepareKick();
  }
}

interface Variant {
  format: RingFormat;
  indirect: boolean;
  eventIdx: boolean;
  inOrder: boolean;
}

const VARIANTS: Variant[] = [];
for (const format of ['split', 'packed'] as const) {
  for (const indirect of [false, true]) {
    for (const eventIdx of [false, true]) {
      for (const inOrder of [false, true]) VARIANTS.push({ format, indirect, eventIdx, inOrder });
    }
  }
}

function rig(v: Variant, size: number) {
  const { memory, queue, driver } = drivenQueue(v.format, size, v);
  return { memory, queue, driver, device: new EchoDevice(queue, v.inOrder) };
}

const SLOT = 0x1000;

function pattern(seq: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (seq + i) & 0xff;
  return out;
}
const DATA = 0x40000;

describe('one device, every queue variant (Queue interface)', () => {
  for (const v of VARIANTS) {
    const name = `${v.format}${v.indirect ? ' +indirect' : ''}${v.eventIdx ? ' +event_idx' : ''}${v.inOrder ? ' +in_order' : ''}`;
    it(`${name}: every request comes back once, answered correctly`, () => {
      fc.assert(
        fc.property(
          fc.array(
            fc.record({
              burst: fc.integer({ min: 1, max: 12 }),
              len: fc.integer({ min: 0, max: 300 }),
            }),
            {
              minLength: 1,
              maxLength: 25,
            },
          ),
          fc.integer({ min: 0, max: 1000 }),
          (bursts, seed) => {
            const size = v.format === 'split' ? 16 : 13;
            const { memory, driver, device } = rig(v, size);
            let rnd = seed;
            const scramble = (n: number) => {
              rnd = (rnd * 1103515245 + 12345) & 0x7fffffff;
              return rnd % n;
            };
            let seq = 0;
            const slotOf = new Map<number, { seq: number; slot: number; len: number }>();
            const freeSlots = Array.from({ length: size }, (_, i) => i);
            let answered = 0;
            for (const b of bursts) {
              for (let k = 0; k < b.burst && freeSlots.length > 0; k++) {
                const needed = v.indirect ? 1 : 3;
                if (driver.numFree < needed) break;
                const slot = freeSlots.pop()!;
                const base = DATA + slot * SLOT;
                memory.writeU32(base, seq);
                memory.write(base + 4, pattern(seq, b.len));
                // Request split over two readable buffers; answer into one writable buffer.
                const cut = Math.min(2, b.len + 4);
                const readable = [
                  { addr: base, len: cut },
                  { addr: base + cut, len: 4 + b.len - cut },
                ];
                const writable = [{ addr: base + 0x800, len: 4 + b.len }];
                const id = v.indirect
                  ? driver.addIndirect(base + 0xf00, readable, writable)
                  : driver.add(readable, writable);
                slotOf.set(id, { seq, slot, len: b.len });
                seq++;
              }
              driver.kick();
              device.process(scramble);
              for (let id = driver.popUsed(); id >= 0; id = driver.popUsed()) {
                const req = slotOf.get(id);
                expect(req).toBeDefined();
                slotOf.delete(id);
                const base = DATA + req!.slot * SLOT;
                expect(driver.lastUsedLen).toBe(4 + req!.len);
                expect(memory.readU32(base + 0x800)).toBe(req!.seq);
                for (let i = 0; i < req!.len; i++) {
                  expect(memory.readU8(base + 0x804 + i)).toBe(
                    (req!.seq + (req!.len - 1 - i)) & 0xff,
                  );
                }
                freeSlots.push(req!.slot);
                answered++;
              }
            }
            expect(slotOf.size).toBe(0);
            expect(answered).toBe(seq);
            expect(device.served).toBe(seq);
            expect(driver.numFree).toBe(size);
          },
        ),
        { numRuns: 25 },
      );
    });
  }
});
