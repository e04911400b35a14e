import { isVirtqError, SnapshotError, type VirtqError } from '../errors.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { VIRTIO_F_VERSION_1 } from '../queue/constants.js';
import type { Queue } from '../queue/queue.js';
import type { QueueState } from '../queue/state.js';
import {
  checkBudget,
  DEFAULT_BYTES_PER_TURN,
  type DeviceBudgetOptions,
  defaultScheduler,
  type Scheduler,
} from './budget.js';
import { readDeviceState } from './device-state.js';

/** Device status bits (VIRTIO 1.2 §2.1). */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

/** Device type ids (VIRTIO 1.2 §5). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_RNG = 4;

/** A feature bit as a 64-bit mask. */
export function featureBit(bit: number): bigint {
  return 1n << BigInt(bit);
}

/** True when `features` has feature `bit`. */
export function hasFeature(features: bigint, bit: number): boolean {
  return (features & featureBit(bit)) !== 0n;
}

/** How a device tells its transport that the driver should be interrupted. */
export interface InterruptSink {
  /** Used buffers on queue `index` that the driver asked to hear about. */
  usedBuffer(index: number): void;
  /** The configuration space changed, or the device entered DEVICE_NEEDS_RESET. */
  configChanged(): void;
}

/** What a device receives when the driver sets DRIVER_OK. */
export interface DeviceContext {
  memory: GuestMemory;
  /** One queue per device queue, in order, initialised (ready ones) or not (unused ones). */
  queues: readonly Queue[];
  /** The features the driver acknowledged (accepted by {@link VirtioDevice.acceptFeatures}). */
  features: bigint;
  interrupt: InterruptSink;
  /**
   * How the device schedules the rest of its work when a turn's budget is spent (see
   * {@link DeviceBudgetOptions}); a transport or runner whose thread has its own loop passes
   * one that runs the callback there. Default: {@link defaultScheduler}.
   */
  schedule?: Scheduler;
}

/** How a vhost-user back-end presents a device when the front-end serves some of its queues. */
export interface FrontEndQueues {
  /**
   * Rings the back-end serves: queues `0..served-1`. The device is activated with a context
   * holding exactly these queues, which tells it that the front-end serves the others.
   */
  readonly served: number;
  /** The answer to VHOST_USER_GET_QUEUE_NUM (virtio-net: queue pairs, as QEMU and DPDK read it). */
  readonly queueNum: number;
  /**
   * The features the device runs with, given those the front-end acknowledged: a front-end may
   * leave out of SET_FEATURES the features of the queues it serves (DPDK strips CTRL_VQ).
   */
  completeFeatures(acked: bigint): bigint;
}

/** Saved state of a device: its own fields and its queues. */
export interface DeviceState {
  version: 1;
  deviceType: number;
  features: string;
  active: boolean;
  needsReset: boolean;
  configGeneration: number;
  queues: QueueState[];
  /** Device-specific state (JSON-safe). */
  device: unknown;
}

/**
 * The one interface every virtio device implements and every transport talks to.
 *
 * Lifecycle, driven by the transport: `acceptFeatures` at FEATURES_OK, `activate` at
 * DRIVER_OK, `queueNotify` for each available-buffer notification, `reset` when the driver
 * writes 0 to the status. A device never throws a guest-caused error out of `queueNotify`: it
 * enters DEVICE_NEEDS_RESET instead ({@link needsReset}) and raises a configuration interrupt.
 */
export interface VirtioDevice {
  /** Device type (VIRTIO_ID_*). */
  readonly deviceType: number;
  /** Features the device offers. */
  readonly offeredFeatures: bigint;
  /** Maximum size of each queue; its length is the number of queues. */
  readonly queueMaxSizes: readonly number[];
  /** Changes whenever the configuration space changes (§2.5.1). */
  readonly configGeneration: number;
  /** The device found the driver breaking a rule and waits for a reset (§2.1.2). */
  readonly needsReset: boolean;
  /** Between activate and reset. */
  readonly isActive: boolean;

  /** Reads device configuration bytes; bytes past the configuration space read as 0. */
  readConfig(offset: number, out: Uint8Array): void;
  /** Writes device configuration bytes; read-only and out-of-range bytes are ignored. */
  writeConfig(offset: number, data: Uint8Array): void;
  /** The driver acknowledged `features` at FEATURES_OK; false refuses them. */
  acceptFeatures(features: bigint): boolean;
  /** The driver set DRIVER_OK. */
  activate(ctx: DeviceContext): void;
  /** The driver notified queue `index`. */
  queueNotify(index: number): void;
  /** Back to the state before the driver found the device (§2.4). */
  reset(): void;

