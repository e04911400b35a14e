/**
 * One worker thread per ring: the data plane of a {@link VhostUserBackend} built with
 * `ringWorkers`. Each worker builds its own instance of the device from a spec, and, while its
 * ring runs, waits on the ring's kick eventfd, serves the ring and writes the call eventfd,
 * all on its own thread: a slow request on one ring never holds up another, and rings run on
 * as many cores as there are. The back-end's thread keeps the protocol: it validates each ring
 * (a queue built and initialised over the same memory) before handing its state over.
 *
 * Starting a ring is a message; stopping one, and replacing a ring's call eventfd or the
 * dirty log, wait for the worker's acknowledgement through shared memory (`Atomics.wait`,
 * bounded), because the back-end closes the old descriptors right after and must know the
 * worker no longer uses them, and because GET_VRING_BASE must answer with where the ring
 * stopped.
 */
import type { Worker } from 'node:worker_threads';
import type { QueueState } from '../queue/state.js';

/** What a ring worker is started with (`workerData`). */
export interface RingWorkerData {
  /** The device to build (a `DeviceWorkerSpec` of virtq/node's device factories). */
  readonly spec: unknown;
  /** The ring this worker serves. */
  readonly index: number;
  /** The control block (see the C_* indices). */
  readonly control: SharedArrayBuffer;
  /** Drop the worker's warnings instead of printing them. */
  readonly quiet: boolean;
}

/** A shared mapping handed to a worker. */
export interface SharedArea {
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
  readonly size: number;
}

/** The dirty log and its eventfd, as a worker uses them. */
export interface RingLog {
  readonly area: SharedArea | null;
  readonly fd: number | null;
}

export type RingWorkerMessage =
  | {
      readonly type: 'start';
      readonly features: bigint;
      readonly regions: readonly {
        base: number;
        length: number;
        buffer: SharedArrayBuffer;
        offset: number;
      }[];
      /** The validated queue, placed where the ring continues. */
      readonly queue: QueueState;
      /** The ring's region of the inflight buffer (INFLIGHT_SHMFD), in the ring's format. */
      readonly inflight: (SharedArea & { readonly descNum: number }) | null;
      readonly kickFd: number | null;
      readonly callFd: number | null;
      /** Signalled when the device needs a reset (DEVICE_NEEDS_RESET). */
      readonly errFd: number | null;
      readonly log: RingLog;
      /** Polling mode (microseconds; 0: kicks only). */
      readonly pollIdleMicros: number;
    }
  | { readonly type: 'stop'; readonly seq: number }
  | { readonly type: 'setCall'; readonly seq: number; readonly fd: number | null }
  | { readonly type: 'setLog'; readonly seq: number; readonly log: RingLog };

// Int32 slots of the control block.
/** Sequence number of the last acknowledged request. */
export const C_ACK = 0;
/** Where the ring stopped (the VRING_BASE value, as a u32). */
export const C_BASE = 1;
/** 1 when the ring was running when asked to stop. */
export const C_WAS_RUNNING = 2;
export const C_KICKS = 3;
export const C_CALLS = 4;
export const C_RESUBMITTED = 5;
export const C_LOGGED_PAGES = 6;
export const C_POLLS = 7;
export const C_POLL_TURNS = 8;
export const CONTROL_WORDS = 9;

/** How long the back-end waits, by default, for a worker's acknowledgement before giving up. */
export const DEFAULT_ACK_TIMEOUT_MS = 15_000;

/** Thrown when a worker does not acknowledge in time (it is then terminated). */
export class RingWorkerTimeout extends Error {
  override readonly name = 'RingWorkerTimeout';
}

/** The back-end's handle on one ring worker. */
export class RingWorkerHandle {
  readonly control: Int32Array;
  private seq = 0;
  private dead = false;
  private exited = false;
  /** Descriptors to close once the worker has exited, with how. */
  private readonly afterExit: { fds: number[]; close: (fd: number) => void }[] = [];

  constructor(
    readonly worker: Worker,
    control: SharedArrayBuffer,
    private readonly ackTimeoutMs = DEFAULT_ACK_TIMEOUT_MS,
  ) {
    this.control = new Int32Array(control);
    worker.on('exit', () => {
      this.dead = true;
      this.exited = true;
      for (const { fds, close } of this.afterExit.splice(0)) for (const fd of fds) close(fd);
    });
  }

  /**
   * Closes `fds` (with `close`) once the worker has exited, at once if it has. For the
   * eventfds of a ring whose worker stopped answering: until its termination completes it may
   * still poll the kick fd and write the call and error fds, and a descriptor closed under it
   * makes its event loop abort (libuv cannot add a closed fd to epoll) or, once the number is
   * reused, makes it write into something else.
   */
  closeAfterExit(fds: readonly number[], close: (fd: number) => void): void {
    if (this.exited) for (const fd of fds) close(fd);
    else this.afterExit.push({ fds: [...fds], close });
  }

  /** Starts the ring (asynchronously: the worker may still be loading). */
  start(m: Extract<RingWorkerMessage, { type: 'start' }>): void {
    this.worker.postMessage(m);
  }

  /** Stops the ring and returns where it stopped, or null when it was not running. */
  stop(): number | null {
    this.request({ type: 'stop', seq: 0 });
    if (Atomics.load(this.control, C_WAS_RUNNING) === 0) return null;
    return Atomics.load(this.control, C_BASE) >>> 0;
  }

  /** Switches the ring to call eventfd `fd`; the worker has stopped using the old one on return. */
  setCall(fd: number | null): void {
    this.request({ type: 'setCall', seq: 0, fd });
  }

  /** Switches the ring to a new log; the worker has stopped using the old one on return. */
  setLog(log: RingLog): void {
    this.request({ type: 'setLog', seq: 0, log });
  }

  /** Counter `slot` (C_KICKS...). */
  counter(slot: number): number {
    return Atomics.load(this.control, slot);
  }

  private request(m: Extract<RingWorkerMessage, { seq: number }>): void {
    if (this.dead) return;
    const seq = ++this.seq;
    this.worker.postMessage({ ...m, seq });
    const deadline = Date.now() + this.ackTimeoutMs;
    for (;;) {
      const ack = Atomics.load(this.control, C_ACK);
      if (ack === seq || this.dead) return;
      const left = deadline - Date.now();
      if (left <= 0) {
        this.dead = true;
        void this.worker.terminate();
        throw new RingWorkerTimeout(
          `ring worker did not answer ${m.type} in ${this.ackTimeoutMs} ms`,
        );
      }
      Atomics.wait(this.control, C_ACK, ack, Math.min(left, 100));
    }
  }

  terminate(): Promise<number> {
    this.dead = true;
    return this.worker.terminate();
  }
}
