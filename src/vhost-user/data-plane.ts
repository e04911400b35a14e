/**
 * The data plane of the vhost-user back-end: where a started ring is served. One interface,
 * two implementations, chosen once when the back-end is built:
 *
 * - {@link InProcessPlane}: every ring on the back-end's own thread, with the device the
 *   back-end was given (the class's default);
 * - `WorkerPlane` (worker-plane.ts): one worker thread per ring, each with its own device
 *   built from a spec (`ringWorkers`, what `virtq vhost-user-blk` uses).
 *
 * The control plane (backend.ts) validates a ring before it hands it over: the queue a plane
 * receives is built and initialised over the guest's memory and positioned where the ring
 * resumes. Either plane serves a ring the same way: a kick, a turn of the device (bounded by
 * its budget; a continuation goes to the back of the thread's event loop), the dirty log
 * flushed, the call eventfd written when the driver wants it, the error eventfd when the device
 * needs a reset.
 */
import type { DeviceContext, VirtioDevice } from '../devices/device.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { createQueue } from '../queue/factory.js';
import type { Logger } from '../queue/logger.js';
import type { TrackedPackedQueue } from '../queue/packed/tracked.js';
import type { Queue } from '../queue/queue.js';
import type { TrackedSplitQueue } from '../queue/split/tracked.js';
import type { SplitInflight } from './inflight.js';
import type { MemoryTable } from './memory-table.js';
import type { VhostUserNative } from './native.js';
import type { PackedInflight } from './packed-inflight.js';
import { RingPoller } from './ring-poller.js';
import { RingServer } from './ring-server.js';
import {
  applyInflight,
  applyPackedInflight,
  type RingState,
  ringBase,
  servedQueueSizes,
  signalError,
} from './ring-state.js';
import type { RingLog } from './ring-worker-protocol.js';

/** Counters a plane adds to (the back-end's stats). */
export interface PlaneCounters {
  kicks: number;
  calls: number;
  /** Polling mode: times a ring went from kicks to polling, and turns served by polling. */
  polls: number;
  pollTurns: number;
  loggedPages: number;
  resubmitted: number;
}

/** What a plane uses of the back-end. */
export interface PlaneHost {
  readonly device: VirtioDevice;
  readonly native: VhostUserNative;
  readonly logger: Logger;
  readonly counters: PlaneCounters;
  /** Ring `index`'s state as the front-end set it (undefined: no such ring). */
  ring(index: number): RingState | undefined;
  /** Every ring's state. */
  rings(): readonly RingState[];
  /** Moves the pages the device wrote into the dirty log, when the front-end logs. */
  flushLog(): void;
  /** Closes descriptors the back-end owned. */
  closeFds(fds: readonly number[]): void;
}

/** A ring that records its chains in flight (INFLIGHT_SHMFD): its tracked queue and region. */
export type RingTracking =
  | { readonly format: 'split'; readonly queue: TrackedSplitQueue; readonly region: SplitInflight }
  | {
      readonly format: 'packed';
      readonly queue: TrackedPackedQueue;
      readonly region: PackedInflight;
    };

/** A ring the control plane validated and hands to a plane. */
export interface RingStart {
  readonly index: number;
  /** Initialised over `memory` and positioned where the ring resumes. */
  readonly queue: Queue;
  /** Where the ring records chains in flight (INFLIGHT_SHMFD), or null: untracked. */
  readonly tracking: RingTracking | null;
  readonly features: bigint;
  readonly memory: GuestMemory;
  readonly table: MemoryTable;
  readonly ring: RingState;
  /** The dirty log the ring writes into (area null: the front-end does not log). */
  readonly log: RingLog;
}

/** Where started rings are served. */
export interface DataPlane {
  /**
   * True when the plane waits on the rings' kick eventfds itself (ring workers); false when
   * the back-end watches them and calls {@link kicked}.
   */
  readonly waitsOnKicks: boolean;
  /** True when a running ring must be restarted to move to a new error eventfd. */
  readonly restartsForErrFd: boolean;
  /** The device is active (some ring ran since the last reset). */
  readonly deviceActive: boolean;
  /** A front-end connected. */
  connected(): void;
  /** Serves a ring from now on. */
  start(s: RingStart): void;
  /**
   * Stops serving ring `index` (running). Returns where it stopped (VRING_BASE), or null when
   * that is unknown: the ring is lost (its worker died or did not answer).
   */
  stop(index: number): number | null;
  /** Ring `index` stopped for good (GET_VRING_BASE answered). */
  stopped(index: number): void;
  /**
   * Ring `index`'s kick eventfd `fd` is readable (planes that do not wait on kicks themselves):
   * drain it and serve the ring. False when it cannot be read (stop watching it).
   */
  kicked(index: number, fd: number): boolean;
  /** A running ring's call eventfd is being replaced: the plane lets go of the old one. */
  callChanged(index: number, fd: number | null): void;
  /** The dirty log moved or logging was switched: running ring `index` follows. */
  logChanged(index: number, log: RingLog): void;
  /** The memory table was replaced; running rings are restarted by the back-end after this. */
  memoryChanged(memory: GuestMemory): void;
  /** Resets the device (no ring runs). */
  resetDevice(): void;
  /** Adds the plane's own counters to `stats`. */
  addStats(stats: PlaneCounters): void;
  /** Ends everything the plane started (the back-end closes). */
  close(): void;
}

