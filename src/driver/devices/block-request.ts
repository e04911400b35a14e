/** What the virtio-blk guest driver (block.ts) takes and gives: requests, completions, configuration, errors and options. */
import {
  BLK_SEGMENT_BYTES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../../devices/block/request.js';
import { type InterruptWaiter, sameThread } from './waiter.js';

/** One range of a discard or write-zeroes request. */
export interface BlockSegment {
  sector: number;
  sectors: number;
  /** Write-zeroes only: the device may deallocate the range. */
  unmap?: boolean;
  /** Raw flags word (overrides `unmap`; for testing the device's checks). */
  flags?: number;
}

/** A request the driver can send. */
export type BlockDriverRequest =
  | { type: 'in'; sector: number; sectors: number }
  | { type: 'out'; sector: number; data: Uint8Array }
  | { type: 'flush' }
  | { type: 'get-id' }
  | { type: 'discard'; segments: readonly BlockSegment[] }
  | { type: 'write-zeroes'; segments: readonly BlockSegment[] }
  /**
   * Anything: a header with `requestType` and `sector`, then `readable` bytes, then
   * `writableBytes` device-writable bytes, then the status byte.
   */
  | {
      type: 'raw';
      requestType: number;
      sector?: number | bigint;
      readable?: Uint8Array;
      writableBytes?: number;
    };

/** How the device answered. */
export interface BlockCompletion {
  /** VIRTIO_BLK_S_OK, _IOERR, _UNSUPP (or whatever the device wrote). */
  status: number;
  /** The used length the device reported. */
  usedLen: number;
  /** The data the device wrote (IN and GET_ID when OK, raw requests always), else null. */
  data: Uint8Array | null;
}

/** The configuration space as the driver read it (fields of features not negotiated are null). */
export interface BlockDriverConfig {
  /** Capacity in 512-byte sectors. */
  capacity: number;
  readOnly: boolean;
  sizeMax: number | null;
  segMax: number | null;
  blkSize: number | null;
  topology: {
    physicalBlockExp: number;
    alignmentOffset: number;
    minIoSize: number;
    optIoSize: number;
  } | null;
  numQueues: number;
  discard: { maxSectors: number; maxSegments: number; sectorAlignment: number } | null;
  writeZeroes: { maxSectors: number; maxSegments: number; mayUnmap: boolean } | null;
}

/** A request completed with a status other than VIRTIO_BLK_S_OK. */
export class BlockStatusError extends Error {
  override readonly name: string = 'BlockStatusError';
  constructor(
    readonly status: number,
    readonly request: BlockDriverRequest['type'],
  ) {
    super(`${request} request completed with status ${status}`);
  }
}

/** A request was dropped: the driver reset the device, or the device needs a reset. */
export class BlockRequestAbortedError extends Error {
  override readonly name: string = 'BlockRequestAbortedError';
}

export interface BlockDriverOptions {
  /** How to wait for the device (default {@link sameThread}). */
  waiter?: InterruptWaiter;
  /** Size of each queue (default: the device's maximum). */
  queueSize?: number;
  /** With VIRTIO_BLK_F_MQ: how many queues to use (default: all the device has). */
  numQueues?: number;
  /** Put each request in an indirect table when VIRTIO_F_INDIRECT_DESC is negotiated (default true). */
  useIndirect?: boolean;
  /** Split data into descriptors of at most this many bytes (default: one descriptor). */
  segmentBytes?: number;
  /** Guest memory reserved for request buffers, allocated once (default 1 MiB). */
  arenaBytes?: number;
  /** Waits before a request is declared lost (default 10000). */
  maxWaits?: number;
}

/** A request in flight. */
export interface BlockTicket {
  readonly queue: number;
  readonly id: number;
  readonly promise: Promise<BlockCompletion>;
  settled: boolean;
}

/** The payload of a discard or write-zeroes request: one 16-byte entry per segment. */
export function encodeSegments(segments: readonly BlockSegment[]): Uint8Array {
  const b = new Uint8Array(segments.length * BLK_SEGMENT_BYTES);
  const v = new DataView(b.buffer);
  segments.forEach((s, i) => {
    const o = i * BLK_SEGMENT_BYTES;
    v.setUint32(o, s.sector >>> 0, true);
    v.setUint32(o + 4, Math.floor(s.sector / 2 ** 32), true);
    v.setUint32(o + 8, s.sectors, true);
    v.setUint32(
      o + 12,
      s.flags ?? (s.unmap === true ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0),
      true,
    );
  });
  return b;
}
