/**
 * virtio-blk's features and configuration space (VIRTIO 1.2 §5.2.3, §5.2.4): the feature bits,
 * the configuration layout, the device's options, and how the options become the features
 * offered and the configuration bytes the driver reads.
 */
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../queue/constants.js';
import type { Logger } from '../../queue/logger.js';
import type { DeviceBudgetOptions } from '../budget.js';
import { featureBit } from '../device.js';
import type { BlockBackend } from './backend.js';
import { BLK_ID_BYTES, SECTOR_BYTES } from './request.js';

/** Feature bits (VIRTIO 1.2 §5.2.3). */
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

/** Byte offsets in `struct virtio_blk_config` (§5.2.4). */
export const BLK_CONFIG = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  GEOMETRY: 16,
  BLK_SIZE: 20,
  PHYSICAL_BLOCK_EXP: 24,
  ALIGNMENT_OFFSET: 25,
  MIN_IO_SIZE: 26,
  OPT_IO_SIZE: 28,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
} as const;
/** Configuration space up to `unused1` (the secure-erase and zoned fields are not offered). */
export const BLK_CONFIG_SIZE = 60;

/** Ring features every virtq transport queue implements; the block device offers them all. */
const RING_FEATURES =
  featureBit(VIRTIO_F_EVENT_IDX) |
  featureBit(VIRTIO_F_INDIRECT_DESC) |
  featureBit(VIRTIO_F_RING_PACKED);

/** `struct virtio_blk_topology` (§5.2.4), offered with VIRTIO_BLK_F_TOPOLOGY. */
export interface BlockTopology {
  /** log2 of logical blocks per physical block. */
  physicalBlockExp: number;
  /** Offset of the first aligned logical block. */
  alignmentOffset: number;
  /** Suggested minimum I/O size, in blocks. */
  minIoSize: number;
  /** Optimal (suggested maximum) I/O size, in blocks. */
  optIoSize: number;
}

export interface BlockOptions extends DeviceBudgetOptions {
  /** Where the bytes live. What it supports decides the features offered. */
  backend: BlockBackend;
  /** Request queues (default 1); more than one offers VIRTIO_BLK_F_MQ. */
  numQueues?: number;
  /** Maximum size of each queue (default 256). */
  queueSize?: number;
  /** Device ID string for VIRTIO_BLK_T_GET_ID: ASCII, at most 20 bytes (default empty). */
  id?: string;
  /** `blk_size`: the optimal block size to advertise (default 512; a power of two >= 512). */
  blockSize?: number;
  /** `size_max`: offered (VIRTIO_BLK_F_SIZE_MAX) only when given. */
  sizeMax?: number;
  /**
   * `seg_max` (default: the smaller of `queueSize` and {@link DEFAULT_SEG_MAX_RING} minus 2, the
   * header and status taking two descriptors). A driver may set a ring smaller than
   * `queueSize` after it read this, and §2.7.5.3.1 bounds every chain, indirect table
   * included, by the ring's size, which the queue enforces: a `seg_max` above the ring the
   * driver actually uses makes Linux send large requests the queue must refuse.
   */
  segMax?: number;
  /** Offered with VIRTIO_BLK_F_TOPOLOGY when given. */
  topology?: BlockTopology;
  /** `max_discard_sectors` (default 0xffffffff). */
  maxDiscardSectors?: number;
  /** `max_discard_seg` (default 16). */
  maxDiscardSegments?: number;
  /** `discard_sector_alignment` in sectors (default blockSize / 512). */
  discardSectorAlignment?: number;
  /** `max_write_zeroes_sectors` (default 0xffffffff). */
  maxWriteZeroesSectors?: number;
  /** `max_write_zeroes_seg` (default 16). */
  maxWriteZeroesSegments?: number;
  /** Where backend failures are reported (default: console). */
  logger?: Logger;
  /**
   * Serve reads, writes and flushes through the backend's asynchronous calls (when it has
   * them), several requests under way at once and each completed when its own transfer ends,
   * in whatever order that is. The owner must wait for {@link BlockDevice.whenIdle} before
   * resetting the device or unmapping guest memory. Default false: every request is served
   * inside `queueNotify`.
   */
  asyncIo?: boolean;
  /**
   * With `asyncIo`: reads and writes smaller than this are still served inside `queueNotify`
   * (a thread-pool round trip costs more than a small transfer); flushes always go
   * asynchronously. Default 64 KiB.
   */
  asyncMinBytes?: number;
  /**
   * With `asyncIo`: runs a callback once the current event-loop turn's completions are in
   * (default `setImmediate`, or a zero-delay timer where there is none).
   */
  defer?: (callback: () => void) => void;
}

