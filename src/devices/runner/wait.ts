/**
 * Waiting on a shared Int32 word, in whichever way the current agent allows.
 *
 * `Atomics.wait` blocks, which Node allows on every thread and browsers allow in workers only;
 * where it is refused (a browser's main thread) {@link blockingWait} spins on `Atomics.load`
 * instead, which is acceptable for the short, rare waits it serves (device lifecycle calls).
 * `Atomics.waitAsync` (ES2024) is typed here because the project's lib is ES2022; where it is
 * missing, {@link waitAsyncFor} polls with timers.
 */

type WaitAsyncResult =
  | { async: false; value: 'not-equal' | 'timed-out' }
  | { async: true; value: Promise<'ok' | 'timed-out'> };

type WaitAsyncFn = (
  array: Int32Array,
  index: number,
  value: number,
  timeout?: number,
) => WaitAsyncResult;

const nativeWaitAsync = (Atomics as unknown as { waitAsync?: WaitAsyncFn }).waitAsync;

let canBlock: boolean | undefined;

/** True when this agent may block in `Atomics.wait` (false on a browser's main thread). */
export function agentCanBlock(): boolean {
  if (canBlock === undefined) {
    try {
      // A value that does not match returns at once; an agent that may not block throws first.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);
      canBlock = true;
    } catch {
      canBlock = false;
    }
  }
  return canBlock;
}

/**
 * Waits until `array[index]` is no longer `value`, a notification arrives, or `ms` pass.
 * Blocks the thread (or spins where blocking is refused).
 */
export function blockingWait(array: Int32Array, index: number, value: number, ms: number): void {
  if (agentCanBlock()) {
    Atomics.wait(array, index, value, ms);
    return;
  }
  const end = performance.now() + ms;
  while (Atomics.load(array, index) === value && performance.now() < end) {
    // Spin: this agent may not block.
  }
}

/**
 * Resolves when `array[index]` is no longer `value` (at once if it already differs), after a
 * notification, or after `ms`. Never rejects.
 */
export function waitAsyncFor(
  array: Int32Array,
  index: number,
  value: number,
  ms: number,
): Promise<void> {
  if (nativeWaitAsync !== undefined) {
    const r = nativeWaitAsync(array, index, value, ms);
    return r.async ? r.value.then(noop) : Promise.resolve();
  }
  // Fallback: look every millisecond.
  if (Atomics.load(array, index) !== value) return Promise.resolve();
  const end = performance.now() + ms;
  return new Promise((resolve) => {
    const look = (): void => {
      if (Atomics.load(array, index) !== value || performance.now() >= end) resolve();
      else setTimeout(look, 1);
    };
    setTimeout(look, 1);
  });
}

function noop(): void {}

/** A macrotask boundary, so that messages and timers of this agent get to run. */
export function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** Most sleeps a spinner skips spinning after its spins kept finding nothing. */
const MAX_SPIN_BACKOFF = 64;

/**
 * Spinning before sleeping, with back-off: a notification that arrives while the waiter
 * spins costs no futex wake-up (tens of µs when the other thread has a CPU of its own), but a
 * spin that finds nothing only burns time, and when both threads share one CPU it delays the
 * very thread being waited for. So after a spin that found nothing the spinner skips spinning
 * for 1, 2, 4 ... up to 64 sleeps, and goes back to spinning every time after a spin that
 * caught the notification.
 */
export class Spinner {
  private skip = 0;
  private backoff = 0;

  /** `maxUs`: longest spin in microseconds (0: never spin). */
  constructor(readonly maxUs: number) {}

  /** Spins until `array[index]` is no longer `value`; true when it changed meanwhile. */
  spin(array: Int32Array, index: number, value: number): boolean {
    if (this.maxUs <= 0) return false;
    if (this.skip > 0) {
      this.skip--;
      return false;
    }
    const until = performance.now() + this.maxUs / 1000;
    while (Atomics.load(array, index) === value) {
      if (performance.now() >= until) {
        this.backoff = Math.min(this.backoff === 0 ? 1 : this.backoff * 2, MAX_SPIN_BACKOFF);
        this.skip = this.backoff;
        return false;
      }
    }
    this.backoff = 0;
    return true;
  }
}
