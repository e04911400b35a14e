/**
 * Typed errors.
 *
 * Every error that a guest can cause (through ring contents, descriptor contents, register
 * writes or protocol messages) is a {@link VirtqError} with a literal `code`. Mistakes made by
 * the host program that embeds virtq (calling the API with arguments that could never be
 * valid) are plain `TypeError` / `RangeError`, so the two are never confused.
 */

import { hex } from './hex.js';

/** Every code a {@link VirtqError} can carry. */
export type VirtqErrorCode =
  // guest memory
  | 'MEMORY_OUT_OF_BOUNDS'
  // queue configuration (checked when a queue is activated)
  | 'QUEUE_NOT_READY'
  | 'QUEUE_INVALID_SIZE'
  | 'QUEUE_MISALIGNED'
  | 'QUEUE_RING_OUT_OF_MEMORY'
  // descriptor chains
  | 'DESC_HEAD_OUT_OF_RANGE'
  | 'DESC_NEXT_OUT_OF_RANGE'
  | 'DESC_CHAIN_TOO_LONG'
  | 'DESC_BUFFER_OUT_OF_MEMORY'
  | 'DESC_INDIRECT_NOT_NEGOTIATED'
  | 'DESC_INDIRECT_NESTED'
  | 'DESC_INDIRECT_WITH_NEXT'
  | 'DESC_INDIRECT_BAD_LENGTH'
  | 'DESC_INDIRECT_OUT_OF_MEMORY'
  | 'DESC_INDIRECT_LOOP'
  | 'DESC_WRITABLE_BEFORE_READABLE'
  | 'DESC_CHAIN_LENGTH_OVERFLOW'
  | 'DESC_PACKED_BAD_ID'
  // used ring
  | 'USED_ID_OUT_OF_RANGE'
  // scatter-gather access to a chain's buffers
  | 'IOVEC_SHORT'
  // queue state
  | 'QUEUE_NOT_ACTIVE'
  // snapshots
  | 'SNAPSHOT_INVALID'
  // vhost-user messages
  | 'VHOST_BAD_HEADER'
  | 'VHOST_BAD_VERSION'
  | 'VHOST_BAD_SIZE'
  | 'VHOST_BAD_FDS'
  | 'VHOST_UNKNOWN_REQUEST'
  | 'VHOST_BAD_PAYLOAD'
  | 'VHOST_BAD_MEMORY_TABLE';

/** Base class of every error a guest (or guest-controlled data) can cause. */
export class VirtqError extends Error {
  // Each class names itself with a literal, which survives minification (`new.target.name`
  // does not: a bundler renames classes).
  override readonly name: string = 'VirtqError';
  readonly code: VirtqErrorCode;

  constructor(code: VirtqErrorCode, message: string) {
    super(message);
    this.code = code;
  }
}

/** True when `e` is a {@link VirtqError}, optionally with the given code. */
export function isVirtqError(e: unknown, code?: VirtqErrorCode): e is VirtqError {
  return e instanceof VirtqError && (code === undefined || e.code === code);
}

/** An access to guest memory outside every region, or crossing a region's end. */
export class GuestMemoryError extends VirtqError {
  override readonly name: string = 'GuestMemoryError';
  readonly address: number;
  readonly length: number;

  constructor(address: number, length: number, reason = 'is outside guest memory') {
    super('MEMORY_OUT_OF_BOUNDS', `guest range [${hex(address)}, +${length}) ${reason}`);
    this.address = address;
    this.length = length;
  }
}

export type QueueConfigErrorCode =
  | 'QUEUE_NOT_READY'
  | 'QUEUE_INVALID_SIZE'
  | 'QUEUE_MISALIGNED'
  | 'QUEUE_RING_OUT_OF_MEMORY';

/** The driver configured a queue that cannot be activated (VIRTIO 1.2 §2.7). */
export class QueueConfigError extends VirtqError {
  override readonly name: string = 'QueueConfigError';
  declare readonly code: QueueConfigErrorCode;
  /** Which part of the queue configuration is wrong. */
  readonly field: string;

  constructor(code: QueueConfigErrorCode, field: string, message: string) {
    super(code, message);
    this.field = field;
  }
}

export type DescriptorErrorCode =
  | 'DESC_HEAD_OUT_OF_RANGE'
  | 'DESC_NEXT_OUT_OF_RANGE'
  | 'DESC_CHAIN_TOO_LONG'
  | 'DESC_BUFFER_OUT_OF_MEMORY'
  | 'DESC_INDIRECT_NOT_NEGOTIATED'
  | 'DESC_INDIRECT_NESTED'
  | 'DESC_INDIRECT_WITH_NEXT'
  | 'DESC_INDIRECT_BAD_LENGTH'
  | 'DESC_INDIRECT_OUT_OF_MEMORY'
  | 'DESC_INDIRECT_LOOP'
  | 'DESC_WRITABLE_BEFORE_READABLE'
  | 'DESC_CHAIN_LENGTH_OVERFLOW'
  | 'DESC_PACKED_BAD_ID';

