/**
 * Bounded work per notification: what a device may do in one turn, and how it comes back for
 * the rest. {@link VirtioDeviceBase} applies it to every device; this file holds the types,
 * the defaults and the default scheduler.
 */

/**
 * Runs `callback` later, after what is already queued: a device gives the thread back this
 * way when its budget for a turn is spent, and continues serving queue `queue` in the
 * callback. The callback must go to the back of the macrotask queue (not a microtask), so
 * that timers, I/O, other queues and other devices are served in between. A scheduler may
 * drop the callback when that queue must not be served any more (a vhost-user ring that
 * stopped); the next notification of the queue serves it again.
 */
export type Scheduler = (callback: () => void, queue: number) => void;

/** How much one turn of a device may do (see "Bounded work" in docs/DESIGN.md). */
export interface DeviceBudgetOptions {
  /**
   * Most descriptor chains a turn takes from one queue before the device yields (default:
   * the queue's size, a ring's worth). An integer of at least 1.
   */
  maxChainsPerTurn?: number;
  /**
   * Most bytes a turn moves between guest memory and the device's backend before the device
   * yields (default {@link DEFAULT_BYTES_PER_TURN}). It is checked between chains, so a turn
   * may exceed it by one request. An integer of at least 1.
   */
  maxBytesPerTurn?: number;
  /**
   * Where the device schedules the rest of its work when a turn ends with work left (default:
   * the scheduler the transport passes in its `DeviceContext`, else {@link defaultScheduler}).
   */
  schedule?: Scheduler;
}

/**
 * Default byte budget of a turn: 4 MiB, about a millisecond of copying at memory speed and a
 * few of entropy generation, large enough that the yield (a few microseconds) costs under 1%
 * of the work it separates, small enough that timers and other devices wait at most a few
 * milliseconds behind a hostile guest.
 */
export const DEFAULT_BYTES_PER_TURN = 4 * 1024 * 1024;

/** The part of a `MessageChannel` the fallback scheduler uses. */
interface Channel {
  port1: { onmessage: ((event: unknown) => void) | null };
  port2: { postMessage(message: unknown): void };
}

let channelQueue: (() => void)[] = [];
let channelPort: Channel['port2'] | null = null;

/** Runs queued callbacks one per message, so each is its own macrotask. */
function channelScheduler(callback: () => void): void {
  if (channelPort === null) {
    const ch = new (
      globalThis as unknown as { MessageChannel: new () => Channel }
    ).MessageChannel();
    const queue: (() => void)[] = [];
    channelQueue = queue;
    ch.port1.onmessage = () => {
      const cb = queue.shift();
      if (cb !== undefined) cb();
    };
    channelPort = ch.port2;
  }
  channelQueue.push(callback);
  channelPort.postMessage(0);
}

/**
 * The default {@link Scheduler}: `setImmediate` where it exists (Node: after I/O callbacks of
 * this loop iteration, before the next poll), else a `MessageChannel` message (browsers and
 * workers: a macrotask without setTimeout's 4 ms clamp), else `setTimeout(callback, 0)`.
 */
export const defaultScheduler: Scheduler = (() => {
  const g = globalThis as {
    setImmediate?: (cb: () => void) => unknown;
    MessageChannel?: unknown;
  };
  if (typeof g.setImmediate === 'function') {
    const si = g.setImmediate;
    return (callback: () => void) => {
      si(callback);
    };
  }
  if (typeof g.MessageChannel === 'function') return channelScheduler;
  return (callback: () => void) => {
    setTimeout(callback, 0);
  };
})();

/** Checks a budget option: an integer of at least 1, or undefined. */
export function checkBudget(name: string, value: number | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`${name} ${value} is not an integer of at least 1`);
  }
  return value;
}
