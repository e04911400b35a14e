/**
 * The transmit header parser reads the 12-byte virtio header in place when header and frame
 * are the chain's one readable buffer, and through the streaming reader when the driver spread
 * them over descriptors: both paths give the same header and the same frame bytes (in place,
 * or with the reader at the frame's first byte).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  parseTxRequest,
  txFrameScratch,
  VIRTIO_NET_HDR_SIZE,
} from '../../src/devices/net/request.js';
import { ChainReader } from '../../src/iovec/index.js';
import { contiguousMemory, Env } from '../iovec/env.js';

const ALL = { csum: true, tso4: true, tso6: true, ecn: true };

describe('parseTxRequest', () => {
  it('reads the same header whether it is in one piece or spread over descriptors', () => {
    const memory = contiguousMemory([0x10000], { shared: true });
    const env = new Env(memory);
    const reader = new ChainReader();
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: VIRTIO_NET_HDR_SIZE }),
        fc.integer({ min: 60, max: 300 }),
        fc.record({
          hdrLen: fc.integer({ min: 0, max: 0xffff }),
          csumStart: fc.integer({ min: 0, max: 20 }),
          csumOffset: fc.integer({ min: 0, max: 16 }),
          gsoSize: fc.integer({ min: 1, max: 0xffff }),
        }),
        (firstLen, frameLen, h) => {
          const hdr = new Uint8Array(VIRTIO_NET_HDR_SIZE);
          const v = new DataView(hdr.buffer);
          v.setUint8(0, 1); // NEEDS_CSUM
          v.setUint8(1, 1); // GSO_TCPV4
          v.setUint16(2, h.hdrLen, true);
          v.setUint16(4, h.gsoSize, true);
          v.setUint16(6, h.csumStart, true);
          v.setUint16(8, h.csumOffset, true);
          const frame = new Uint8Array(frameLen).map((_, i) => i & 0xff);
          const parse = (pieces: { addr: number; len: number }[]) => {
            const chain = env.pop(pieces);
            const out = parseTxRequest(chain, reader.reset(chain), ALL, txFrameScratch());
            expect(out.kind).toBe('frame');
            if (out.kind !== 'frame') return null;
            let rest: Uint8Array;
            if (out.region !== null) {
              rest = out.region.bytes.slice(out.at, out.at + out.length);
            } else {
              rest = new Uint8Array(out.length);
              reader.readExact(rest);
            }
            const header = { ...out.header };
            return {
              header,
              length: out.length,
              rest: Array.from(rest),
              inPlace: out.region !== null,
            };
          };
          // One piece: header and frame together.
          memory.write(0x5000, hdr);
          memory.write(0x5000 + VIRTIO_NET_HDR_SIZE, frame);
          const whole = parse([{ addr: 0x5000, len: VIRTIO_NET_HDR_SIZE + frameLen }]);
          // Spread: the header cut after `firstLen` bytes, each part in its own buffer.
          memory.write(0x8000, hdr.subarray(0, firstLen));
          memory.write(0x9000, hdr.subarray(firstLen));
          memory.write(0xa000, frame);
          const pieces = [{ addr: 0x8000, len: firstLen }];
          if (firstLen < VIRTIO_NET_HDR_SIZE) {
            pieces.push({ addr: 0x9000, len: VIRTIO_NET_HDR_SIZE - firstLen });
          }
          pieces.push({ addr: 0xa000, len: frameLen });
          const spread = parse(pieces);
          expect(whole!.inPlace).toBe(true);
          expect(spread!.inPlace).toBe(false);
          expect({ ...spread, inPlace: true }).toEqual(whole);
          expect(whole!.rest).toEqual(Array.from(frame));
          expect(whole!.header).toEqual({
            flags: 1,
            gsoType: 1,
            hdrLen: h.hdrLen,
            gsoSize: h.gsoSize,
            csumStart: h.csumStart,
            csumOffset: h.csumOffset,
          });
        },
      ),
      { numRuns: 100 },
    );
  });

  it('reads a header split over two buffers with a reader that has never claimed anything', () => {
    const memory = contiguousMemory([0x10000], { shared: true });
    const env = new Env(memory);
    memory.write(0x8000, Uint8Array.of(0, 0, 54, 0, 0));
    memory.write(0x9000, new Uint8Array(7));
    memory.write(0xa000, new Uint8Array(60).fill(0x5a));
    const chain = env.pop([
      { addr: 0x8000, len: 5 },
      { addr: 0x9000, len: 7 },
      { addr: 0xa000, len: 60 },
    ]);
    const reader = new ChainReader();
    expect(reader.claimedRegion).toBeNull();
    const out = parseTxRequest(chain, reader, ALL, txFrameScratch());
    expect(out.kind).toBe('frame');
    if (out.kind !== 'frame') return;
    expect([out.region, out.length, out.header.hdrLen]).toEqual([null, 60, 54]);
    const rest = new Uint8Array(60);
    reader.readExact(rest);
    expect(rest.every((b) => b === 0x5a)).toBe(true);
  });
});