  /** The guest error that put the device into DEVICE_NEEDS_RESET, if it keeps one. */
  readonly lastError?: VirtqError | null;
  /**
   * Enters DEVICE_NEEDS_RESET for a rule the driver broke that the transport found (a queue
   * configuration that does not validate at DRIVER_OK), where the device supports it.
   */
  fail?(error: VirtqError): void;
  /**
   * Asynchronous completion capability: true when requests may complete after `queueNotify`
   * returns (the device holds chains while its backend works). Such a device must be drained
   * with {@link whenIdle} before its rings stop.
   */
  readonly asyncTransfers?: boolean;
  /** Drain capability: calls `callback` once no request is under way (at once when none is). */
  whenIdle?(callback: () => void): void;
  /**
   * Ring-restart capability, for a device that keeps chains it popped from a queue and has not
   * used yet across turns (virtio-net's receive buffers waiting for a frame): queue `index`
   * stopped while the device stays active, and will resume at its used position, so those
   * chains will be read from the ring again; the device forgets the ones it holds. The
   * vhost-user back-end calls it when it stops a packed ring without resetting the device. The
   * MMIO transport calls it when the driver stops using a queue (QueueReady 0 after DRIVER_OK),
   * before it resets the queue; a device in a worker then stops its copy of the queue too.
   */
  queueStopped?(index: number): void;
  /**
   * Ring-stop capability, for the same kind of device: queue `index` (a split ring) is about to
   * stop, and the position it reports counts every chain popped as taken, so the device gives
   * back the chains it holds from it now (used with length 0, published) rather than keep
   * chains the next back-end or session will not know of. The vhost-user back-end calls it
   * before it stops a split ring (GET_VRING_BASE, SET_VRING_ENABLE 0).
   */
  giveBackHeld?(index: number): void;
  /**
   * vhost-user capability, for a device whose trailing queues a vhost-user front-end serves
   * itself (virtio-net's control queue: QEMU and DPDK's virtio-user answer it). Absent: every
   * queue is a back-end ring and GET_QUEUE_NUM counts them.
   */
  readonly frontEndQueues?: FrontEndQueues;

  /** Snapshot capability: the device's whole state, queues included, JSON-safe. */
  save?(): DeviceState;
  /**
   * Snapshot capability: validates a saved device state for a restore into `ctx` (the context
   * the transport will activate it with; null when the device is restored inactive) and returns
   * the commit. Validation changes nothing and throws {@link SnapshotError} naming the first bad
   * field; the transport runs the commit (which cannot fail) after it reset the device and, with
   * a context, activated it.
   */
  prepareRestore?(state: unknown, ctx: DeviceContext | null): () => void;
}

/**
 * What most devices share: feature acceptance, activation bookkeeping, turning guest errors
 * into DEVICE_NEEDS_RESET, used-buffer interrupts with notification suppression, a
 * configuration space with a generation counter, and save/restore of the queues.
 */
export abstract class VirtioDeviceBase implements VirtioDevice {
  readonly deviceType: number;
  readonly offeredFeatures: bigint;
  readonly queueMaxSizes: readonly number[];
  configGeneration = 0;
  needsReset = false;
  /** The last guest error that put the device into DEVICE_NEEDS_RESET. */
  lastError: VirtqError | null = null;

  /** Turns that ended with work left and scheduled their own continuation. */
  yields = 0;

  protected ctx: DeviceContext | null = null;
  /** Device configuration space (layout per device type). */
  protected config: Uint8Array;
  /**
   * Bumped at every activation and reset: a continuation or completion scheduled before it
   * finds a different value and does nothing.
   */
  protected generation = 0;
  /** Chains this turn may still take (see {@link withinBudget}). */
  protected chainsLeft = 0;
  /** Bytes this turn may still move (see {@link spend}). */
  protected bytesLeft = 0;

  /** Chains per turn (0: the notified queue's size). */
  private readonly chainLimit: number;
  private readonly byteLimit: number;
  private readonly ownSchedule: Scheduler | null;
  /** A turn is under way (a nested notification shares its budget). */
  private inTurn = false;
  /** Per queue: 1 while a continuation is scheduled (at most one each). */
  private readonly continuing: Uint8Array;

