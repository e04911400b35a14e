/**
 * Only the queue fills a chain: device code sees it read-only (checked here by the type checker
 * with @ts-expect-error, and by a scan of the sources for the builder's module), a foreign
 * object is refused as pop storage, and the one way besides a pop to get a filled chain,
 * `Queue.reviveChain` (a chain a device held across a snapshot), checks what a pop checks.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { DriverQueue } from '../../src/driver/index.js';
import { DescriptorError } from '../../src/errors.js';
import {
  createQueue,
  DescriptorChain,
  type Queue,
  type RingFormat,
  SplitQueue,
  silentLogger,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';
import { drivenQueue } from './driven-queue.js';

const MEM = 1 << 20;
const DATA = 0x40000;

function rig(format: RingFormat, size = 8): { queue: Queue; driver: DriverQueue } {
  return drivenQueue(format, size, { memoryBytes: MEM });
}

function codeOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof DescriptorError) return e.code;
    throw e;
  }
  return 'no error';
}

describe('a chain is read-only outside src/queue', () => {
  it('has no builder in its public type', () => {
    const c = new DescriptorChain();
    // @ts-expect-error device code cannot start a chain
    expect(c.begin).toBeTypeOf('function');
    // @ts-expect-error nor push a descriptor
    expect(c.push).toBeTypeOf('function');
    // @ts-expect-error nor change what was validated
    c.count = 3;
    // @ts-expect-error the per-descriptor storage is read-only too
    c.lens[0] = 1;
  });

  it('is filled by no module outside src/queue', () => {
    const root = join(import.meta.dirname, '../../src');
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (p.endsWith('.ts') && !relative(root, p).startsWith('queue/')) {
          if (/(chain-(record|walk)|split-walk)\.js/.test(readFileSync(p, 'utf8')))
            offenders.push(relative(root, p));
        }
      }
    };
    walk(root);
    expect(offenders).toEqual([]);
    // The scan would see one: the queues themselves import it.
    expect(readFileSync(join(root, 'queue/split/queue.ts'), 'utf8')).toMatch(/chain-record\.js/);
  });

  it('refuses pop storage that is not a chain', () => {
    const { queue, driver } = rig('split');
    driver.add([{ addr: DATA, len: 16 }]);
    driver.kick();
    const fake = Object.create(null) as DescriptorChain;
    expect(() => queue.pop(fake)).toThrow(TypeError);
  });
});

describe('Queue.reviveChain', () => {
  for (const format of ['split', 'packed'] as const) {
    it(`${format}: rebuilds a held chain as a pop would have made it`, () => {
      const { queue, driver } = rig(format);
      driver.add(
        [{ addr: DATA, len: 10 }],
        [
          { addr: DATA + 0x100, len: 20 },
          { addr: DATA + 0x200, len: 30 },
        ],
      );
      driver.kick();
      const popped = queue.pop()!;
      const saved = Array.from({ length: popped.count }, (_, i) => [
        popped.addrs[i]!,
        popped.lens[i]!,
      ]) as [number, number][];
      const c = queue.reviveChain(popped.head, popped.ringCount, saved, popped.writableStart);
      expect(c.head).toBe(popped.head);
      expect(c.count).toBe(3);
      expect(c.ringCount).toBe(popped.ringCount);
      expect(c.writableStart).toBe(1);
      expect(c.readableLength).toBe(10);
      expect(c.writableLength).toBe(50);
      expect([...c].map((d) => [d.addr, d.len, d.flags])).toEqual([
        [DATA, 10, VIRTQ_DESC_F_NEXT],
        [DATA + 0x100, 20, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT],
        [DATA + 0x200, 30, VIRTQ_DESC_F_WRITE],
      ]);
      // Into caller storage, as pop(into) does.
      const into = new DescriptorChain(1);
      expect(queue.reviveChain(popped.head, popped.ringCount, saved, 1, into)).toBe(into);
      expect(into.writableLength).toBe(50);
    });

    it(`${format}: refuses what a pop would refuse`, () => {
      const { queue, driver } = rig(format);
      driver.add([], [{ addr: DATA, len: 64 }]);
      driver.kick();
      const head = queue.pop()!.head;
      const ok: [number, number][] = [[DATA, 64]];
      expect(codeOf(() => queue.reviveChain(8, 1, ok, 0))).toBe('DESC_HEAD_OUT_OF_RANGE');
      expect(codeOf(() => queue.reviveChain(-1, 1, ok, 0))).toBe('DESC_HEAD_OUT_OF_RANGE');
      expect(codeOf(() => queue.reviveChain(head, 1, [[MEM - 8, 64]], 0))).toBe(
        'DESC_BUFFER_OUT_OF_MEMORY',
      );
      expect(codeOf(() => queue.reviveChain(head, 1, [[-4096, 64]], 0))).toBe(
        'DESC_BUFFER_OUT_OF_MEMORY',
      );
      expect(codeOf(() => queue.reviveChain(head, 1, [[DATA, 2 ** 32]], 0))).toBe(
        'DESC_BUFFER_OUT_OF_MEMORY',
      );
      expect(codeOf(() => queue.reviveChain(head, 0, ok, 0))).toBe('DESC_CHAIN_TOO_LONG');
      expect(codeOf(() => queue.reviveChain(head, 1, [], 0))).toBe('DESC_CHAIN_TOO_LONG');
      const long = Array.from({ length: 9 }, (_, i) => [DATA + i * 64, 64] as [number, number]);
      expect(codeOf(() => queue.reviveChain(head, 1, long, 0))).toBe('DESC_CHAIN_TOO_LONG');
      if (format === 'packed') {
        // The packed ring knows which buffers are in flight, and how many slots each takes.
        const other = (head + 1) % 8;
        expect(codeOf(() => queue.reviveChain(other, 1, ok, 0))).toBe('DESC_PACKED_BAD_ID');
        expect(codeOf(() => queue.reviveChain(head, 2, ok, 0))).toBe('DESC_PACKED_BAD_ID');
      }
      expect(queue.reviveChain(head, 1, ok, 0).writableLength).toBe(64);
    });
  }

  it('needs an active queue', () => {
    const q = createQueue('split', 8);
    expect(() => q.reviveChain(0, 1, [[DATA, 1]], 0)).toThrow(/not initialised/);
  });
});

describe('SplitQueue.restore', () => {
  it("replaces the ring's state and keeps the queue's own resynchronisation count", () => {
    const { queue } = rig('split');
    if (!(queue instanceof SplitQueue)) throw new Error('a split queue');
    const q = queue;
    const saved = q.save();
    // A driver index more than `size` ahead: the queue resynchronises (and counts it).
    const memory = q.guestMemory!;
    memory.writeU16(q.availRingAddress + 2, 100);
    q.logger = silentLogger;
    expect(q.pop()).toBeNull();
    expect(q.resyncCount).toBe(1);
    q.restore(saved, memory);
    expect(q.nextAvail).toBe(saved.nextAvail);
    expect(q.resyncCount).toBe(1);
  });
});
