/**
 * One device of a {@link DeviceHost}, on the worker side: its shared control block, the
 * mirrors the proxy reads (configuration, status, interrupts), and the lifecycle commands the
 * proxy sends (activation, reset, snapshots, restores, stopped queues).
 */
import { SnapshotError } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import { type AnyQueue, queueFromState } from '../../queue/factory.js';
import type { Logger } from '../../queue/logger.js';
import type { DeviceContext, InterruptSink, VirtioDevice } from '../device.js';
import type { DeviceHost } from './host.js';
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
  IRQ_CONFIG,
  IRQ_USED,
  type RestorePayload,
} from './protocol.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One device served by a {@link DeviceHost}: its block, its mirrors, its lifecycle. */
export class HostedDevice {
  readonly block: SharedArrayBuffer;
  readonly words: Int32Array;
  private readonly config: Uint8Array;
  private readonly mailbox: Uint8Array;
  private readonly errorText: Uint8Array;
  private readonly scratch = new Uint8Array(CONFIG_MIRROR_BYTES);
  private readonly queueCount: number;
  private lastDone = 0;
  private active = false;
  /** The context of the current activation (null: inactive). */
  private ctx: DeviceContext | null = null;
  /** The last snapshot taken by CMD_SAVE, read in pieces. */
  private outgoing = new Uint8Array(0);
  /** A payload staged by CMD_STAGE. */
  private staged = new Uint8Array(0);
  failed = false;
  private mirroredGeneration = -1;
  private mirroredNeedsReset = false;
  private readonly sink: InterruptSink;
  /** Continuations the device scheduled (a turn that spent its budget), run by {@link step}. */
  private later: (() => void)[] = [];
  private readonly schedule = (callback: () => void): void => {
    this.later.push(callback);
    this.wake();
  };

  constructor(
    readonly index: number,
    readonly device: VirtioDevice,
    private readonly memory: GuestMemory,
    private readonly logger: Logger,
    private readonly onError: (device: number, error: unknown) => void,
    readonly mailboxBytes: number,
    /** Makes the host loop look at its devices again (a continuation was scheduled). */
    private readonly wake: () => void,
  ) {
    this.queueCount = device.queueMaxSizes.length;
    const layout = deviceBlockLayout(this.queueCount, mailboxBytes);
    this.block = new SharedArrayBuffer(layout.bytes);
    this.words = new Int32Array(this.block, 0, layout.words);
    this.config = new Uint8Array(this.block, layout.configOffset, CONFIG_MIRROR_BYTES);
    this.mailbox = new Uint8Array(this.block, layout.mailboxOffset, mailboxBytes);
    this.errorText = new Uint8Array(this.block, layout.errorOffset, ERROR_TEXT_BYTES);
    this.sink = {
      usedBuffer: () => this.raise(IRQ_USED),
      configChanged: () => {
        this.mirror();
        this.raise(IRQ_CONFIG);
      },
    };
    this.guard(() => this.mirror());
  }

  describe(): DeviceDescription {
    return {
      deviceType: this.device.deviceType,
      offeredFeatures: this.device.offeredFeatures.toString(16),
      queueMaxSizes: [...this.device.queueMaxSizes],
      block: this.block,
      mailboxBytes: this.mailboxBytes,
    };
  }

  private raise(bits: number): void {
    const w = this.words;
    Atomics.or(w, D_ISR, bits);
    Atomics.add(w, D_IRQ_SEQ, 1);
    Atomics.notify(w, D_IRQ_SEQ);
  }

  /** Rewrites the configuration mirror under its seqlock, then the generation and needs-reset. */
  private mirror(): void {
    const w = this.words;
    const d = this.device;
    d.readConfig(0, this.scratch);
    Atomics.add(w, D_CONFIG_SEQ, 1); // odd: readers retry
    this.config.set(this.scratch);
    Atomics.store(w, D_CONFIG_GEN, d.configGeneration | 0);
    Atomics.add(w, D_CONFIG_SEQ, 1); // even again
    this.mirroredGeneration = d.configGeneration;
    this.mirrorNeedsReset();
  }

  private mirrorNeedsReset(): void {
    const nr = this.device.needsReset || this.failed;
    this.mirroredNeedsReset = nr;
    Atomics.store(this.words, D_NEEDS_RESET, nr ? 1 : 0);
  }

  /** Runs `fn`; an exception kills this device (it is a bug, not a guest error). */
  private guard(fn: () => void): boolean {
    try {
      fn();
      return true;
    } catch (e) {
      this.die(e);
      return false;
    }
  }