/**
 * The ring size the default `seg_max` assumes at most. QEMU's vhost-user-blk front-end offers
 * its back-end's maximum (up to 1024) yet sets up 128-entry rings by default (its `queue-size`
 * property), and Linux sizes its indirect tables by `seg_max` alone: with `seg_max` 1022 a
 * 1 MiB direct read arrives as a 258-entry indirect table in a 128-entry ring. 126 segments
 * (QEMU's qemu-storage-daemon offers the same) fit every ring of 128 or more.
 */
export const DEFAULT_SEG_MAX_RING = 128;

/** Largest segment count accepted as an option: bounds the device's one scratch buffer. */
const MAX_SEGMENTS_OPTION = 4096;
const TWO_32 = 2 ** 32;

export function checkU32(name: string, v: number, min = 0): number {
  if (!Number.isInteger(v) || v < min || v > 0xffffffff) {
    throw new RangeError(`${name} ${v} is not an integer in [${min}, 2^32)`);
  }
  return v;
}

/** Discard and write-zeroes limits (the configuration fields of the same names). */
export interface EraseLimits {
  readonly maxDiscardSectors: number;
  readonly maxDiscardSegments: number;
  readonly maxWriteZeroesSectors: number;
  readonly maxWriteZeroesSegments: number;
}

/** What the options make of a block device, checked, before it is built. */
export interface BlockPlan {
  readonly numQueues: number;
  readonly queueSize: number;
  readonly blockSize: number;
  readonly features: bigint;
  readonly limits: EraseLimits;
  /** Segments the device's scratch buffer must hold (the larger of the two limits). */
  readonly maxSegments: number;
  /** The GET_ID string, NUL-padded. */
  readonly idBytes: Uint8Array;
}

/** Checks the options and derives the features offered; throws RangeError on a bad option. */
export function planBlockDevice(options: BlockOptions): BlockPlan {
  const backend = options.backend;
  const numQueues = options.numQueues ?? 1;
  if (!Number.isInteger(numQueues) || numQueues < 1 || numQueues > 0xffff) {
    throw new RangeError(`numQueues ${numQueues} is not in 1..65535`);
  }
  const queueSize = options.queueSize ?? 256;
  if (!Number.isInteger(queueSize) || queueSize < 2 || queueSize > 32768) {
    throw new RangeError(`queueSize ${queueSize} is not in 2..32768`);
  }
  const blockSize = options.blockSize ?? SECTOR_BYTES;
  if (
    !Number.isInteger(blockSize) ||
    blockSize < SECTOR_BYTES ||
    blockSize > 0x10000000 ||
    (blockSize & (blockSize - 1)) !== 0
  ) {
    throw new RangeError(`blockSize ${blockSize} is not a power of two >= 512`);
  }
  let features =
    RING_FEATURES | featureBit(VIRTIO_BLK_F_SEG_MAX) | featureBit(VIRTIO_BLK_F_BLK_SIZE);
  if (options.sizeMax !== undefined) features |= featureBit(VIRTIO_BLK_F_SIZE_MAX);
  if (options.topology !== undefined) features |= featureBit(VIRTIO_BLK_F_TOPOLOGY);
  if (numQueues > 1) features |= featureBit(VIRTIO_BLK_F_MQ);
  if (backend.readOnly) features |= featureBit(VIRTIO_BLK_F_RO);
  if (backend.supportsFlush) features |= featureBit(VIRTIO_BLK_F_FLUSH);
  if (backend.supportsDiscard) features |= featureBit(VIRTIO_BLK_F_DISCARD);
  if (backend.supportsWriteZeroes) features |= featureBit(VIRTIO_BLK_F_WRITE_ZEROES);
  const maxDiscardSectors = checkU32(
    'maxDiscardSectors',
    options.maxDiscardSectors ?? 0xffffffff,
    1,
  );
  const maxDiscardSegments = checkU32('maxDiscardSegments', options.maxDiscardSegments ?? 16, 1);
  const maxWriteZeroesSectors = checkU32(
    'maxWriteZeroesSectors',
    options.maxWriteZeroesSectors ?? 0xffffffff,
    1,
  );
  const maxWriteZeroesSegments = checkU32(
    'maxWriteZeroesSegments',
    options.maxWriteZeroesSegments ?? 16,
    1,
  );
  const maxSeg = Math.max(maxDiscardSegments, maxWriteZeroesSegments);
  if (maxSeg > MAX_SEGMENTS_OPTION)
    throw new RangeError(`at most ${MAX_SEGMENTS_OPTION} discard / write-zeroes segments`);
  const idBytes = new Uint8Array(BLK_ID_BYTES);
  const id = options.id ?? '';
  for (let i = 0; i < id.length; i++) {
    const c = id.charCodeAt(i);
    if (c > 0x7f) throw new RangeError('the device ID string must be ASCII');
    if (i >= BLK_ID_BYTES)
      throw new RangeError(`the device ID string is longer than ${BLK_ID_BYTES} bytes`);
    idBytes[i] = c;
  }

  return {
    numQueues,
    queueSize,
    blockSize,
    features,
    limits: {
      maxDiscardSectors,
      maxDiscardSegments,
      maxWriteZeroesSectors,
      maxWriteZeroesSegments,
    },
    maxSegments: maxSeg,
    idBytes,
  };
}

