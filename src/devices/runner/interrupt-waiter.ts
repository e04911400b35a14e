import { D_IRQ_SEQ } from './protocol.js';
import type { DeviceWorkerError, WorkerDeviceProxy } from './proxy.js';
import { blockingWait, Spinner, waitAsyncFor } from './wait.js';

/**
 * How a guest driver waits for a device that runs in a worker (an `InterruptWaiter`, see
 * `src/driver/devices/waiter.ts`, which it matches structurally): `wait()` resolves once the
 * device raised an interrupt since the previous `wait()` returned (at once if it already did),
 * or after `timeoutMs`; it first delivers pending interrupts to the transport
 * ({@link WorkerDeviceProxy.poll}), so the transport's InterruptStatus is current. It rejects
 * with the device's {@link DeviceWorkerError} once the device is dead.
 */
export class WorkerInterruptWaiter {
  private seen: number;
  private readonly spinner: Spinner;

  /**
   * @param timeoutMs longest wait before `wait()` resolves anyway (the driver then looks at
   *   its rings again)
   * @param spinUs microseconds {@link waitBlocking} spins before it sleeps (default 0; with
   *   back-off, see `Spinner`)
   */
  constructor(
    private readonly proxy: WorkerDeviceProxy,
    private readonly timeoutMs = 100,
    spinUs = 0,
  ) {
    this.seen = Atomics.load(proxy.words, D_IRQ_SEQ);
    this.spinner = new Spinner(spinUs);
  }

  async wait(): Promise<void> {
    const w = this.proxy.words;
    const now = Atomics.load(w, D_IRQ_SEQ);
    if (now === this.seen && this.proxy.error === null)
      await waitAsyncFor(w, D_IRQ_SEQ, now, this.timeoutMs);
    this.seen = Atomics.load(w, D_IRQ_SEQ);
    this.proxy.poll();
    if (this.proxy.error !== null) throw this.proxy.error;
  }

  /**
   * The same as {@link wait}, blocking the thread instead (Atomics.wait; a spin where the
   * agent may not block): for a driver loop that is synchronous, such as a vCPU thread.
   */
  waitBlocking(): void {
    const w = this.proxy.words;
    const now = Atomics.load(w, D_IRQ_SEQ);
    if (now === this.seen && this.proxy.error === null && !this.spinner.spin(w, D_IRQ_SEQ, now)) {
      blockingWait(w, D_IRQ_SEQ, now, this.timeoutMs);
    }
    this.seen = Atomics.load(w, D_IRQ_SEQ);
    this.proxy.poll();
    if (this.proxy.error !== null) throw this.proxy.error;
  }
}
