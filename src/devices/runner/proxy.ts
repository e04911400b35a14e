import { SnapshotError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { DeviceContext, DeviceState, InterruptSink, VirtioDevice } from '../device.js';
import {
  type ActivatePayload,
  CMD_ACCEPT_FEATURES,
  CMD_ACTIVATE,
  CMD_CHECK_RESTORE,
  CMD_COMMIT_RESTORE,
  CMD_RESET,
  CMD_RESTORE,
  CMD_SAVE,
  CMD_STAGE,
  CMD_STOP_QUEUE,
  CMD_WRITE_CONFIG,
  CONFIG_MIRROR_BYTES,
  D_CMD_ARG0,
  D_CMD_ARG1,
  D_CMD_DONE,
  D_CMD_KIND,
  D_CMD_LEN,
  D_CMD_RESULT,
  D_CMD_SEQ,
  D_CONFIG_GEN,
  D_CONFIG_SEQ,
  D_ERROR_LEN,
  D_FAILED,
  D_IRQ_SEQ,
  D_ISR,
  D_NEEDS_RESET,
  D_NOTIFY,
  type DeviceDescription,
  deviceBlockLayout,
  ERROR_TEXT_BYTES,
  H_DOORBELL,
  H_SLEEPING,
  IRQ_CONFIG,
  IRQ_USED,
  type RestorePayload,
} from './protocol.js';
import { blockingWait, waitAsyncFor } from './wait.js';

/** A device running in a worker failed: it threw, its worker died, or it stopped answering. */
export class DeviceWorkerError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DeviceWorkerError';
  }
}

export interface WorkerDeviceProxyOptions {
  /** Longest wait for the worker in a lifecycle call (ms, default 5000); then the device is declared dead. */
  timeoutMs?: number;
  /**
   * Deliver the device's interrupts to the transport as they come, with an Atomics.waitAsync
   * listener on the emulator thread's event loop (default true). Without it, interrupts reach
   * the transport when {@link WorkerDeviceProxy.poll} runs (a {@link WorkerInterruptWaiter}
   * polls after each wait).
   */
  listen?: boolean;
}

import { WorkerInterruptWaiter } from './interrupt-waiter.js';

export { WorkerInterruptWaiter };

const encoder = new TextEncoder();

/** What the worker needs to activate its device as the transport activates `ctx`. */
function activationOf(ctx: DeviceContext): ActivatePayload {
  return { features: ctx.features.toString(16), queues: ctx.queues.map((q) => q.save()) };
}
const decoder = new TextDecoder();

/** How long one blocking wait slice lasts before the proxy looks at the failure word again. */
const WAIT_SLICE_MS = 50;
/** The interrupt listener re-arms at least this often (ms). */
const LISTEN_SLICE_MS = 1000;

/**
 * The emulator-thread stand-in for a {@link VirtioDevice} that runs in a worker: a transport
 * (such as `MmioTransport`) talks to it as to any device, and it forwards to the worker over
 * shared memory.
 *
 * - Register reads stay synchronous: the configuration space, its generation and the
 *   needs-reset flag are mirrors the worker keeps up to date (the configuration bytes under a
 *   seqlock).
 * - Lifecycle calls (`acceptFeatures`, `activate`, `writeConfig`, `reset`) are synchronous
 *   commands: the proxy posts the command and blocks (Atomics.wait; a spin where blocking is
 *   not allowed) until the worker completed it, or the worker failed, or `timeoutMs` passed.
 *   In particular `reset()` returns only once the worker has reset the device and will no
 *   longer touch its rings, so the driver never reads status 0 before that (VIRTIO 1.2 §2.4).
 * - `queueNotify` sets the queue's notify word and rings the worker's doorbell (an
 *   Atomics.notify only when the worker sleeps); it never waits.
 * - Interrupts come back as bits in a shared word and a sequence number the worker notifies;
 *   {@link poll} turns them into the transport's interrupt (used buffer, configuration change).
 *
 * A device that fails in its worker (an exception that is not a guest error, a dead worker, a
 * command that times out) reads as DEVICE_NEEDS_RESET from then on, raises a configuration
 * interrupt, and {@link error} says why; waiters reject with it.
 *
 * The transport's own queue objects stay idle (the worker rebuilt its queues from their saved
 * state at activation). Snapshots go through the worker like the other lifecycle calls:
 * {@link save} returns the worker device's state (its live queues included), and
 * {@link prepareRestore} has the worker validate a state against the context it would be
 * restored into, then commits it after activation; a transport snapshot includes the device
 * as it does an in-thread one. Both throw `TypeError` when the worker's device saves no state.
 */
