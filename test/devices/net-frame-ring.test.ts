/**
 * The device's ring of frames waiting for receive buffers: whatever buffers the frames come
 * from (views at any offset of a backend's own buffer, shared memory, several buffers in turn)
 * and whatever their lengths (the small ones copied four bytes at a time, the large ones with
 * one `set`), every stored frame reads back byte for byte, in order, until it is shifted out.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameRing } from '../../src/devices/net/frame-ring.js';

const sources = [
  new Uint8Array(4096).map((_, i) => (i * 13 + 7) & 0xff),
  new Uint8Array(new SharedArrayBuffer(4096)).map((_, i) => (i * 31 + 1) & 0xff),
  new Uint8Array(new ArrayBuffer(5000), 3, 4000).map((_, i) => (i * 5 + 3) & 0xff),
];

describe('FrameRing', () => {
  it('property: frames pushed from views of any buffer read back exactly, in order', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({
              src: fc.nat(sources.length - 1),
              offset: fc.nat(1500),
              len: fc.oneof(fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 2000 })),
              extra: fc.nat(3),
            }),
            fc.constant('shift' as const),
          ),
          { maxLength: 60 },
        ),
        (ops) => {
          const ring = new FrameRing(8, 6000);
          const model: Uint8Array[] = [];
          for (const op of ops) {
            if (op === 'shift') {
              if (model.length === 0) continue;
              ring.shift();
              model.shift();
              continue;
            }
            const base = sources[op.src]!;
            // A view longer than the frame (`extra` bytes past it), as a backend's buffer is.
            const view = base.subarray(op.offset, op.offset + op.len + op.extra);
            const want = view.slice(0, op.len);
            if (ring.push(view, op.len, null)) model.push(want);
            expect(ring.length).toBe(model.length);
            model.forEach((m, i) => {
              const at = ring.offsetAt(i);
              expect(ring.lengthAt(i)).toBe(m.length);
              expect(Buffer.compare(ring.data.subarray(at, at + m.length), m)).toBe(0);
            });
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
