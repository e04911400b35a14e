import { requireSharedArrayBuffer } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { consoleLogger, type Logger } from '../../queue/logger.js';
import type { VirtioDevice } from '../device.js';
import { HostedDevice } from './hosted-device.js';
import {
  DEFAULT_MAILBOX_BYTES,
  type DeviceDescription,
  H_DOORBELL,
  H_SLEEPING,
  H_STATE,
  H_STOP,
  H_WORDS,
  type HostTuning,
  WORKER_RUNNING,
  WORKER_STOPPED,
} from './protocol.js';
import { Spinner, waitAsyncFor, yieldToEventLoop } from './wait.js';

/** How a {@link DeviceHost} runs (see {@link HostTuning} for the fields that cross threads). */
export interface DeviceHostOptions extends HostTuning {
  /** How to give the event loop a turn (default: a zero-delay timer; Node passes setImmediate). */
  yieldToEventLoop?: () => Promise<void>;
  /** Where the rebuilt queues report odd driver behaviour (default: console). */
  logger?: Logger;
  /** Mailbox bytes per device block. */
  mailboxBytes?: number;
  /** A device failed with an exception that is not a guest error (the device is now dead). */
  onError?: (device: number, error: unknown) => void;
}

/**
 * The worker side of devices that run in their own thread: serves one or more
 * {@link VirtioDevice}s behind shared control blocks, for {@link WorkerDeviceProxy}s on the
 * emulator thread.
 *
 * The loop looks at each device's command word (lifecycle calls: feature acceptance,
 * activation, configuration writes, reset) and then at its notify words, calls the device,
 * and sleeps on the worker's doorbell when there is nothing to do. It needs nothing but
 * SharedArrayBuffer and Atomics, so it runs the same in a Node worker_thread and a Web Worker.
 * Every `idleSliceMs` of sleep and `busySliceMs` of work it gives the event loop a turn, so
 * messages (queries) and timers still run; with `wait: 'async'` it sleeps with
 * `Atomics.waitAsync` and the event loop is always free (for backends that complete
 * asynchronously), at the price of a slower wake-up.
 */
export class DeviceHost {
  readonly header: SharedArrayBuffer;
  private readonly h: Int32Array;
  private readonly slots: HostedDevice[];
  private readonly wait: 'sync' | 'async';
  private readonly idleSliceMs: number;
  private readonly busySliceMs: number;
  private readonly spinner: Spinner;
  private readonly yieldFn: () => Promise<void>;

  constructor(
    devices: readonly VirtioDevice[],
    memory: GuestMemory,
    options: DeviceHostOptions = {},
  ) {
    if (devices.length === 0) throw new RangeError('a device host needs at least one device');
    requireSharedArrayBuffer('DeviceHost');
    this.header = new SharedArrayBuffer(H_WORDS * 4);
    this.h = new Int32Array(this.header);
    this.wait = options.wait ?? 'sync';
    this.idleSliceMs = options.idleSliceMs ?? 20;
    this.busySliceMs = options.busySliceMs ?? 50;
    this.spinner = new Spinner(options.spinUs ?? 0);
    this.yieldFn = options.yieldToEventLoop ?? yieldToEventLoop;
    const logger = options.logger ?? consoleLogger;
    const onError = options.onError ?? (() => {});
    const mailbox = options.mailboxBytes ?? DEFAULT_MAILBOX_BYTES;
    const wake = (): void => {
      // Only a sleeping loop needs the doorbell (one that runs looks again after this step).
      if (Atomics.load(this.h, H_SLEEPING) === 0) return;
      Atomics.add(this.h, H_DOORBELL, 1);
      Atomics.notify(this.h, H_DOORBELL);
    };
    this.slots = devices.map(
      (d, i) => new HostedDevice(i, d, memory, logger, onError, mailbox, wake),
    );
  }

  /** What the emulator side needs to build one proxy per device. */
  describe(): DeviceDescription[] {
    return this.slots.map((s) => s.describe());
  }

  /** The device served at `index` (its real object, in this thread). */
  device(index: number): VirtioDevice | undefined {
    return this.slots[index]?.device;
  }

  /** Marks every device failed with `error` (the worker is going down). */
  failAll(error: unknown): void {
    for (const s of this.slots) s.die(error);
  }

  /** Asks the loop to stop (from this thread; the emulator side sets H_STOP itself). */
  stop(): void {
    Atomics.store(this.h, H_STOP, 1);
    Atomics.add(this.h, H_DOORBELL, 1);
    Atomics.notify(this.h, H_DOORBELL);
  }

  private refreshAll(): void {
    for (const s of this.slots) s.refresh();
  }

  /** Serves the devices until a stop request. */
  async run(): Promise<void> {
    const h = this.h;
    const slots = this.slots;
    Atomics.store(h, H_STATE, WORKER_RUNNING);
    let lastYield = performance.now();
    for (;;) {
      const seq = Atomics.load(h, H_DOORBELL);
      if (Atomics.load(h, H_STOP) !== 0) break;
      let worked = false;
      for (let i = 0; i < slots.length; i++) if (slots[i]!.step()) worked = true;
      if (worked) {
        const now = performance.now();
        if (now - lastYield >= this.busySliceMs) {
          await this.yieldFn();
          this.refreshAll();
          lastYield = performance.now();
        }
        continue;
      }
      // Spin a little first (with back-off, see Spinner): a notification that comes within
      // spinUs costs no futex wake-up.
      if (this.spinner.spin(h, H_DOORBELL, seq)) continue;
      // Sleep. A notifier increments the doorbell and then reads H_SLEEPING: either it sees 1
      // and notifies, or the doorbell moved before the wait looks at it (sequentially
      // consistent atomics on both sides), so no notification is lost.
      Atomics.store(h, H_SLEEPING, 1);
      if (this.wait === 'sync') {
        const r = Atomics.wait(h, H_DOORBELL, seq, this.idleSliceMs);
        Atomics.store(h, H_SLEEPING, 0);
        if (r === 'timed-out') {
          await this.yieldFn();
          this.refreshAll();
          lastYield = performance.now();
        }
      } else {
        await waitAsyncFor(h, H_DOORBELL, seq, this.idleSliceMs);
        Atomics.store(h, H_SLEEPING, 0);
        this.refreshAll();
        lastYield = performance.now();
      }
    }
    Atomics.store(h, H_STATE, WORKER_STOPPED);
  }
}