/** Writes the configuration space for `plan` into `config`; returns the capacity in sectors. */
export function writeBlockConfig(
  config: Uint8Array,
  plan: BlockPlan,
  options: BlockOptions,
): number {
  const backend = options.backend;
  const { queueSize, blockSize, numQueues, limits } = plan;
  const capacitySectors = Math.floor(backend.size / SECTOR_BYTES);
  const v = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const C = BLK_CONFIG;
  v.setUint32(C.CAPACITY, capacitySectors >>> 0, true);
  v.setUint32(C.CAPACITY + 4, Math.floor(capacitySectors / TWO_32), true);
  if (options.sizeMax !== undefined)
    v.setUint32(C.SIZE_MAX, checkU32('sizeMax', options.sizeMax, 1), true);
  v.setUint32(
    C.SEG_MAX,
    checkU32(
      'segMax',
      options.segMax ?? Math.max(1, Math.min(queueSize, DEFAULT_SEG_MAX_RING) - 2),
      1,
    ),
    true,
  );
  v.setUint32(C.BLK_SIZE, blockSize, true);
  const t = options.topology;
  if (t !== undefined) {
    if (
      !(
        t.physicalBlockExp >= 0 &&
        t.physicalBlockExp <= 0xff &&
        t.alignmentOffset >= 0 &&
        t.alignmentOffset <= 0xff
      )
    ) {
      throw new RangeError('topology exponent and alignment offset are u8 fields');
    }
    if (!(t.minIoSize >= 0 && t.minIoSize <= 0xffff))
      throw new RangeError('topology minIoSize is a u16 field');
    v.setUint8(C.PHYSICAL_BLOCK_EXP, t.physicalBlockExp);
    v.setUint8(C.ALIGNMENT_OFFSET, t.alignmentOffset);
    v.setUint16(C.MIN_IO_SIZE, t.minIoSize, true);
    v.setUint32(C.OPT_IO_SIZE, checkU32('optIoSize', t.optIoSize), true);
  }
  v.setUint16(C.NUM_QUEUES, numQueues, true);
  v.setUint32(C.MAX_DISCARD_SECTORS, limits.maxDiscardSectors, true);
  v.setUint32(C.MAX_DISCARD_SEG, limits.maxDiscardSegments, true);
  v.setUint32(
    C.DISCARD_SECTOR_ALIGNMENT,
    checkU32(
      'discardSectorAlignment',
      options.discardSectorAlignment ?? blockSize / SECTOR_BYTES,
      1,
    ),
    true,
  );
  v.setUint32(C.MAX_WRITE_ZEROES_SECTORS, limits.maxWriteZeroesSectors, true);
  v.setUint32(C.MAX_WRITE_ZEROES_SEG, limits.maxWriteZeroesSegments, true);
  v.setUint8(C.WRITE_ZEROES_MAY_UNMAP, backend.writeZeroesMayUnmap ? 1 : 0);
  return capacitySectors;
}

/** The capacity field's eight bytes for `sectors`. */
export function capacityBytes(sectors: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, sectors >>> 0, true);
  v.setUint32(4, Math.floor(sectors / TWO_32), true);
  return b;
}
