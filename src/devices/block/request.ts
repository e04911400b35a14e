import { IovecError } from '../../errors.js';
import type { ChainReader } from '../../iovec/reader.js';
import type { DescriptorChain } from '../../queue/chain.js';

/** Request types (VIRTIO 1.2 §5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status values (§5.2.6). */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Size of `struct virtio_blk_req`'s fixed header: type, reserved, sector. */
export const BLK_HEADER_BYTES = 16;
/** The protocol's sector (§5.2.6: always 512 bytes, whatever `blk_size` says). */
export const SECTOR_BYTES = 512;
/** Size of `struct virtio_blk_discard_write_zeroes`. */
export const BLK_SEGMENT_BYTES = 16;
/** Length of the device ID string of VIRTIO_BLK_T_GET_ID. */
export const BLK_ID_BYTES = 20;
/** The one defined flag of a discard / write-zeroes segment. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** Why a request that has a status byte is answered with VIRTIO_BLK_S_IOERR before it runs. */
export type BlockInvalidReason =
  | 'header shorter than 16 bytes'
  | 'device-readable data in a read request'
  | 'device-writable data in a write request'
  | 'data length is not a multiple of 512'
  | 'GET_ID data is not 20 bytes'
  | 'segment data is empty or not a multiple of 16 bytes';

/**
 * A request as the device sees it after parsing (§5.2.6). `dataLength` is the length of the
 * `data` part: device-writable bytes before the status byte for IN and GET_ID, device-readable
 * bytes after the header for OUT, DISCARD and WRITE_ZEROES.
 *
 * - `unsupported`: a type this device does not implement (or a feature the driver did not
 *   negotiate); it completes with VIRTIO_BLK_S_UNSUPP.
 * - `invalid`: the driver broke the request framing (§5.2.6.1) in a way the device can still
 *   report, because the chain ends in a device-writable status byte; it completes with
 *   VIRTIO_BLK_S_IOERR ("device or driver error").
 *
 * A chain without any device-writable byte has no status to report anything in; the parser
 * throws {@link IovecError} for it and the device enters DEVICE_NEEDS_RESET (see the device).
 */
export type BlockRequest =
  | {
      readonly kind: 'in';
      readonly type: number;
      readonly sector: number;
      readonly dataLength: number;
    }
  | {
      readonly kind: 'out';
      readonly type: number;
      readonly sector: number;
      readonly dataLength: number;
    }
  | { readonly kind: 'flush'; readonly type: number }
  | { readonly kind: 'get-id'; readonly type: number; readonly dataLength: number }
  | {
      readonly kind: 'discard';
      readonly type: number;
      readonly dataLength: number;
      readonly segments: number;
    }
  | {
      readonly kind: 'write-zeroes';
      readonly type: number;
      readonly dataLength: number;
      readonly segments: number;
    }
  | { readonly kind: 'unsupported'; readonly type: number }
  | { readonly kind: 'invalid'; readonly type: number; readonly reason: BlockInvalidReason };

export type BlockRequestKind = BlockRequest['kind'];

/**
 * The one object a device parses every request into (so parsing allocates nothing); read it
 * as a {@link BlockRequest} through {@link parseBlockRequest}'s return value.
 */
export class BlockRequestScratch {
  kind: BlockRequestKind = 'unsupported';
  type = 0;
  /** Starting sector; `2^53` stands for any value at or above it (out of every disk's range). */
  sector = 0;
  dataLength = 0;
  segments = 0;
  reason: BlockInvalidReason = 'header shorter than 16 bytes';
  /** Bytes of the status byte's position: device-writable length - 1. */
  statusOffset = 0;
}

/** `1 << type` for every type a device serves, as {@link parseBlockRequest} expects. */
export function typeMask(...types: number[]): number {
  let m = 0;
  for (const t of types) m |= 1 << t;
  return m >>> 0;
}

