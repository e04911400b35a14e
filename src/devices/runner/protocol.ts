/**
 * What the emulator thread and a device worker share: the layout of the shared control blocks,
 * the commands, and the few messages that travel by postMessage.
 *
 * Two kinds of shared block:
 *
 * - one **worker header** per worker (an Int32Array of {@link H_WORDS} words): the doorbell the
 *   worker sleeps on, whether it sleeps, the stop request and the worker's state;
 * - one **device block** per device the worker runs: the command mailbox (lifecycle calls
 *   that must look synchronous to the driver), the interrupt words, mirrors of the
 *   device's status (needs-reset, configuration generation, configuration bytes under a
 *   seqlock), one notify word per queue, and an error area where a failing worker leaves
 *   the reason.
 *
 * Everything that publishes progress across the two threads is an `Atomics` access; the
 * configuration bytes and the mailbox payload are plain bytes ordered by those atomics.
 */

import type { SharedMemoryHandle } from '../../memory/guest-memory.js';

// ---- worker header ----

/** Incremented (then notified) whenever the emulator posts work for any device of the worker. */
export const H_DOORBELL = 0;
/** 1 while the worker sleeps on the doorbell, so a notifier can skip Atomics.notify otherwise. */
export const H_SLEEPING = 1;
/** Set to 1 to ask the worker loop to stop. */
export const H_STOP = 2;
/** One of the WORKER_* states. */
export const H_STATE = 3;
export const H_WORDS = 8;

export const WORKER_STARTING = 0;
export const WORKER_RUNNING = 1;
export const WORKER_STOPPED = 2;
export const WORKER_CRASHED = 3;

// ---- device block: Int32 words ----

/** Sequence number of the last command the emulator posted. */
export const D_CMD_SEQ = 0;
/** Sequence number of the last command the worker completed. */
export const D_CMD_DONE = 1;
export const D_CMD_KIND = 2;
export const D_CMD_ARG0 = 3;
export const D_CMD_ARG1 = 4;
/** Bytes of payload in the mailbox. */
export const D_CMD_LEN = 5;
/** The command's result (meaning per command). */
export const D_CMD_RESULT = 6;
/** Interrupt bits raised by the device and not yet collected (INT_USED_BUFFER | INT_CONFIG_CHANGE). */
export const D_ISR = 7;
/** Incremented (then notified) after every change of D_ISR or D_FAILED. */
export const D_IRQ_SEQ = 8;
/** The device's needsReset flag. */
export const D_NEEDS_RESET = 9;
/** The device's configuration generation. */
export const D_CONFIG_GEN = 10;
/** Seqlock of the configuration mirror: odd while the worker rewrites it. */
export const D_CONFIG_SEQ = 11;
/** 1 once the device failed in the worker (an exception that is not a guest error). */
export const D_FAILED = 12;
/** Length of the failure text the worker wrote to the error area when it set D_FAILED. */
export const D_ERROR_LEN = 13;
/** First notify word; queue i uses D_NOTIFY + i (1: notified since the worker last looked). */
export const D_NOTIFY = 16;

/** D_ISR bits: the same values as the virtio-mmio InterruptStatus bits (VIRTIO 1.2 §4.2.2). */
export const IRQ_USED = 1;
export const IRQ_CONFIG = 2;

/** Bytes of configuration space mirrored (the whole virtio-mmio configuration window). */
export const CONFIG_MIRROR_BYTES = 256;
/** Bytes of the error area, where a failing worker leaves the reason (UTF-8, truncated). */
export const ERROR_TEXT_BYTES = 1024;
/** Default mailbox size: enough for the activation message of a device with many queues. */
export const DEFAULT_MAILBOX_BYTES = 64 * 1024;

/** Byte layout of a device block for `queues` queues. */
export interface DeviceBlockLayout {
  words: number;
  configOffset: number;
  errorOffset: number;
  mailboxOffset: number;
  mailboxBytes: number;
  bytes: number;
}

export function deviceBlockLayout(
  queues: number,
  mailboxBytes = DEFAULT_MAILBOX_BYTES,
): DeviceBlockLayout {
  const words = D_NOTIFY + queues;
  const configOffset = Math.ceil((words * 4) / 64) * 64;
  const errorOffset = configOffset + CONFIG_MIRROR_BYTES;
  const mailboxOffset = errorOffset + ERROR_TEXT_BYTES;
  return {
    words,
    configOffset,
    errorOffset,
    mailboxOffset,
    mailboxBytes,
    bytes: mailboxOffset + mailboxBytes,
  };
}

// ---- commands (D_CMD_KIND) ----

/** arg0/arg1: feature words 0 and 1. Result 1: accepted. */
export const CMD_ACCEPT_FEATURES = 1;
/**
 * Payload: JSON {@link ActivatePayload} (arg0 1: staged with CMD_STAGE instead, being larger
 * than the mailbox). Result 0: active; 1: failed (message in the mailbox).
 */
export const CMD_ACTIVATE = 2;
/** arg0: offset; payload: the bytes. */
export const CMD_WRITE_CONFIG = 3;
/** Device reset: after completion the worker no longer touches the device's rings. */
export const CMD_RESET = 4;
/**
 * The device's saved state, as JSON, read in mailbox-sized pieces: arg0 is the byte offset
 * (0 takes a new snapshot unless arg1 is 1; arg1 1 reads the refusal CMD_CHECK_RESTORE left
 * instead), the mailbox holds the piece, the result is the whole length (-2: the device saves
 * no state).
 */