/**
 * Every ring on the back-end's thread: one device context for all rings, activated when the
 * first ring starts, reset when the last one stops for good.
 */
export class InProcessPlane implements DataPlane {
  readonly waitsOnKicks = false;
  readonly restartsForErrFd = false;
  private ctx: DeviceContext | null = null;
  private queues: Queue[] = [];

  private readonly server: RingServer;
  /** Polling mode (null: kicks only). */
  private readonly poller: RingPoller | null;

  /** `pollIdleMicros` > 0 polls busy rings (see ring-poller.ts); 0: kicks only. */
  constructor(
    private readonly host: PlaneHost,
    pollIdleMicros = 0,
  ) {
    this.server = new RingServer({
      device: host.device,
      native: host.native,
      logger: host.logger,
      who: 'vhost-user',
      flushLog: () => host.flushLog(),
      callFd: (index) => host.ring(index)?.callFd ?? null,
      errFds: () => host.rings().map((r) => r.errFd),
      count: (what) => {
        host.counters[what]++;
      },
    });
    this.poller =
      pollIdleMicros > 0
        ? new RingPoller(
            {
              queue: (index) =>
                host.ring(index)?.running === true ? this.queues[index] : undefined,
              serve: (index) => this.server.serve(index),
              count: (what) => {
                host.counters[what]++;
              },
            },
            pollIdleMicros,
          )
        : null;
  }

  get deviceActive(): boolean {
    return this.ctx !== null;
  }

  connected(): void {}

  start(s: RingStart): void {
    const host = this.host;
    if (this.ctx === null) {
      const format = s.queue.format;
      this.queues = servedQueueSizes(host.device).map((max) =>
        createQueue(format, max, { logger: host.logger }),
      );
      this.ctx = {
        memory: s.memory,
        queues: this.queues,
        features: s.features,
        interrupt: this.server.sink,
        schedule: this.continueRing,
      };
      host.device.activate(this.ctx);
    }
    this.queues[s.index] = s.queue;
    const t = s.tracking;
    if (t?.format === 'split') {
      host.counters.resubmitted += applyInflight(t.queue, t.region, s.index, host.logger);
    } else if (t?.format === 'packed') {
      host.counters.resubmitted += applyPackedInflight(
        t.queue,
        t.region,
        s.index,
        host.logger,
        () => signalError(host.native, s.ring.errFd, host.logger),
      );
    }
    // Buffers made available before the ring started are served now.
    this.notify(s.index);
  }

  stop(index: number): number | null {
    this.poller?.stop(index);
    const q = this.queues[index];
    if (q === undefined || !q.isActive) return this.host.ring(index)?.base ?? 0;
    // A split ring reports its available position: what the device holds from it is counted
    // as taken, so it goes back to the driver now (a device reset after the last ring stops,
    // or the next back-end, would not know of it).
    if (q.format === 'split') this.host.device.giveBackHeld?.(index);
    const base = ringBase(q);
    // A stopped ring (disabled with SET_VRING_ENABLE 0, or asked for its base) must not move:
    // the device finds an inactive queue in its place, even when it notifies itself (a frame
    // from its backend for that receive queue). The ring starts again over a new queue.
    const idle = createQueue(q.format, q.maxSize, { logger: this.host.logger });
    this.queues[index] = idle;
    // A packed ring starts again at its used position (Rings.placePacked): the chains taken
    // and not used will be read from the ring again, so the device must not keep its own.
    if (q.format === 'packed') this.host.device.queueStopped?.(index);
    return base;
  }

  stopped(index: number): void {
    this.queues[index]?.reset();
  }

  kicked(index: number, fd: number): boolean {
    if (!this.server.drainKick(index, fd)) return false;
    if (this.host.ring(index)?.running === true) this.notify(index);
    return true;
  }

  callChanged(): void {}

  logChanged(): void {}

  memoryChanged(memory: GuestMemory): void {
    if (this.ctx !== null) this.ctx.memory = memory;
  }

  resetDevice(): void {
    this.poller?.stopAll();
    if (this.ctx !== null) {
      try {
        this.host.device.reset();
      } catch (e) {
        this.host.logger.warn('vhost-user: device reset failed', { error: (e as Error).message });
      }
    }
    this.ctx = null;
    this.queues = [];
  }

  addStats(): void {}

  close(): void {}

  /**
   * Where the device continues a ring whose turn spent its budget: on this thread's event
   * loop (so the socket and other rings are served in between), only while the ring still
   * runs (after GET_VRING_BASE it must not move), with the dirty log flushed after, as after
   * a kick.
   */
  private readonly continueRing = (callback: () => void, index: number): void => {
    setImmediate(() => {
      if (this.host.ring(index)?.running !== true) return;
      this.server.serve(index, callback);
    });
  };

  /** A turn of ring `index` after a kick or its start; a polled ring carries on polling. */
  private notify(index: number): void {
    this.server.serve(index);
    this.poller?.served(index);
  }
}
