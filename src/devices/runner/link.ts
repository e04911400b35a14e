import { requireSharedArrayBuffer } from '../../errors.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { DevicePort, FromWorker, HostTuning, InitMessage, ReadyMessage } from './protocol.js';
import { H_DOORBELL, H_STOP } from './protocol.js';
import { DeviceWorkerError, WorkerDeviceProxy, type WorkerDeviceProxyOptions } from './proxy.js';

export interface DeviceWorkerLinkOptions extends WorkerDeviceProxyOptions {
  /** How the worker loop sleeps (sent to the worker). */
  host?: HostTuning;
  /** Longest wait for the worker to build its devices (ms, default 30000). */
  startTimeoutMs?: number;
  /** Called with each failure the worker reports (device index, or -1 for the whole worker). */
  onError?: (device: number, error: DeviceWorkerError) => void;
}

/**
 * The emulator side of one device worker: sends it guest memory and what to build, and gives
 * one {@link WorkerDeviceProxy} per device it built, to put behind transports.
 */
export class DeviceWorkerLink {
  readonly devices: readonly WorkerDeviceProxy[];
  private readonly header: Int32Array;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  private nextQuery = 1;
  private stoppedResolve: (() => void) | null = null;
  private readonly stoppedPromise: Promise<void>;
  private readonly unsubscribe: () => void;
  private readonly onError: ((device: number, error: DeviceWorkerError) => void) | undefined;
  /** Set when the worker as a whole failed. */
  failure: DeviceWorkerError | null = null;

  private constructor(
    private readonly port: DevicePort,
    ready: ReadyMessage,
    memory: GuestMemory,
    options: DeviceWorkerLinkOptions,
  ) {
    this.header = new Int32Array(ready.header);
    this.devices = ready.devices.map(
      (d) => new WorkerDeviceProxy(d, ready.header, memory, options),
    );
    this.onError = options.onError;
    this.stoppedPromise = new Promise((resolve) => {
      this.stoppedResolve = resolve;
    });
    this.unsubscribe = port.onMessage((data) => this.receive(data as FromWorker));
  }

  /**
   * Starts serving: sends `spec` (what to build, for the worker's factory) and the shared
   * description of `memory` (every region must be a SharedArrayBuffer), and resolves once the
   * worker built its devices and runs its loop.
   */
  static connect(
    port: DevicePort,
    memory: GuestMemory,
    spec: unknown,
    options: DeviceWorkerLinkOptions = {},
  ): Promise<DeviceWorkerLink> {
    try {
      requireSharedArrayBuffer('DeviceWorkerLink.connect');
    } catch (e) {
      return Promise.reject(e);
    }
    const init: InitMessage = { type: 'init', memory: memory.toShared(), spec };
    if (options.host !== undefined) init.host = options.host;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(
          new DeviceWorkerError(
            `device worker did not start within ${options.startTimeoutMs ?? 30000} ms`,
          ),
        );
      }, options.startTimeoutMs ?? 30000);
      const off = port.onMessage((data) => {
        const m = data as FromWorker;
        if (m.type === 'ready') {
          clearTimeout(timer);
          off();
          resolve(new DeviceWorkerLink(port, m, memory, options));
        } else if (m.type === 'error') {
          clearTimeout(timer);
          off();
          reject(new DeviceWorkerError(`device worker failed to start: ${m.message}`));
        }
      });
      port.postMessage(init);
    });
  }

  private receive(m: FromWorker): void {
    switch (m.type) {
      case 'error': {
        const error = new DeviceWorkerError(`device worker: ${m.message}`);
        if (m.device >= 0) this.devices[m.device]?.markDead(error);
        else this.workerFailed(error);
        this.onError?.(m.device, error);
        return;
      }
      case 'reply': {
        const p = this.pending.get(m.id);
        if (p === undefined) return;
        this.pending.delete(m.id);
        if (m.error !== undefined) p.reject(new DeviceWorkerError(m.error));
        else p.resolve(m.state ?? null);
        return;
      }
      case 'stopped':
        this.finish();
        return;
      default:
    }
  }

  /** The saved state (`save()`) of device `index` as its worker sees it: counters, queues. */
  query(index: number): Promise<unknown> {
    if (this.failure !== null) return Promise.reject(this.failure);
    const id = this.nextQuery++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.port.postMessage({ type: 'query', id, device: index });
    });
  }

  /** The worker failed or exited: every device is dead, every pending query rejects. */
  workerFailed(error: DeviceWorkerError): void {
    if (this.failure === null) this.failure = error;
    for (const d of this.devices) d.markDead(error);
    this.finish();
  }

  /** Asks the worker loop to stop and resolves when it did (or after `timeoutMs`). */
  async stop(timeoutMs = 5000): Promise<void> {
    for (const d of this.devices) d.detach();
    Atomics.store(this.header, H_STOP, 1);
    Atomics.add(this.header, H_DOORBELL, 1);
    Atomics.notify(this.header, H_DOORBELL);
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.stoppedPromise,
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, timeoutMs);
      }),
    ]);
    clearTimeout(timer);
    this.finish();
  }

  private finish(): void {
    for (const d of this.devices) d.detach();
    for (const p of this.pending.values())
      p.reject(this.failure ?? new DeviceWorkerError('device worker stopped'));
    this.pending.clear();
    this.unsubscribe();
    this.stoppedResolve?.();
  }
}