export const CMD_SAVE = 5;
/** A piece of a staged payload: arg0 is its byte offset (0 starts over), arg1 the whole length. */
export const CMD_STAGE = 6;
/**
 * Validates the staged {@link RestorePayload} against the context it describes, changing
 * nothing. Result 0: valid; 1: refused, JSON `{ field, message }` to read with CMD_SAVE (arg1
 * 1); -2: the device saves no state.
 */
export const CMD_CHECK_RESTORE = 7;
/** Restores the staged {@link RestorePayload} into the device as activated now. Result 0. */
export const CMD_COMMIT_RESTORE = 8;

/**
 * arg0: a queue index the driver stopped using (`VirtioDevice.queueStopped`): the device forgets
 * what it holds from it and the worker resets its queue; after completion the worker no longer
 * touches that ring. Result 0.
 */
export const CMD_STOP_QUEUE = 9;

/**
 * The whole restore in one step, as a transport's `restore` does it in process: resets the
 * device, activates it with the staged {@link RestorePayload}'s context (when not null) and
 * commits its state, with nothing of the worker's other devices run in between (a sibling's
 * frame cannot land in a ring between the activation and the commit). Result 0.
 */
export const CMD_RESTORE = 10;

/** What CMD_CHECK_RESTORE, CMD_COMMIT_RESTORE and CMD_RESTORE carry (staged with CMD_STAGE). */
export interface RestorePayload {
  /** The saved device state (a `DeviceState`, unchecked). */
  state: unknown;
  /** For CMD_CHECK_RESTORE: the context to check against, or null (restored inactive). */
  context: ActivatePayload | null;
}

/** What CMD_ACTIVATE carries. */
export interface ActivatePayload {
  /** Negotiated features, hex. */
  features: string;
  /** Saved state of every queue, as the transport configured (and validated) it. */
  queues: unknown[];
}

// ---- messages (postMessage) ----

/** How the worker loop sleeps and shares its thread (structured-clone safe). */
export interface HostTuning {
  /**
   * 'sync' (default): sleep in Atomics.wait, the fastest wake-up; 'async': sleep in
   * Atomics.waitAsync, keeping the worker's event loop free for backends that complete
   * asynchronously.
   */
  wait?: 'sync' | 'async';
  /** Longest sleep before the loop gives its event loop a turn (ms, default 20). */
  idleSliceMs?: number;
  /** Longest stretch of work before the loop gives its event loop a turn (ms, default 50). */
  busySliceMs?: number;
  /**
   * Microseconds the loop spins on the doorbell before it sleeps (default 0). A notification
   * that arrives meanwhile skips a futex wake-up (tens of µs when the worker has a CPU of its
   * own); spins that keep finding nothing back off (see `Spinner`), so that threads sharing
   * one CPU do not pay for them.
   */
  spinUs?: number;
  /** Where the worker's queues report odd driver behaviour (default 'console'). */
  logging?: 'console' | 'silent';
}

/** What the worker needs to serve devices: sent by the emulator side as the first message. */
export interface InitMessage {
  type: 'init';
  /** A structured-clone-safe description of guest memory (GuestMemory.toShared()). */
  memory: SharedMemoryHandle;
  /** What devices to build; interpreted by the worker's factory. */
  spec: unknown;
  host?: HostTuning;
}

/** What the worker tells about one device it built. */
export interface DeviceDescription {
  deviceType: number;
  /** Offered features, hex. */
  offeredFeatures: string;
  queueMaxSizes: number[];
  /** The device block: the shared control words and mailbox of this device's worker protocol. */
  block: SharedArrayBuffer;
  mailboxBytes: number;
}

/** The worker built its devices and runs its loop. */
export interface ReadyMessage {
  type: 'ready';
  header: SharedArrayBuffer;
  devices: DeviceDescription[];
}

/** The worker failed: building the devices, or a device threw something that is not a guest error. */
export interface ErrorMessage {
  type: 'error';
  /** Index of the device that failed, or -1 for the worker as a whole. */
  device: number;
  message: string;
  stack?: string;
}

/** Asks the worker for a device's saved state (its counters and queues), answered by a reply. */
export interface QueryMessage {
  type: 'query';
  id: number;
  device: number;
}

export interface ReplyMessage {
  type: 'reply';
  id: number;
  /** The device's `save()` result, or null when it has none. */
  state?: unknown;
  error?: string;
}

/** The worker loop ended after a stop request. */
export interface StoppedMessage {
  type: 'stopped';
}

export type ToWorker = InitMessage | QueryMessage;
export type FromWorker = ReadyMessage | ErrorMessage | ReplyMessage | StoppedMessage;

/**
 * The one thing both ends need of a message channel: a Node `MessagePort`/`Worker`, a Web
 * Worker, or a test double can all be adapted to it in a few lines.
 */
export interface DevicePort {
  postMessage(message: unknown): void;
  /** Calls `handler` with each message's data; the returned function unsubscribes. */
  onMessage(handler: (data: unknown) => void): () => void;
}

/** Adapts anything with `addEventListener('message')` (Web Workers, `self`, MessagePort). */
export function eventTargetPort(target: {
  postMessage(message: unknown): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
  removeEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
}): DevicePort {
  return {
    postMessage: (m) => target.postMessage(m),
    onMessage(handler) {
      const listener = (event: { data: unknown }) => handler(event.data);
      target.addEventListener('message', listener);
      return () => target.removeEventListener('message', listener);
    },
  };
}