  die(error: unknown): void {
    if (this.failed) return;
    this.failed = true;
    this.active = false;
    const w = this.words;
    const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    const bytes = encoder.encode(text).subarray(0, this.errorText.length);
    this.errorText.set(bytes);
    Atomics.store(w, D_ERROR_LEN, bytes.length);
    Atomics.store(w, D_FAILED, 1);
    Atomics.store(w, D_NEEDS_RESET, 1);
    // Complete a command the emulator may be waiting for, so it does not wait for its timeout.
    const seq = Atomics.load(w, D_CMD_SEQ);
    if (seq !== this.lastDone) this.complete(seq, -1);
    this.raise(IRQ_CONFIG);
    this.onError(this.index, error);
  }

  private complete(seq: number, result: number): void {
    const w = this.words;
    this.lastDone = seq;
    Atomics.store(w, D_CMD_RESULT, result);
    Atomics.store(w, D_CMD_DONE, seq);
    Atomics.notify(w, D_CMD_DONE);
  }

  /**
   * Re-mirrors the configuration and needs-reset flag if they changed outside a command or a
   * notification (a backend event while the loop gave its event loop a turn).
   */
  refresh(): void {
    if (this.failed) return;
    const d = this.device;
    if (
      d.configGeneration !== this.mirroredGeneration ||
      d.needsReset !== this.mirroredNeedsReset
    ) {
      this.guard(() => this.mirror());
    }
  }

  /** Runs a pending command, then every notified queue. True when it did anything. */
  step(): boolean {
    if (this.failed) return false;
    const w = this.words;
    let worked = false;
    const seq = Atomics.load(w, D_CMD_SEQ);
    if (seq !== this.lastDone) {
      this.command(seq);
      worked = true;
      if (this.failed) return true;
    }
    // Notify words are consumed only while active: a notification that races with activation
    // waits for it instead of being dropped.
    if (!this.active) return worked;
    const d = this.device;
    for (let q = 0; q < this.queueCount; q++) {
      if (Atomics.load(w, D_NOTIFY + q) === 0) continue;
      // Clear first: a notification that arrives while the queue is processed is seen next time.
      Atomics.store(w, D_NOTIFY + q, 0);
      worked = true;
      if (!this.guard(() => d.queueNotify(q))) return true;
    }
    // Continuations scheduled before this step go after every notified queue (and, in the
    // loop, after the other devices): a device whose turn spent its budget waits its turn.
    // Those scheduled now run in the next step.
    const later = this.later;
    if (later.length > 0) {
      this.later = [];
      worked = true;
      for (const callback of later) if (!this.guard(callback)) return true;
    }
    if (
      worked &&
      (d.configGeneration !== this.mirroredGeneration || d.needsReset !== this.mirroredNeedsReset)
    ) {
      this.guard(() => this.mirror());
    }
    return worked || this.later.length > 0;
  }

  private command(seq: number): void {
    const w = this.words;
    const kind = Atomics.load(w, D_CMD_KIND);
    let result = 0;
    const ok = this.guard(() => {
      switch (kind) {
        case CMD_ACCEPT_FEATURES: {
          const f =
            BigInt(Atomics.load(w, D_CMD_ARG0) >>> 0) |
            (BigInt(Atomics.load(w, D_CMD_ARG1) >>> 0) << 32n);
          result = this.device.acceptFeatures(f) ? 1 : 0;
          break;
        }
        case CMD_ACTIVATE:
          // arg0 1: the payload was staged (CMD_STAGE), being larger than the mailbox.
          result = this.activate(
            JSON.parse(
              Atomics.load(w, D_CMD_ARG0) === 1 ? decoder.decode(this.staged) : this.payloadText(),
            ) as ActivatePayload,
          );
          break;
        case CMD_WRITE_CONFIG:
          this.device.writeConfig(Atomics.load(w, D_CMD_ARG0), this.payload());
          break;
        case CMD_SAVE:
          result = this.saveChunk(Atomics.load(w, D_CMD_ARG0), Atomics.load(w, D_CMD_ARG1) === 1);
          break;
        case CMD_STAGE:
          this.stageChunk(Atomics.load(w, D_CMD_ARG0), Atomics.load(w, D_CMD_ARG1));
          break;
        case CMD_CHECK_RESTORE:
          result = this.checkRestore();
          break;
        case CMD_COMMIT_RESTORE:
          result = this.commitRestore();
          break;
        case CMD_STOP_QUEUE: {
          const index = Atomics.load(w, D_CMD_ARG0);
          const q = this.ctx?.queues[index];
          if (q?.isActive === true) {
            const { usesNotifSuppression, indirectDesc } = q;
            this.device.queueStopped?.(index);
            q.reset();
            // As the transport's copy: stopped, with the negotiated ring features.
            q.usesNotifSuppression = usesNotifSuppression;
            q.indirectDesc = indirectDesc;
          }
          Atomics.store(w, D_NOTIFY + index, 0);
          break;
        }
        case CMD_RESET:
          this.reset();
          break;
        case CMD_RESTORE:
          result = this.restore();
          break;
        default:
          throw new RangeError(`device worker: unknown command ${kind}`);
      }
      this.mirror();
    });
    if (ok) this.complete(seq, result);
  }