/**
 * The driver made a malformed descriptor chain available. `head` is the chain's head index
 * (split ring) or buffer id (packed ring) as the driver wrote it; it may itself be out of range.
 */
export class DescriptorError extends VirtqError {
  override readonly name: string = 'DescriptorError';
  declare readonly code: DescriptorErrorCode;
  readonly head: number;
  /** The descriptor (table index) at which the problem was found, or -1. */
  readonly index: number;

  constructor(code: DescriptorErrorCode, head: number, index: number, message: string) {
    super(code, message);
    this.head = head;
    this.index = index;
  }
}

/** A used element named a descriptor index the queue does not have. */
export class UsedRingError extends VirtqError {
  override readonly name: string = 'UsedRingError';
  declare readonly code: 'USED_ID_OUT_OF_RANGE';
  readonly id: number;

  constructor(id: number, size: number) {
    super('USED_ID_OUT_OF_RANGE', `used id ${id} is out of range for a queue of size ${size}`);
    this.id = id;
  }
}

/**
 * A device asked a chain's reader or writer for more bytes than the driver's buffers hold
 * (an exact read, write, skip, copy or split past the end). Nothing was consumed.
 */
export class IovecError extends VirtqError {
  override readonly name: string = 'IovecError';
  declare readonly code: 'IOVEC_SHORT';
  /** Bytes the operation needed. */
  readonly requested: number;
  /** Bytes the reader or writer had left. */
  readonly available: number;

  constructor(operation: string, requested: number, available: number) {
    super(
      'IOVEC_SHORT',
      `${operation} needs ${requested} bytes but the chain has ${available} left`,
    );
    this.requested = requested;
    this.available = available;
  }
}

/**
 * The queue was used before it was activated (or after a reset). A guest that breaks a ring's
 * rules gets a {@link DescriptorError} or {@link UsedRingError} instead, and its device goes to
 * DEVICE_NEEDS_RESET.
 */
export class QueueStateError extends VirtqError {
  override readonly name: string = 'QueueStateError';
  declare readonly code: 'QUEUE_NOT_ACTIVE';
}

/** A saved queue or device state failed validation on restore. */
export class SnapshotError extends VirtqError {
  override readonly name: string = 'SnapshotError';
  declare readonly code: 'SNAPSHOT_INVALID';
  /** Dotted path of the offending field, e.g. `split.nextAvail`. */
  readonly field: string;

  constructor(field: string, message: string) {
    super('SNAPSHOT_INVALID', `snapshot field ${field}: ${message}`);
    this.field = field;
  }
}

export type VhostUserErrorCode =
  | 'VHOST_BAD_HEADER'
  | 'VHOST_BAD_VERSION'
  | 'VHOST_BAD_SIZE'
  | 'VHOST_BAD_FDS'
  | 'VHOST_UNKNOWN_REQUEST'
  | 'VHOST_BAD_PAYLOAD';

/**
 * The vhost-user front-end sent a message that breaks the protocol (QEMU
 * docs/interop/vhost-user.rst). `fds` holds every file descriptor that arrived with the
 * rejected message: nothing took ownership of them, so the receiver must close each one.
 */
export class VhostUserError extends VirtqError {
  override readonly name: string = 'VhostUserError';
  declare readonly code: VhostUserErrorCode;
  /** The header's request code, or -1 when the header itself could not be read. */
  readonly request: number;
  /** Descriptors received with the rejected message, for the caller to close. */
  readonly fds: readonly number[];

  constructor(code: VhostUserErrorCode, request: number, fds: readonly number[], message: string) {
    super(code, message);
    this.request = request;
    this.fds = fds;
  }
}

/**
 * The host environment cannot share memory between threads: `SharedArrayBuffer` is missing.
 * Browsers offer it only to cross-origin isolated pages (served with
 * `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp`);
 * every Node version has it. This is a problem of the embedding program, not of the guest, so
 * it is not a {@link VirtqError}.
 */
export class SharedMemoryUnavailableError extends Error {
  readonly code = 'SHARED_MEMORY_UNAVAILABLE' as const;

  constructor(what: string) {
    super(
      `${what} needs SharedArrayBuffer, which this environment does not provide; in a browser ` +
        'the page must be cross-origin isolated (serve it with the headers ' +
        '"Cross-Origin-Opener-Policy: same-origin" and "Cross-Origin-Embedder-Policy: require-corp")',
    );
    this.name = 'SharedMemoryUnavailableError';
  }
}

/** Throws {@link SharedMemoryUnavailableError} when `SharedArrayBuffer` is missing. */
export function requireSharedArrayBuffer(what: string): void {
  if (typeof SharedArrayBuffer === 'undefined') throw new SharedMemoryUnavailableError(what);
}