export class WorkerDeviceProxy implements VirtioDevice {
  readonly deviceType: number;
  readonly offeredFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  /** Why the device is dead, or null. */
  error: DeviceWorkerError | null = null;
  /** Called once when the device dies. */
  onError: ((error: DeviceWorkerError) => void) | null = null;

  /** The device block's words (shared with the worker). */
  readonly words: Int32Array;
  private readonly header: Int32Array;
  private readonly config: Uint8Array;
  private readonly mailbox: Uint8Array;
  private readonly errorText: Uint8Array;
  private readonly timeoutMs: number;
  private readonly listenEnabled: boolean;
  private sink: InterruptSink | null = null;
  private active = false;
  /** The transport failed the device at DRIVER_OK (a badly configured queue). */
  private localFailure = false;
  /** A restore checked by `prepareRestore`, for the reset that follows it (CMD_RESTORE). */
  private restoring: Uint8Array | null = null;
  /** The restore the last reset carried out in the worker, for the commit that follows it. */
  private restored: Uint8Array | null = null;
  private listenToken = 0;

  constructor(
    description: DeviceDescription,
    header: SharedArrayBuffer,
    readonly memory: GuestMemory,
    options: WorkerDeviceProxyOptions = {},
  ) {
    this.deviceType = description.deviceType;
    this.offeredFeatures = BigInt(`0x${description.offeredFeatures}`);
    this.queueMaxSizes = Object.freeze([...description.queueMaxSizes]);
    const layout = deviceBlockLayout(description.queueMaxSizes.length, description.mailboxBytes);
    this.words = new Int32Array(description.block, 0, layout.words);
    this.config = new Uint8Array(description.block, layout.configOffset, CONFIG_MIRROR_BYTES);
    this.mailbox = new Uint8Array(description.block, layout.mailboxOffset, layout.mailboxBytes);
    this.errorText = new Uint8Array(description.block, layout.errorOffset, ERROR_TEXT_BYTES);
    this.header = new Int32Array(header);
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.listenEnabled = options.listen ?? true;
  }

  get configGeneration(): number {
    return Atomics.load(this.words, D_CONFIG_GEN) >>> 0;
  }

  get needsReset(): boolean {
    return this.localFailure || Atomics.load(this.words, D_NEEDS_RESET) !== 0 || this.checkFailed();
  }

  get isActive(): boolean {
    return this.active;
  }

  readConfig(offset: number, out: Uint8Array): void {
    const w = this.words;
    const cfg = this.config;
    // Seqlock: copy, and copy again if the worker rewrote the mirror meanwhile. The worker's
    // rewrite is a few hundred byte stores, so the loop ends quickly; it is bounded anyway.
    for (let attempt = 0; attempt < 100_000; attempt++) {
      const before = Atomics.load(w, D_CONFIG_SEQ);
      if ((before & 1) !== 0) continue;
      for (let i = 0; i < out.length; i++) {
        const o = offset + i;
        out[i] = o >= 0 && o < CONFIG_MIRROR_BYTES ? cfg[o]! : 0;
      }
      if (Atomics.load(w, D_CONFIG_SEQ) === before) return;
    }
    out.fill(0);
  }

  writeConfig(offset: number, data: Uint8Array): void {
    if (!Number.isInteger(offset) || offset < 0 || offset >= CONFIG_MIRROR_BYTES) return;
    this.command(CMD_WRITE_CONFIG, offset, 0, data);
  }

  acceptFeatures(features: bigint): boolean {
    const lo = Number(features & 0xffffffffn) | 0;
    const hi = Number((features >> 32n) & 0xffffffffn) | 0;
    return this.command(CMD_ACCEPT_FEATURES, lo, hi) === 1;
  }

  activate(ctx: DeviceContext): void {
    if (ctx.memory !== this.memory) {
      throw new TypeError('the transport and the device worker must share one GuestMemory');
    }
    this.sink = ctx.interrupt;
    this.active = true;
    // A restore under way activated the worker's device already (CMD_RESTORE, at the reset).
    if (this.restored === null) {
      const bytes = encoder.encode(JSON.stringify(activationOf(ctx)));
      // A payload larger than the mailbox (many or large queue states) is staged in pieces.
      if (bytes.length <= this.mailbox.length) this.command(CMD_ACTIVATE, 0, 0, bytes);
      else {
        this.stage(bytes);
        this.command(CMD_ACTIVATE, 1, 0);
      }
    }
    if (this.listenEnabled) this.listen();
    this.poll();
  }

  queueNotify(index: number): void {
    if (!this.active || index >= this.queueMaxSizes.length) return;
    Atomics.store(this.words, D_NOTIFY + index, 1);
    const h = this.header;
    Atomics.add(h, H_DOORBELL, 1);
    if (Atomics.load(h, H_SLEEPING) !== 0) Atomics.notify(h, H_DOORBELL);
  }