  protected constructor(
    deviceType: number,
    queueMaxSizes: readonly number[],
    features: bigint,
    configSize: number,
    budget: DeviceBudgetOptions = {},
  ) {
    this.deviceType = deviceType;
    this.queueMaxSizes = queueMaxSizes;
    this.offeredFeatures = features | featureBit(VIRTIO_F_VERSION_1);
    this.config = new Uint8Array(configSize);
    this.chainLimit = checkBudget('maxChainsPerTurn', budget.maxChainsPerTurn) ?? 0;
    this.byteLimit =
      checkBudget('maxBytesPerTurn', budget.maxBytesPerTurn) ?? DEFAULT_BYTES_PER_TURN;
    this.ownSchedule = budget.schedule ?? null;
    this.continuing = new Uint8Array(queueMaxSizes.length);
  }

  get isActive(): boolean {
    return this.ctx !== null;
  }

  /** Negotiated features (0 before activation). */
  get features(): bigint {
    return this.ctx?.features ?? 0n;
  }

  readConfig(offset: number, out: Uint8Array): void {
    for (let i = 0; i < out.length; i++) {
      const o = offset + i;
      out[i] = o >= 0 && o < this.config.length ? this.config[o]! : 0;
    }
  }

  writeConfig(offset: number, data: Uint8Array): void {
    // Most configuration spaces are read-only; devices with writable fields override this.
    void offset;
    void data;
  }

  /** Replaces configuration bytes and bumps the generation (§2.5.1); interrupts when active. */
  protected updateConfig(offset: number, bytes: Uint8Array): void {
    this.config.set(bytes, offset);
    this.configGeneration = (this.configGeneration + 1) >>> 0;
    this.ctx?.interrupt.configChanged();
  }

  acceptFeatures(features: bigint): boolean {
    // §6.1: a driver may accept only what is offered; virtq serves VIRTIO 1.x only.
    if ((features & ~this.offeredFeatures) !== 0n) return false;
    return hasFeature(features, VIRTIO_F_VERSION_1);
  }

  activate(ctx: DeviceContext): void {
    this.dropContinuations();
    this.ctx = ctx;
    this.onActivate(ctx);
  }

  /**
   * Serves queue `index` for one turn: at most a budget of chains and bytes (see
   * {@link DeviceBudgetOptions}); work left after that is continued by the device itself
   * through its scheduler, with no further notification needed. A notification that arrives
   * while a turn runs (a backend callback) shares that turn's budget.
   */
  queueNotify(index: number): void {
    // A notification supersedes a continuation a scheduler dropped.
    if (index >= 0 && index < this.continuing.length) this.continuing[index] = 0;
    this.serveQueue(index, null);
  }

  /**
   * Runs `work` on queue `index` as a notification runs {@link processQueue}: inside the turn
   * under way, or in a new one with a fresh budget; a guest error it throws puts the device in
   * DEVICE_NEEDS_RESET. For work that does not start with a notification (a network backend's
   * burst of frames). Returns false, running nothing, when the queue cannot be served now.
   */
  protected serveQueue(index: number, work: ((q: Queue) => void) | null): boolean {
    const ctx = this.ctx;
    if (ctx === null || this.needsReset) return false;
    const q = ctx.queues[index];
    if (q === undefined || !q.isActive) return false;
    const outer = !this.inTurn;
    if (outer) {
      this.inTurn = true;
      this.chainsLeft = this.chainLimit === 0 ? q.size : this.chainLimit;
      this.bytesLeft = this.byteLimit;
    }
    try {
      if (work === null) this.processQueue(index, q);
      else work(q);
    } catch (e) {
      if (!isVirtqError(e)) throw e;
      this.fail(e);
    } finally {
      if (outer) this.inTurn = false;
    }
    return true;
  }

  reset(): void {
    this.dropContinuations();
    this.onReset();
    this.ctx = null;
    this.needsReset = false;
    this.lastError = null;
  }

  /** Scheduled continuations will do nothing (a new generation). */
  private dropContinuations(): void {
    this.generation++;
    this.continuing.fill(0);
  }

  /**
   * In a queue loop, before taking the next chain: true while this turn's budget allows one
   * more; false once it is spent, after scheduling a continuation of queue `index`. Costs an
   * integer decrement and two compares.
   */
  protected withinBudget(index: number): boolean {
    if (--this.chainsLeft >= 0 && this.bytesLeft > 0) return true;
    this.continueLater(index);
    return false;
  }

