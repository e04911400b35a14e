/**
 * How a guest device driver waits for its device. When the device runs on the same thread,
 * it has already done its work by the time the notification register write returns, so
 * waiting is a no-op; when it runs in a worker, the waiter resolves once the device raised
 * an interrupt (or a timeout passed, after which the driver simply polls its rings again).
 */
export interface InterruptWaiter {
  wait(): Promise<void>;
}

/** For devices processed on the calling thread. */
export const sameThread: InterruptWaiter = { wait: () => Promise.resolve() };