  /** See `VirtioDevice.queueStopped`: the worker's device and its copy of the queue stop. */
  queueStopped(index: number): void {
    if (!this.active || index < 0 || index >= this.queueMaxSizes.length) return;
    this.command(CMD_STOP_QUEUE, index, 0);
  }

  reset(): void {
    this.stopListening();
    const restore = this.restoring;
    this.restoring = null;
    if (restore === null) {
      this.command(CMD_RESET, 0, 0);
      // The worker no longer raises interrupts for this session; drop what it raised before.
      Atomics.store(this.words, D_ISR, 0);
    } else {
      // The transport's restore: reset, activation and commit happen in the worker now, in one
      // step (CMD_RESTORE); `activate` and the commit only follow on this side.
      this.stage(restore);
      this.command(CMD_RESTORE, 0, 0);
      this.restored = restore;
    }
    this.active = false;
    this.sink = null;
    this.localFailure = false;
  }

  /** The worker device's whole state, queues included (read from the worker in pieces). */
  save(): DeviceState {
    const state = JSON.parse(this.readOutgoing(false)) as DeviceState;
    // A queue the transport could not initialise at DRIVER_OK failed the device here.
    if (this.localFailure && state.active) state.needsReset = true;
    return state;
  }

  /** Reads a new snapshot (or, with `reply`, the last refusal) from the worker in pieces. */
  private readOutgoing(reply: boolean): string {
    const flag = reply ? 1 : 0;
    const total = this.command(CMD_SAVE, 0, flag);
    if (total === -2) throw new TypeError('the device in the worker saves no state');
    this.requireAlive();
    const out = new Uint8Array(total);
    for (let off = 0; off < total; off += this.mailbox.length) {
      if (off > 0) this.command(CMD_SAVE, off, 1);
      this.requireAlive();
      out.set(this.mailbox.subarray(0, Math.min(this.mailbox.length, total - off)), off);
    }
    return decoder.decode(out);
  }

  /**
   * Has the worker validate a saved device state against `ctx` (the context the transport
   * will activate the device with; null: restored inactive), changing nothing; throws
   * {@link SnapshotError} as the device does. The returned commit restores it in the worker
   * after the transport reset and (with a context) activated the device.
   */
  prepareRestore(state: unknown, ctx: DeviceContext | null): () => void {
    const context: ActivatePayload | null = ctx === null ? null : activationOf(ctx);
    let stateText: string | undefined;
    try {
      stateText = JSON.stringify(state);
    } catch {
      stateText = undefined;
    }
    if (stateText === undefined) throw new SnapshotError('device', 'is not JSON');
    const check: RestorePayload = { state: JSON.parse(stateText) as unknown, context };
    this.stage(encoder.encode(JSON.stringify(check)));
    const result = this.command(CMD_CHECK_RESTORE, 0, 0);
    if (result === -2) throw new TypeError('the device in the worker saves no state');
    this.requireAlive();
    if (result === 1) {
      const r = JSON.parse(this.readOutgoing(true)) as { field: string; message: string };
      throw new SnapshotError(r.field, r.message);
    }
    // The transport resets the device next, in this same task: the reset sends the whole
    // restore (CMD_RESTORE) so that the worker runs nothing else between its steps. A restore
    // checked and not carried out expires at the end of the task.
    const whole = encoder.encode(JSON.stringify(check));
    this.restoring = whole;
    queueMicrotask(() => {
      if (this.restoring === whole) this.restoring = null;
    });
    const commit: RestorePayload = { state: check.state, context: null };
    return () => {
      if (this.restored === whole) {
        this.restored = null;
      } else {
        // Committed without the reset (not what a transport does): the state alone.
        this.stage(encoder.encode(JSON.stringify(commit)));
        this.command(CMD_COMMIT_RESTORE, 0, 0);
      }
      this.poll();
    };
  }

  /** Copies a payload into the worker in mailbox-sized pieces. */
  private stage(bytes: Uint8Array): void {
    const size = this.mailbox.length;
    for (let off = 0; off === 0 || off < bytes.length; off += size) {
      this.command(
        CMD_STAGE,
        off,
        bytes.length,
        bytes.subarray(off, Math.min(bytes.length, off + size)),
      );
      this.requireAlive();
    }
  }

  /** Throws the device's {@link DeviceWorkerError} once it is dead. */
  private requireAlive(): void {
    if (this.checkFailed()) throw this.error!;
  }