  /** Counts `bytes` moved between guest memory and the backend against this turn. */
  protected spend(bytes: number): void {
    this.bytesLeft -= bytes;
  }

  /**
   * Serves queue `index` again in a later turn, at the back of the scheduler's queue: at most
   * one continuation per queue is pending (until it runs or a notification of the queue
   * arrives); it does nothing after a reset or re-activation, and nothing on a device in
   * DEVICE_NEEDS_RESET.
   */
  protected continueLater(index: number): void {
    if (this.schedulePass(index)) this.yields++;
  }

  /** {@link continueLater} without counting a yield; false when none was scheduled. */
  private schedulePass(index: number): boolean {
    const ctx = this.ctx;
    if (ctx === null || this.continuing[index] === 1) return false;
    this.continuing[index] = 1;
    const generation = this.generation;
    const schedule = this.ownSchedule ?? ctx.schedule ?? defaultScheduler;
    schedule(() => {
      if (generation === this.generation) this.queueNotify(index);
    }, index);
    return true;
  }

  /**
   * The guest broke a rule: stop processing, set DEVICE_NEEDS_RESET and tell the driver with a
   * configuration change interrupt (§2.1.2).
   */
  fail(error: VirtqError): void {
    if (this.needsReset) return;
    this.needsReset = true;
    this.lastError = error;
    this.ctx?.interrupt.configChanged();
  }

  /** Publishes used entries of queue `index` and interrupts the driver if it wants that. */
  protected publish(index: number): void {
    const ctx = this.ctx;
    if (ctx === null) return;
    const q = ctx.queues[index]!;
    q.advanceUsedRingIdx();
    if (q.prepareKick()) ctx.interrupt.usedBuffer(index);
  }

  /** Device-specific work for a notification of queue `index`. Guest errors may be thrown. */
  protected abstract processQueue(index: number, queue: Queue): void;
  /** Called when the driver sets DRIVER_OK. */
  protected onActivate(_ctx: DeviceContext): void {}
  /** Called on reset, before the context is dropped. */
  protected onReset(): void {}

  /** Device-specific state for a snapshot (JSON-safe). */
  protected saveDevice(): unknown {
    return null;
  }

  /**
   * Validates device-specific saved state for a restore into `ctx` (null: the device is
   * restored inactive) and returns what commits it. Validation changes nothing and throws
   * {@link SnapshotError} on bad input; the commit runs after the device was reset and (with a
   * context) activated, and must not fail.
   */
  protected prepareDevice(_state: unknown, _ctx: DeviceContext | null): () => void {
    return () => {};
  }

  /** The device's whole state, queues included, as a JSON-safe object. */
  save(): DeviceState {
    const queues = (this.ctx?.queues ?? []).map((q) => q.save());
    return {
      version: 1,
      deviceType: this.deviceType,
      features: this.features.toString(16),
      active: this.ctx !== null,
      needsReset: this.needsReset,
      configGeneration: this.configGeneration,
      queues,
      device: this.saveDevice(),
    };
  }

  /**
   * Validates a saved device state (see {@link VirtioDevice.prepareRestore}) against the
   * context it is to be restored into, and returns its commit. Nothing changes until the
   * commit runs.
   */
  prepareRestore(state: unknown, ctx: DeviceContext | null): () => void {
    const common = readDeviceState(state, this, ctx);
    const commitDevice = this.prepareDevice((state as { device?: unknown }).device, ctx);
    return () => {
      this.configGeneration = common.configGeneration;
      this.needsReset = common.needsReset;
      commitDevice();
      // Work the saved device had scheduled for itself (a continuation after a spent budget, a
      // rate limit's or a failed backend's timer) is not part of the state. A restored live
      // device therefore looks at each of its rings once, as a notification would make it
      // (one more notification than the driver sent is always allowed): nothing the driver
      // made available waits for a kick it already gave.
      if (ctx === null || this.needsReset) return;
      for (let i = 0; i < ctx.queues.length; i++) {
        const q = ctx.queues[i]!;
        if (!q.isActive) continue;
        // Used elements written before the save and not yet published (a block transfer's
        // completion waits a loop turn for its batch) are published now: the restored device
        // has no record of them, and the driver would wait for them forever.
        if (q.numAdded !== 0) this.publish(i);
        this.schedulePass(i);
      }
    };
  }
}
