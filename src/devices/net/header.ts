import { type NetHeader, VIRTIO_NET_HDR_SIZE } from './request.js';

/**
 * struct virtio_net_hdr (VIRTIO 1.2 §5.1.6, the 12-byte layout with `num_buffers`) as bytes
 * outside guest memory: what a frame backend exchanges with a peer that speaks the same header,
 * such as a Linux tap interface opened with IFF_VNET_HDR. Little-endian, as in VIRTIO 1.x.
 */

/** Writes `header` and `numBuffers` as the 12 bytes at `buf[at]`. */
export function encodeNetHeader(header: NetHeader, buf: Uint8Array, at = 0, numBuffers = 0): void {
  buf[at] = header.flags;
  buf[at + 1] = header.gsoType;
  putU16(buf, at + 2, header.hdrLen);
  putU16(buf, at + 4, header.gsoSize);
  putU16(buf, at + 6, header.csumStart);
  putU16(buf, at + 8, header.csumOffset);
  putU16(buf, at + 10, numBuffers);
}

/**
 * Reads the 12 bytes at `buf[at]` into `out` (and returns it); `num_buffers` is not part of a
 * {@link NetHeader} and is skipped. RangeError when fewer than 12 bytes remain.
 */
export function decodeNetHeader(buf: Uint8Array, at: number, out: NetHeader): NetHeader {
  if (at < 0 || at + VIRTIO_NET_HDR_SIZE > buf.length) {
    throw new RangeError(`a virtio-net header needs ${VIRTIO_NET_HDR_SIZE} bytes at ${at}`);
  }
  out.flags = buf[at]!;
  out.gsoType = buf[at + 1]!;
  out.hdrLen = getU16(buf, at + 2);
  out.gsoSize = getU16(buf, at + 4);
  out.csumStart = getU16(buf, at + 6);
  out.csumOffset = getU16(buf, at + 8);
  return out;
}

function putU16(buf: Uint8Array, at: number, v: number): void {
  buf[at] = v & 0xff;
  buf[at + 1] = (v >>> 8) & 0xff;
}

function getU16(buf: Uint8Array, at: number): number {
  return buf[at]! | (buf[at + 1]! << 8);
}