  /** The transport found a queue misconfigured at DRIVER_OK: the device needs a reset (§2.1.2). */
  fail(_error: unknown): void {
    this.localFailure = true;
    this.sink?.configChanged();
  }

  /**
   * Delivers interrupts the worker raised since the last poll to the transport. Returns the
   * bits delivered (1: used buffer, 2: configuration change).
   */
  poll(): number {
    const w = this.words;
    if (Atomics.load(w, D_ISR) === 0) {
      this.checkFailed();
      return 0;
    }
    const bits = Atomics.exchange(w, D_ISR, 0);
    const sink = this.sink;
    if (sink !== null) {
      if ((bits & IRQ_USED) !== 0) sink.usedBuffer(0);
      if ((bits & IRQ_CONFIG) !== 0) sink.configChanged();
    }
    this.checkFailed();
    return bits;
  }

  /** An `InterruptWaiter` for a guest driver of this device (see {@link WorkerInterruptWaiter}). */
  waiter(timeoutMs?: number, spinUs?: number): WorkerInterruptWaiter {
    return new WorkerInterruptWaiter(this, timeoutMs, spinUs);
  }

  /**
   * Declares the device dead (its worker failed or exited): it reads as DEVICE_NEEDS_RESET,
   * raises a configuration interrupt, and every waiter rejects with `error`.
   */
  markDead(error: DeviceWorkerError): void {
    if (this.error !== null) return;
    this.error = error;
    this.sink?.configChanged();
    const w = this.words;
    // Wake every waiter of this device (in this thread) so it notices.
    Atomics.add(w, D_IRQ_SEQ, 1);
    Atomics.notify(w, D_IRQ_SEQ);
    Atomics.notify(w, D_CMD_DONE);
    this.onError?.(error);
  }

  /** Stops the interrupt listener (the link calls this when the worker goes away). */
  detach(): void {
    this.stopListening();
  }

  /** True (and {@link error} set) once the device failed in its worker. */
  private checkFailed(): boolean {
    if (this.error !== null) return true;
    if (Atomics.load(this.words, D_FAILED) === 0) return false;
    const len = Math.min(Math.max(Atomics.load(this.words, D_ERROR_LEN), 0), this.errorText.length);
    const text = decoder.decode(this.errorText.slice(0, len));
    this.markDead(new DeviceWorkerError(`device failed in its worker: ${text}`));
    return true;
  }

  /**
   * Posts a command and waits for the worker to complete it. Returns its result, or -1 when
   * the device is (or just became) dead.
   */
  private command(kind: number, arg0: number, arg1: number, payload?: Uint8Array): number {
    if (this.checkFailed()) return -1;
    const w = this.words;
    if (payload !== undefined) {
      if (payload.length > this.mailbox.length) {
        throw new RangeError(
          `device worker command of ${payload.length} bytes exceeds the mailbox`,
        );
      }
      this.mailbox.set(payload);
    }
    Atomics.store(w, D_CMD_KIND, kind);
    Atomics.store(w, D_CMD_ARG0, arg0);
    Atomics.store(w, D_CMD_ARG1, arg1);
    Atomics.store(w, D_CMD_LEN, payload?.length ?? 0);
    const seq = (Atomics.load(w, D_CMD_SEQ) + 1) | 0;
    Atomics.store(w, D_CMD_SEQ, seq);
    const h = this.header;
    Atomics.add(h, H_DOORBELL, 1);
    Atomics.notify(h, H_DOORBELL);
    const deadline = performance.now() + this.timeoutMs;
    for (;;) {
      const done = Atomics.load(w, D_CMD_DONE);
      if (done === seq) break;
      if (this.checkFailed()) return -1;
      const left = deadline - performance.now();
      if (left <= 0) {
        this.markDead(
          new DeviceWorkerError(`device worker did not answer within ${this.timeoutMs} ms`),
        );
        return -1;
      }
      blockingWait(w, D_CMD_DONE, done, Math.min(left, WAIT_SLICE_MS));
    }
    const result = Atomics.load(w, D_CMD_RESULT);
    if (result < 0) this.checkFailed();
    return result;
  }

  private listen(): void {
    const token = ++this.listenToken;
    const w = this.words;
    const loop = (): void => {
      if (token !== this.listenToken) return;
      const seen = Atomics.load(w, D_IRQ_SEQ);
      this.poll();
      if (this.error !== null) return;
      void waitAsyncFor(w, D_IRQ_SEQ, seen, LISTEN_SLICE_MS).then(loop);
    };
    loop();
  }

  private stopListening(): void {
    this.listenToken++;
    // Wake the listener's pending wait so it ends now rather than at its next slice.
    Atomics.notify(this.words, D_IRQ_SEQ);
  }
}
