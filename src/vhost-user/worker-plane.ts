/**
 * The data plane with one worker thread per ring (`ringWorkers`): see data-plane.ts for the
 * interface and ring-worker-protocol.ts for the messages and the acknowledgements. The worker
 * of a ring (ring-worker-main.ts) builds its own device from the spec, waits on the ring's kick
 * eventfd, serves the ring and writes the call eventfd on its own thread.
 */
import { startModuleWorker } from '../node/device-worker.js';
import type { DataPlane, PlaneCounters, PlaneHost, RingStart } from './data-plane.js';
import { servedQueueSizes, signalError } from './ring-state.js';
import {
  C_CALLS,
  C_KICKS,
  C_LOGGED_PAGES,
  C_POLL_TURNS,
  C_POLLS,
  C_RESUBMITTED,
  CONTROL_WORDS,
  type RingLog,
  type RingWorkerData,
  RingWorkerHandle,
} from './ring-worker-protocol.js';

/** How the workers are built. */
export interface WorkerSpec {
  /** The device each worker builds (a DeviceWorkerSpec of virtq/node). */
  readonly spec: unknown;
  /** Drop the workers' warnings. */
  readonly quiet: boolean;
  /** How long a stop may wait for a worker before the ring is given up as lost. */
  readonly ackTimeoutMs: number;
  /** Polling mode in each worker (microseconds; 0: kicks only). */
  readonly pollIdleMicros: number;
}

export class WorkerPlane implements DataPlane {
  readonly waitsOnKicks = true;
  // A worker holds the ring's eventfds; it moves to a new error eventfd by a restart.
  readonly restartsForErrFd = true;
  // The back-end's device only answers negotiation and configuration; the workers' devices
  // are activated and reset with their rings.
  readonly deviceActive = false;
  /** One worker per ring (null: not started yet, or gone). */
  private readonly workers: (RingWorkerHandle | null)[];

  constructor(
    private readonly host: PlaneHost,
    private readonly spec: WorkerSpec,
  ) {
    this.workers = servedQueueSizes(host.device).map(() => null);
  }

  connected(): void {
    // Workers load while the front-end negotiates.
    for (let i = 0; i < this.workers.length; i++) this.worker(i);
  }

  start(s: RingStart): void {
    const region = s.tracking?.region ?? null;
    this.worker(s.index).start({
      type: 'start',
      features: s.features,
      regions: s.table.regions.map((r) => ({
        base: r.guestPhysAddr,
        length: r.size,
        buffer: r.buffer,
        offset: r.offset,
      })),
      queue: s.queue.save(),
      inflight:
        region === null
          ? null
          : { buffer: region.buffer, offset: region.offset, size: 0, descNum: region.descNum },
      kickFd: s.ring.kickFd,
      callFd: s.ring.callFd,
      errFd: s.ring.errFd,
      log: s.log,
      pollIdleMicros: this.spec.pollIdleMicros,
    });
  }

  stop(index: number): number | null {
    const ring = this.host.ring(index)!;
    const w = this.workers[index];
    if (w === null || w === undefined) return null;
    try {
      return w.stop() ?? ring.base;
    } catch (e) {
      // A worker that does not answer is terminated; where its ring stopped is unknown.
      this.host.logger.warn('vhost-user: a ring worker did not stop', {
        index,
        error: (e as Error).message,
      });
      this.workers[index] = null;
      // The ring's eventfds stay open until the terminated worker is gone (closeAfterExit).
      const fds = [ring.kickFd, ring.callFd, ring.errFd].filter((fd) => fd !== null);
      ring.kickWatcher?.stop();
      ring.kickWatcher = null;
      ring.kickFd = null;
      ring.callFd = null;
      ring.errFd = null;
      w.closeAfterExit(fds, (fd) => this.host.closeFds([fd]));
      return null;
    }
  }

  stopped(): void {}

  kicked(): boolean {
    // The ring's worker waits on its kick eventfd itself.
    return false;
  }

  callChanged(index: number, fd: number | null): void {
    this.workers[index]?.setCall(fd);
  }

  logChanged(index: number, log: RingLog): void {
    this.workers[index]?.setLog(log);
  }

  memoryChanged(): void {}

  resetDevice(): void {}

  addStats(s: PlaneCounters): void {
    for (const w of this.workers) {
      if (w === null) continue;
      s.kicks += w.counter(C_KICKS);
      s.calls += w.counter(C_CALLS);
      s.resubmitted += w.counter(C_RESUBMITTED);
      s.loggedPages += w.counter(C_LOGGED_PAGES);
      s.polls += w.counter(C_POLLS);
      s.pollTurns += w.counter(C_POLL_TURNS);
    }
  }

  close(): void {
    for (let i = 0; i < this.workers.length; i++) {
      void this.workers[i]?.terminate();
      this.workers[i] = null;
    }
  }

  /** The worker of ring `index`, started if need be. */
  private worker(index: number): RingWorkerHandle {
    const existing = this.workers[index];
    if (existing !== null && existing !== undefined) return existing;
    const host = this.host;
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    const control = new SharedArrayBuffer(CONTROL_WORDS * 4);
    const data: RingWorkerData = { spec: this.spec.spec, index, control, quiet: this.spec.quiet };
    const worker = startModuleWorker(new URL(`./ring-worker-main${ext}`, import.meta.url), {
      workerData: data,
      name: `virtq vhost-user ring ${index}`,
    });
    const handle = new RingWorkerHandle(worker, control, this.spec.ackTimeoutMs);
    worker.on('error', (e) => {
      host.logger.warn('vhost-user: a ring worker failed', { index, error: e.message });
    });
    worker.on('exit', () => {
      if (this.workers[index] !== handle) return;
      this.workers[index] = null;
      const ring = host.ring(index);
      if (ring?.running === true) {
        host.logger.warn('vhost-user: the worker of a running ring exited', { index });
        ring.running = false;
        ring.lost = true;
        // The guest would otherwise wait for the ring for ever.
        signalError(host.native, ring.errFd, host.logger);
      }
    });
    // The back-end's own thread must not wait for workers to end.
    worker.unref();
    this.workers[index] = handle;
    return handle;
  }
}
