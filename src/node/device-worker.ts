import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { DeviceWorkerLink, type DeviceWorkerLinkOptions } from '../devices/runner/link.js';
import type { DevicePort } from '../devices/runner/protocol.js';
import { DeviceWorkerError, type WorkerDeviceProxy } from '../devices/runner/proxy.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { DeviceWorkerSpec } from './device-factories.js';

/** Adapts a Node `Worker` or `MessagePort` (EventEmitter style) to a {@link DevicePort}. */
export function nodePort(target: {
  postMessage(message: unknown): void;
  on(event: 'message', listener: (data: unknown) => void): unknown;
  off(event: 'message', listener: (data: unknown) => void): unknown;
}): DevicePort {
  return {
    postMessage: (m) => target.postMessage(m),
    onMessage(handler) {
      const listener = (data: unknown) => handler(data);
      target.on('message', listener);
      return () => {
        target.off('message', listener);
      };
    },
  };
}

/**
 * Starts a worker thread on a module next to this one. From the compiled package that is a
 * plain `.js` module; from the TypeScript sources (tests, benchmarks, `tsx`) the worker first
 * registers tsx, because a worker cannot load `.ts` through `--import tsx` on Node 20.
 */
export function startModuleWorker(
  module: URL,
  options: { workerData?: unknown; name?: string } = {},
): Worker {
  const workerOptions = {
    workerData: options.workerData,
    ...(options.name !== undefined ? { name: options.name } : {}),
  };
  if (!module.pathname.endsWith('.ts')) return new Worker(module, workerOptions);
  const require = createRequire(import.meta.url);
  const tsxPackage = require.resolve('tsx/package.json');
  const tsxApi = pathToFileURL(tsxPackage.replace(/package\.json$/, 'dist/esm/api/index.mjs')).href;
  const bootstrap =
    `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); ` +
    `return import(${JSON.stringify(module.href)}); });`;
  return new Worker(bootstrap, { ...workerOptions, eval: true });
}

/** The worker entry module, in the same form (.ts or .js) as this module. */
function entryModule(): URL {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./device-worker-main${ext}`, import.meta.url);
}

export interface SpawnDeviceWorkerOptions extends DeviceWorkerLinkOptions {
  /** Thread name shown in debuggers and heap snapshots. */
  name?: string;
}

/**
 * A Node worker thread serving one or more devices, and the proxies that stand in for them on
 * this thread (put each behind an `MmioTransport` over the same guest memory).
 */
interface WorkerState {
  closed: boolean;
  exited: boolean;
  link: DeviceWorkerLink | null;
  early: ((e: Error) => void) | null;
}

export class NodeDeviceWorker {
  private constructor(
    readonly worker: Worker,
    readonly link: DeviceWorkerLink,
    private readonly state: WorkerState,
  ) {}

  /** One proxy per device the worker built, in order. */
  get devices(): readonly WorkerDeviceProxy[] {
    return this.link.devices;
  }

  /**
   * Spawns a worker that builds the devices `spec` names (see {@link DeviceWorkerSpec}) and
   * serves them over `memory`, which must be backed by SharedArrayBuffers
   * (`GuestMemory.create(size, { shared: true })`). Resolves once the devices are ready; a
   * worker that crashes or exits later marks its devices dead (they read DEVICE_NEEDS_RESET
   * and their waiters reject).
   */
  static async spawn(
    spec: DeviceWorkerSpec,
    memory: GuestMemory,
    options: SpawnDeviceWorkerOptions = {},
  ): Promise<NodeDeviceWorker> {
    memory.toShared(); // throws a TypeError now, before a thread starts, if memory is not shared
    const worker = startModuleWorker(
      entryModule(),
      options.name !== undefined ? { name: options.name } : {},
    );
    const state: WorkerState = { closed: false, exited: false, link: null, early: null };
    const dead = (e: DeviceWorkerError): void => {
      if (state.link !== null) state.link.workerFailed(e);
      else state.early?.(e);
    };
    worker.on('error', (e: Error) =>
      dead(new DeviceWorkerError(`device worker crashed: ${e.message}`, { cause: e })),
    );
    worker.on('exit', (code) => {
      state.exited = true;
      if (!state.closed) dead(new DeviceWorkerError(`device worker exited (code ${code})`));
    });
    try {
      state.link = await new Promise<DeviceWorkerLink>((resolve, reject) => {
        state.early = reject;
        DeviceWorkerLink.connect(nodePort(worker), memory, spec, options).then(resolve, reject);
      });
    } catch (e) {
      state.closed = true;
      await worker.terminate();
      throw e;
    }
    return new NodeDeviceWorker(worker, state.link, state);
  }

  /** The saved state of device `index` as the worker sees it (its counters and queues). */
  query(index: number): Promise<unknown> {
    return this.link.query(index);
  }

  /** Stops the worker loop, then the thread. Safe to call twice. */
  async close(): Promise<void> {
    if (this.state.closed) return;
    this.state.closed = true;
    if (this.link.failure === null && !this.state.exited) await this.link.stop(1000);
    await this.worker.terminate();
  }
}
