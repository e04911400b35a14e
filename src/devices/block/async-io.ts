/**
 * The block device's asynchronous transfers (`BlockOptions.asyncIo`): requests under way on the
 * backend's asynchronous calls, each completed when its own transfer ends (status byte, used
 * element), the completions of one event-loop turn published together with one notification,
 * and a way to wait until none is under way (a ring about to stop). A completion after a reset
 * (a new generation) or on a device that needs a reset completes nothing.
 */
import type { VirtqError } from '../../errors.js';
import { isVirtqError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Logger } from '../../queue/logger.js';
import type { Queue } from '../../queue/queue.js';
import type { AsyncBlockIo, BlockIoDone } from './backend.js';
import { VIRTIO_BLK_S_OK } from './request.js';
import type { BlockSavedRequest } from './state.js';

/** One asynchronous request under way. */
export interface AsyncOp {
  readonly index: number;
  readonly queue: Queue;
  readonly head: number;
  readonly kind: 'in' | 'out' | 'flush';
  readonly length: number;
  readonly bufs: Uint8Array[];
  readonly addrs: number[];
  /** The request's status byte (a one-byte view of guest memory) and its guest address. */
  readonly status: Uint8Array;
  readonly statusAddr: number;
  readonly generation: number;
  /** The guest memory the views are of. */
  readonly memory: GuestMemory;
  /** The request's chain as a snapshot holds it (served again by a restored device). */
  readonly saved: BlockSavedRequest;
}

/** What the engine needs of the device. */
export interface AsyncHost {
  /** The device's generation now (bumped at every activation and reset). */
  current(): number;
  /** The device is active and does not need a reset. */
  accepting(): boolean;
  /** The status for a transfer that failed (and the device's record of the failure). */
  failed(error: Error, op: 'read' | 'write' | 'flush'): number;
  /** Counts a transfer that succeeded. */
  transferred(kind: AsyncOp['kind'], length: number): void;
  /** Counts a completed request by its status. */
  countStatus(status: number): void;
  /** Publishes queue `index`'s used elements (and notifies the driver if it wants that). */
  publish(index: number): void;
  /** DEVICE_NEEDS_RESET for a guest error found while completing. */
  fail(error: VirtqError): void;
  readonly logger: Logger;
}

export class AsyncTransfers {
  /** Transfers under way. */
  pending = 0;
  /** The requests of those transfers (a reset leaves them here until they end). */
  private readonly ops = new Set<AsyncOp>();
  private idleWaiters: (() => void)[] = [];
  /**
   * Queues with used elements written by completions and not yet published: the completions
   * that land in one event-loop turn are published together, with one notification, as a
   * synchronous batch is.
   */
  private readonly unpublished = new Set<number>();
  private publishScheduled = false;

  constructor(
    private readonly host: AsyncHost,
    private readonly defer: (callback: () => void) => void,
  ) {}

  /** Starts `op` on `io` (data at byte `offset` of the disk); its completion is handled here. */
  start(op: AsyncOp, io: AsyncBlockIo, offset: number): void {
    const done: BlockIoDone = (error) => this.complete(op, error);
    this.pending++;
    this.ops.add(op);
    try {
      if (op.kind === 'in') io.readv(offset, op.bufs, done);
      else if (op.kind === 'out') io.writev(offset, op.bufs, done);
      else io.flush(done);
    } catch (e) {
      queueMicrotask(() => done(e as Error));
    }
  }

  /**
   * The requests under way that the device still owes the driver (of the current generation,
   * on a device that does not need a reset, on a queue still in use), as a snapshot saves
   * them.
   */
  underWay(): BlockSavedRequest[] {
    const host = this.host;
    if (!host.accepting()) return [];
    const out: BlockSavedRequest[] = [];
    for (const op of this.ops) {
      if (op.generation === host.current() && op.queue.isActive) out.push(op.saved);
    }
    return out;
  }

  /** Calls `callback` once no transfer is under way (at once if none is). */
  whenIdle(callback: () => void): void {
    if (this.pending === 0) callback();
    else this.idleWaiters.push(callback);
  }

  /**
   * True when completions wrote used elements of queue `index` that are not published yet;
   * they are then the caller's to publish (with its own batch).
   */
  takeUnpublished(index: number): boolean {
    return this.unpublished.delete(index);
  }

  /**
   * Queue `index` was stopped (the driver no longer uses it): completions written to it and not
   * yet published are dropped, and the transfers still under way on it will complete nothing.
   */
  queueStopped(index: number): void {
    this.unpublished.delete(index);
  }

  /** The device was reset: completions not yet published are dropped with it. */
  reset(): void {
    this.unpublished.clear();
  }

  /** Writes the status of an asynchronous request and publishes it (unless reset since). */
  private complete(op: AsyncOp, error: Error | null): void {
    this.pending--;
    this.ops.delete(op);
    if (op.kind === 'in') {
      // The transfer wrote guest memory behind the queue's back, even one that failed part
      // way or that a reset made moot: record the pages now (the dirty log must see them).
      for (let i = 0; i < op.addrs.length; i++) {
        op.memory.markDirty(op.addrs[i]!, op.bufs[i]!.length);
      }
    }
    const host = this.host;
    // A queue the driver stopped using (MMIO QueueReady 0) takes no completion either.
    if (op.generation === host.current() && host.accepting() && op.queue.isActive) {
      let status = VIRTIO_BLK_S_OK;
      if (error !== null) {
        status = host.failed(
          error,
          op.kind === 'in' ? 'read' : op.kind === 'out' ? 'write' : 'flush',
        );
      } else host.transferred(op.kind, op.length);
      op.status[0] = status;
      op.memory.markDirty(op.statusAddr, 1);
      host.countStatus(status);
      const written = op.kind === 'in' && status === VIRTIO_BLK_S_OK ? op.length : 0;
      try {
        op.queue.addUsed(op.head, written + 1);
        this.unpublished.add(op.index);
        if (!this.publishScheduled) {
          this.publishScheduled = true;
          this.defer(() => this.publishCompleted());
        }
      } catch (e) {
        // Runs from the backend's callback: nothing may escape to the event loop.
        if (isVirtqError(e)) host.fail(e);
        else host.logger.warn('block: completing a request failed', { error: String(e) });
      }
    }
    if (this.pending === 0 && this.idleWaiters.length > 0) {
      // Whoever waits for idleness (a ring about to stop) sees every completion published.
      this.publishCompleted();
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Publishes the used elements asynchronous completions wrote (see `unpublished`). */
  private publishCompleted(): void {
    this.publishScheduled = false;
    for (const index of this.unpublished) {
      try {
        this.host.publish(index);
      } catch (e) {
        if (isVirtqError(e)) this.host.fail(e);
        else this.host.logger.warn('block: publishing completions failed', { error: String(e) });
      }
    }
    this.unpublished.clear();
  }
}
