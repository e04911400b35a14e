/**
 * Polling mode for busy rings, the same on the back-end's thread and in a ring worker.
 *
 * After a kick has been served, a polled ring asks the driver to stop notifying
 * (`setNotification(false)`; with EVENT_IDX on a split ring the device simply stops moving
 * `avail_event`) and is served again at every turn of the thread's event loop (`setImmediate`,
 * so the socket and other rings run in between). A driver that keeps the ring busy then makes
 * no notification system calls, and the device makes no round trip through the kick eventfd
 * per burst. When the ring has not moved for `idleMicros`, the poller lets go: notifications
 * are enabled again and the ring is served once more, so a chain made available while the
 * driver still saw notifications disabled is not left waiting for a kick that never comes.
 *
 * Bounded: each turn is one device turn (itself bounded by the device's budget), and a ring
 * that stays idle polls for `idleMicros` only.
 */
import type { Queue } from '../queue/queue.js';

/** What a poller needs of its plane. */
export interface RingPollerHost {
  /** Ring `index`'s queue while the ring runs (undefined or inactive: stop polling it). */
  queue(index: number): Queue | undefined;
  /** One turn of the device on ring `index`, with what follows it (the log, the call). */
  serve(index: number): void;
  /** Counts a ring going from kicks to polling (`polls`) or a turn served by polling. */
  count(what: 'polls' | 'pollTurns'): void;
}

export class RingPoller {
  /** Per ring: polling now. */
  private readonly polling: boolean[] = [];
  /** Per ring: when the ring last moved (performance.now() milliseconds). */
  private readonly movedAt: number[] = [];
  /** Per ring: its avail cursor when the poller last looked. */
  private readonly cursorAt: number[] = [];
  /** Per ring: a turn is scheduled (at most one at a time). */
  private readonly pending: boolean[] = [];
  /** Per ring: the callback that runs its turn, made once (no closure per turn). */
  private readonly turns: (() => void)[] = [];
  private readonly idleMs: number;

  /**
   * `idleMicros`: how long a ring is polled after it last moved (> 0); `now`: the clock, in
   * milliseconds (tests pass their own).
   */
  constructor(
    private readonly host: RingPollerHost,
    idleMicros: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(Number.isFinite(idleMicros) && idleMicros > 0)) {
      throw new RangeError(`polling idle time ${idleMicros} µs is not a positive number`);
    }
    this.idleMs = idleMicros / 1000;
  }

  /** True while ring `index` is polled. */
  isPolling(index: number): boolean {
    return this.polling[index] === true;
  }

  /** Ring `index` was just served after a kick (or its start): poll it from now on. */
  served(index: number): void {
    if (this.polling[index] === true) {
      this.movedAt[index] = this.now();
      return;
    }
    const q = this.host.queue(index);
    if (q === undefined || !q.isActive) return;
    this.polling[index] = true;
    this.movedAt[index] = this.now();
    this.cursorAt[index] = q.availCursor;
    this.host.count('polls');
    q.polled = true;
    q.setNotification(false);
    this.schedule(index);
  }

  /** Stops polling ring `index` (it stops, or the device resets); notifications stay as they are. */
  stop(index: number): void {
    if (this.polling[index] !== true) return;
    // A turn already scheduled finds the ring not polled and does nothing (or, when polling
    // starts again before it runs, is that ring's one turn: see schedule).
    this.polling[index] = false;
    const q = this.host.queue(index);
    if (q !== undefined) q.polled = false;
  }

  /** Stops polling every ring. */
  stopAll(): void {
    for (let i = 0; i < this.polling.length; i++) this.stop(i);
  }

  /**
   * Runs a turn of ring `index` at the next turn of the event loop. A ring whose polling stops
   * and starts again before its scheduled turn runs keeps that one turn: never two in flight.
   */
  private schedule(index: number): void {
    if (this.pending[index] === true) return;
    this.pending[index] = true;
    let run = this.turns[index];
    if (run === undefined) {
      run = () => {
        this.pending[index] = false;
        if (this.polling[index] === true) this.turn(index);
      };
      this.turns[index] = run;
    }
    setImmediate(run);
  }

  private turn(index: number): void {
    const q = this.host.queue(index);
    if (q === undefined || !q.isActive) {
      this.stop(index);
      return;
    }
    this.host.count('pollTurns');
    this.host.serve(index);
    if (this.polling[index] !== true) return; // the turn stopped the ring
    const now = this.now();
    // Moved since the last look, in this turn or in between: a device whose backend offers
    // it frames (a receive queue) takes chains outside the poller's turns too.
    const cursor = q.availCursor;
    if (cursor !== this.cursorAt[index]) {
      this.cursorAt[index] = cursor;
      this.movedAt[index] = now;
    } else if (now - this.movedAt[index]! > this.idleMs) {
      this.stop(index);
      // Back to kicks. A chain made available before the driver saw notifications enabled
      // would get no kick: serve once more (with EVENT_IDX, setNotification says so itself).
      if (q.isActive) {
        q.setNotification(true);
        this.host.serve(index);
      }
      return;
    }
    this.schedule(index);
  }
}
