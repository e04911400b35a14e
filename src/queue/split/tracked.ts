import type { DescriptorChain } from '../chain.js';
import { SplitQueue, type SplitQueueOptions } from './queue.js';

/**
 * Watches the chains a split queue hands out and completes: what a vhost-user back-end needs
 * to keep its inflight buffer ("Inflight I/O tracking") current. Each call comes after the
 * queue's own bookkeeping for the event.
 */
export interface SplitQueueTracker {
  /** Chain `head` was popped from the available ring (not called for redelivered chains). */
  popped(head: number): void;
  /** A used element was written for chain `id` (not yet published). */
  used(id: number): void;
  /** `used.idx` was published as `usedIdx`. */
  published(usedIdx: number): void;
}

/**
 * A {@link SplitQueue} that reports every pop, used element and publication to a
 * {@link SplitQueueTracker}, and can hand out again chains a previous incarnation of the
 * device took and never completed ({@link redeliver}). A subclass, so that queues nobody
 * tracks keep the plain per-chain path.
 */
export class TrackedSplitQueue extends SplitQueue {
  tracker: SplitQueueTracker | null = null;
  /** Heads {@link redeliver} queued, handed out by the pops before the available ring. */
  private redeliverHeads: readonly number[] = [];
  private redeliverNext = 0;
  /** The last pop was a redelivered chain (undoPop gives it back to the redelivery list). */
  private lastRedelivered = false;

  constructor(maxSize: number, options: SplitQueueOptions = {}) {
    super(maxSize, options);
  }

  /**
   * Makes the next pops return the chains at `heads`, in that order, before anything from the
   * available ring: chains counted in `nextAvail` but never completed, as a restarted
   * vhost-user back-end finds them in its inflight buffer. Each head must be a descriptor index
   * of this active queue; a chain is parsed (and validated) only when popped.
   */
  redeliver(heads: readonly number[]): void {
    this.requireActive();
    for (const h of heads) {
      if (!(Number.isInteger(h) && h >= 0 && h < this.qsize)) {
        throw new RangeError(`redelivered head ${h} is outside a table of ${this.qsize}`);
      }
    }
    this.redeliverHeads = [...heads];
    this.redeliverNext = 0;
  }

  /** Chains queued by {@link redeliver} that were not popped yet. */
  get redeliveryPending(): number {
    return this.redeliverHeads.length - this.redeliverNext;
  }

  override pop(into?: DescriptorChain): DescriptorChain | null {
    if (this.redeliveryPending > 0) return this.popRedelivered(into);
    // A pop that finds nothing leaves undoPop's chain as it was; one that reads a chain (even
    // a malformed one, which throws) makes that chain the one undoPop gives back.
    const redelivered = this.lastRedelivered;
    this.lastRedelivered = false;
    const c = super.pop(into);
    if (c === null) this.lastRedelivered = redelivered;
    else this.tracker?.popped(c.head);
    return c;
  }

  override popOrEnableNotification(into?: DescriptorChain): DescriptorChain | null {
    // Without notification suppression, or polled, the base class pops through pop(), tracked
    // above: going through it here as well would report the chain twice.
    if (!this.usesNotifSuppression || this.polled) return this.pop(into);
    if (this.redeliveryPending > 0) return this.popRedelivered(into);
    const redelivered = this.lastRedelivered;
    this.lastRedelivered = false;
    const c = super.popOrEnableNotification(into);
    if (c === null) this.lastRedelivered = redelivered;
    else this.tracker?.popped(c.head);
    return c;
  }

  /** Gives back the chain popped last: to the redelivery list if it came from there. */
  override undoPop(): void {
    if (this.lastRedelivered) {
      this.lastRedelivered = false;
      this.redeliverNext--;
      return;
    }
    super.undoPop();
  }

  override writeUsedElement(offset: number, id: number, len: number): void {
    super.writeUsedElement(offset, id, len);
    this.tracker?.used(id);
  }

  override addUsedBatch(count: number, lastId: number, lastLen: number): void {
    // One used element for several chains names only the last: the others would stay marked
    // in flight in the tracker and be redelivered after a restart. (The vhost-user back-end
    // does not track a ring that negotiated IN_ORDER.)
    if (this.tracker !== null) {
      throw new RangeError('a tracked split queue completes chains one by one');
    }
    super.addUsedBatch(count, lastId, lastLen);
  }

  override addUsed(id: number, len: number): void {
    // The base class writes the element itself (not through writeUsedElement): track it here.
    super.addUsed(id, len);
    this.tracker?.used(id);
  }

  override advanceUsedRingIdx(): void {
    super.advanceUsedRingIdx();
    this.tracker?.published(this.nextUsed);
  }

  override reset(): void {
    super.reset();
    this.redeliverHeads = [];
    this.redeliverNext = 0;
    this.lastRedelivered = false;
  }

  private popRedelivered(into: DescriptorChain | undefined): DescriptorChain {
    const head = this.redeliverHeads[this.redeliverNext++]!;
    // Set before the parse: a malformed chain (chainAt throws) is still the one undoPop gives
    // back, to this list, never a step back of the ring position.
    this.lastRedelivered = true;
    return this.chainAt(head, into);
  }
}