  private reset(): void {
    this.device.reset();
    this.ctx = null;
    this.active = false;
    this.later = [];
    for (let q = 0; q < this.queueCount; q++) Atomics.store(this.words, D_NOTIFY + q, 0);
  }

  /** CMD_RESTORE: reset, activation and commit of the staged restore in one step. */
  private restore(): number {
    const prepare = this.device.prepareRestore?.bind(this.device);
    if (prepare === undefined) return -2;
    const p = JSON.parse(decoder.decode(this.staged)) as RestorePayload;
    this.staged = new Uint8Array(0);
    this.reset();
    // What the old session raised is not this one's (the proxy dropped it after CMD_RESET).
    Atomics.store(this.words, D_ISR, 0);
    if (p.context !== null) this.activate(p.context);
    // Checked against this context before: a refusal now is a bug, and kills the device.
    prepare(p.state, this.ctx)();
    return 0;
  }

  /** Rebuilds the queues the transport validated and activates the device on them. */
  private activate(p: ActivatePayload): number {
    const ctx = this.context(p);
    this.device.activate(ctx);
    this.ctx = ctx;
    this.active = true;
    return 0;
  }

  /** A device context over queues rebuilt from their saved states. */
  private context(p: ActivatePayload): DeviceContext {
    const queues: AnyQueue[] = [];
    for (const s of p.queues) queues.push(queueFromState(s, this.memory, { logger: this.logger }));
    return {
      memory: this.memory,
      queues,
      features: BigInt(`0x${p.features}`),
      interrupt: this.sink,
      schedule: this.schedule,
    };
  }

  /**
   * Copies the piece at `offset` of the device's saved state (or, with `reply`, of the last
   * refusal) into the mailbox; a new snapshot is taken at offset 0.
   */
  private saveChunk(offset: number, reply: boolean): number {
    if (this.device.save === undefined) return -2;
    if (offset === 0 && !reply) this.outgoing = encoder.encode(JSON.stringify(this.device.save()));
    const out = this.outgoing;
    const start = Math.min(Math.max(offset, 0), out.length);
    this.mailbox.set(out.subarray(start, Math.min(out.length, start + this.mailbox.length)));
    return out.length;
  }

  private stageChunk(offset: number, total: number): void {
    if (offset === 0) this.staged = new Uint8Array(Math.max(total, 0));
    const piece = this.payload();
    if (offset < 0 || offset + piece.length > this.staged.length)
      throw new RangeError('device worker: a staged piece outside the payload');
    this.staged.set(piece, offset);
  }

  private checkRestore(): number {
    const prepare = this.device.prepareRestore?.bind(this.device);
    if (prepare === undefined) return -2;
    const p = JSON.parse(decoder.decode(this.staged)) as RestorePayload;
    try {
      prepare(p.state, p.context === null ? null : this.context(p.context));
      return 0;
    } catch (e) {
      if (!(e instanceof SnapshotError)) throw e;
      const reason = e.message.slice(`snapshot field ${e.field}: `.length);
      // Read back by CMD_SAVE with arg1 1, in pieces.
      this.outgoing = encoder.encode(JSON.stringify({ field: e.field, message: reason }));
      return 1;
    }
  }

  private commitRestore(): number {
    const prepare = this.device.prepareRestore?.bind(this.device);
    if (prepare === undefined) return -2;
    const p = JSON.parse(decoder.decode(this.staged)) as RestorePayload;
    this.staged = new Uint8Array(0);
    // Checked against an equal context before: a refusal now is a bug, and kills the device.
    prepare(p.state, this.ctx)();
    return 0;
  }

  private payload(): Uint8Array {
    const len = Atomics.load(this.words, D_CMD_LEN);
    // A copy: the mailbox may be rewritten by the next command.
    return this.mailbox.slice(0, Math.min(Math.max(len, 0), this.mailbox.length));
  }

  private payloadText(): string {
    return decoder.decode(this.payload());
  }
}