/**
 * Parses the chain's request header and checks its framing. `reader` is the device's reusable
 * reader; `served` has bit `1 << type` set for each request type the device serves now (others
 * parse as `unsupported`); the result is `into`, filled in.
 *
 * Throws {@link IovecError} when the chain has no device-writable byte for the status.
 */
export function parseBlockRequest(
  chain: DescriptorChain,
  reader: ChainReader,
  served: number,
  into: BlockRequestScratch,
): BlockRequest {
  const r = into;
  const writable = chain.writableLength;
  // §5.2.6: the request ends in a device-writable status byte; without one nothing can be reported.
  if (writable === 0) throw new IovecError('write the status byte', 1, 0);
  r.statusOffset = writable - 1;
  r.type = 0;
  r.sector = 0;
  r.dataLength = 0;
  r.segments = 0;
  const readable = chain.readableLength;
  // §5.2.6: type, reserved and sector are device-readable and come first.
  if (readable < BLK_HEADER_BYTES) return invalid(r, 'header shorter than 16 bytes');
  reader.reset(chain);
  const type = reader.readU32();
  reader.skipExact(4); // reserved (formerly ioprio)
  const sector = reader.readU64();
  r.type = type;
  r.sector = sector;
  if (type >= 32 || ((served >>> type) & 1) === 0) {
    r.kind = 'unsupported';
    return r as BlockRequest;
  }
  const readData = readable - BLK_HEADER_BYTES;
  const writeData = writable - 1;
  switch (type) {
    case VIRTIO_BLK_T_IN:
      // §5.2.6: data of a read is device-writable, between the header and the status.
      if (readData !== 0) return invalid(r, 'device-readable data in a read request');
      // §5.2.6.1: IN and OUT data is a multiple of 512 bytes.
      if (writeData % SECTOR_BYTES !== 0) return invalid(r, 'data length is not a multiple of 512');
      r.kind = 'in';
      r.dataLength = writeData;
      return r as BlockRequest;
    case VIRTIO_BLK_T_OUT:
      if (writeData !== 0) return invalid(r, 'device-writable data in a write request');
      // §5.2.6.1: IN and OUT data is a multiple of 512 bytes.
      if (readData % SECTOR_BYTES !== 0) return invalid(r, 'data length is not a multiple of 512');
      r.kind = 'out';
      r.dataLength = readData;
      return r as BlockRequest;
    case VIRTIO_BLK_T_FLUSH:
      // §5.2.6.1 says sector is 0 and a flush SHOULD NOT carry data; neither changes what a
      // flush does, so both are tolerated.
      r.kind = 'flush';
      return r as BlockRequest;
    case VIRTIO_BLK_T_GET_ID:
      if (readData !== 0) return invalid(r, 'device-readable data in a read request');
      // §5.2.6.1: the data of GET_ID MUST be 20 bytes.
      if (writeData !== BLK_ID_BYTES) return invalid(r, 'GET_ID data is not 20 bytes');
      r.kind = 'get-id';
      r.dataLength = writeData;
      return r as BlockRequest;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
      if (writeData !== 0) return invalid(r, 'device-writable data in a write request');
      // §5.2.6: one or more segments; §5.2.6.1: a multiple of the segment size.
      if (readData === 0 || readData % BLK_SEGMENT_BYTES !== 0) {
        return invalid(r, 'segment data is empty or not a multiple of 16 bytes');
      }
      r.kind = type === VIRTIO_BLK_T_DISCARD ? 'discard' : 'write-zeroes';
      r.dataLength = readData;
      r.segments = readData / BLK_SEGMENT_BYTES;
      return r as BlockRequest;
    default:
      r.kind = 'unsupported';
      return r as BlockRequest;
  }
}

function invalid(r: BlockRequestScratch, reason: BlockInvalidReason): BlockRequest {
  r.kind = 'invalid';
  r.reason = reason;
  return r as BlockRequest;
}
