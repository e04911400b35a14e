/**
 * Ring state: what the front-end set for each ring, and the rules both the back-end's thread
 * and its ring workers apply: the VRING_BASE value of a stopped ring, and resuming a split ring
 * from its inflight region.
 */
import type { VirtioDevice } from '../devices/device.js';
import type { Logger } from '../queue/logger.js';
import type { TrackedPackedQueue } from '../queue/packed/tracked.js';
import type { Queue } from '../queue/queue.js';
import type { TrackedSplitQueue } from '../queue/split/tracked.js';
import type { SplitInflight } from './inflight.js';
import type { FdWatcher, VhostUserNative } from './native.js';
import type { PackedInflight } from './packed-inflight.js';

/** Per-ring state set by the front-end. */
export interface RingState {
  num: number;
  /** Guest-physical ring addresses (translated at SET_VRING_ADDR), or null before it. */
  desc: number;
  avail: number;
  used: number;
  /** The user addresses, re-translated when the memory table changes. */
  userAddr: { desc: number; avail: number; used: number } | null;
  /** SET_VRING_ADDR's VHOST_VRING_F_LOG: used-ring writes are logged at `logGuestAddr`. */
  logUsed: boolean;
  logGuestAddr: number;
  /** SET_VRING_BASE's value, or where the ring stopped. */
  base: number;
  kickFd: number | null;
  kickWatcher: FdWatcher | null;
  callFd: number | null;
  errFd: number | null;
  /** SET_VRING_KICK received, GET_VRING_BASE not yet. */
  started: boolean;
  /** SET_VRING_ENABLE's value. */
  enabled: boolean;
  /** The device processes the ring. */
  running: boolean;
  /**
   * The ring's worker died or did not stop in time while the ring ran: where the ring stopped
   * is unknown, so GET_VRING_BASE cannot be answered (the connection is closed instead, and
   * the front-end recovers through the inflight buffer).
   */
  lost: boolean;
}

export function freshRing(): RingState {
  return {
    num: 0,
    desc: 0,
    avail: 0,
    used: 0,
    userAddr: null,
    logUsed: false,
    logGuestAddr: 0,
    base: 0,
    kickFd: null,
    kickWatcher: null,
    callFd: null,
    errFd: null,
    started: false,
    enabled: false,
    running: false,
    lost: false,
  };
}

/** A packed ring position's wrap counter bit in VRING_BASE. */
export const PACKED_WRAP_BIT = 0x8000;

/**
 * Where a ring stopped, as GET_VRING_BASE reports it: a split ring's next available index; a
 * packed ring's next available slot and wrap counter in bits 0-15 and its next used slot and
 * wrap counter in bits 16-31.
 */
export function ringBase(q: Queue): number {
  // Read from the queue's saved state: a ring stops rarely, and this needs no format cast.
  const s = q.save();
  if (s.format === 'split') return s.nextAvail;
  const avail = (s.nextAvail & 0x7fff) | (s.availWrap ? PACKED_WRAP_BIT : 0);
  const used = (s.nextUsed & 0x7fff) | (s.usedWrap ? PACKED_WRAP_BIT : 0);
  return (avail | (used << 16)) >>> 0;
}

/**
 * Resumes split queue `q` (active, its used index read from guest memory) from its inflight
 * region ("Inflight I/O tracking"): chains a previous back-end took and never completed are
 * popped first, the ring continues after them, and the region records from now on. Returns
 * the number of chains to serve again.
 */
export function applyInflight(
  q: TrackedSplitQueue,
  region: SplitInflight,
  index: number,
  logger: Logger,
): number {
  if (q.activeSize > region.descNum) {
    throw new RangeError(
      `ring ${index} of ${q.activeSize} exceeds its inflight region of ${region.descNum}`,
    );
  }
  const r = region.resume(q.activeSize, q.nextUsed, logger);
  q.tracker = region;
  if (r.nextAvail === null) return 0;
  if (r.nextAvail !== q.nextAvail || r.heads.length > 0) {
    logger.warn('vhost-user: ring resumes from its inflight buffer', {
      index,
      base: q.nextAvail,
      nextAvail: r.nextAvail,
      resubmitted: r.heads.length,
    });
  }
  q.nextAvail = r.nextAvail;
  q.redeliver(r.heads);
  return r.heads.length;
}

/**
 * Resumes packed queue `q` (active, its positions set from VRING_BASE) from its inflight region:
 * the last batch is committed or rolled back, the buffers a previous back-end took and never
 * completed are popped first (from the region's copies of their descriptors), the positions
 * come from the region (QEMU, unable to ask a dead back-end, sends the base of the last orderly
 * start), and the region records from now on. Returns the number of buffers to serve again.
 * A region that does not hold together cannot say where the ring was: `unrecoverable` is
 * called (the back-end signals the ring's error eventfd) and the ring starts at VRING_BASE.
 */
export function applyPackedInflight(
  q: TrackedPackedQueue,
  region: PackedInflight,
  index: number,
  logger: Logger,
  unrecoverable: () => void,
): number {
  if (q.activeSize > region.descNum) {
    throw new RangeError(
      `ring ${index} of ${q.activeSize} exceeds its inflight region of ${region.descNum}`,
    );
  }
  const r = region.resume(
    q.activeSize,
    q.nextUsed,
    q.usedWrapCounter,
    (slot) => q.slotFlags(slot),
    logger,
  );
  q.tracker = region;
  if (r === 'fresh') return 0;
  if (r === 'unrecoverable') {
    logger.warn('vhost-user: packed ring cannot be resumed from its inflight buffer', { index });
    unrecoverable();
    return 0;
  }
  const moved =
    r.nextAvail !== q.nextAvail ||
    r.availWrap !== q.availWrapCounter ||
    r.nextUsed !== q.nextUsed ||
    r.usedWrap !== q.usedWrapCounter;
  if (moved || r.buffers.length > 0) {
    logger.warn('vhost-user: packed ring resumes from its inflight buffer', {
      index,
      nextAvail: r.nextAvail,
      nextUsed: r.nextUsed,
      resubmitted: r.buffers.length,
    });
  }
  q.restore(
    {
      ...q.save(),
      nextAvail: r.nextAvail,
      availWrap: r.availWrap,
      nextUsed: r.nextUsed,
      usedWrap: r.usedWrap,
      inFlight: [],
      numAdded: 0,
      pendingUsed: 0,
    },
    q.guestMemory,
  );
  q.withdrawUnpublishedUsed();
  q.redeliver(r.buffers);
  return r.buffers.length;
}

/** Signals a ring's error eventfd (SET_VRING_ERR), if it has one; failures are logged. */
export function signalError(native: VhostUserNative, fd: number | null, logger: Logger): void {
  if (fd === null) return;
  try {
    native.eventfdWrite(fd, 1);
  } catch (e) {
    logger.warn('vhost-user: writing an error fd failed', { error: (e as Error).message });
  }
}

/**
 * The maximum sizes of the rings a back-end serves for `device`: every queue, or only the first
 * ones when the front-end serves the rest itself ({@link VirtioDevice.frontEndQueues}).
 */
export function servedQueueSizes(device: VirtioDevice): readonly number[] {
  const f = device.frontEndQueues;
  return f === undefined ? device.queueMaxSizes : device.queueMaxSizes.slice(0, f.served);
}
