import { MemoryBackend } from '../devices/block/backend.js';
import type { BlockOptions } from '../devices/block/config.js';
import { BlockDevice } from '../devices/block/device.js';
import type { ConsoleBackend, ConsolePort } from '../devices/console/backend.js';
import { ConsoleDevice, type ConsoleOptions } from '../devices/console/device.js';
import type { VirtioDevice } from '../devices/device.js';
import { createNetPair } from '../devices/net/backend.js';
import { NetDevice } from '../devices/net/device.js';
import { RngDevice, type RngOptions } from '../devices/rng/index.js';
import { silentLogger } from '../queue/logger.js';
import { FileBackend } from './file-backend.js';

/**
 * What a device worker started by `NodeDeviceWorker.spawn` builds. Everything in a spec
 * crosses threads by structured clone: numbers, strings, SharedArrayBuffers.
 *
 * - `rng`: a {@link RngDevice} drawing from Web Crypto.
 * - `block`: a {@link BlockDevice} over a disk image in a SharedArrayBuffer (`image`, a
 *   MemoryBackend: the emulator thread sees the same bytes) or in a file (`file`, a
 *   FileBackend opened in the worker).
 * - `console`: a {@link ConsoleDevice}; with `echo`, a backend that sends every byte the guest
 *   writes back to it as input (with back-pressure: nothing is dropped).
 * - `net-pair`: two {@link NetDevice}s joined by an in-process cable (`createNetPair`), with
 *   MACs `macs` (default 52:54:00:00:00:01 and :02).
 * - `module`: any device: the worker imports `module` (a URL or absolute path) and calls its
 *   export `export` (default `default`) with `options`; it returns one device or several.
 * - `group`: several specs served by the same worker (one thread, one loop).
 */
export type DeviceWorkerSpec =
  | { kind: 'rng'; queueSize?: number; maxBytesPerRequest?: number }
  | {
      kind: 'block';
      image?: SharedArrayBuffer;
      file?: string;
      readOnly?: boolean;
      queueSize?: number;
      numQueues?: number;
      id?: string;
      /** Drop backend failure reports instead of printing them. */
      quiet?: boolean;
    }
  | { kind: 'console'; echo?: boolean; queueSize?: number; cols?: number; rows?: number }
  | { kind: 'net-pair'; macs?: [string, string]; queueSize?: number; mtu?: number }
  | { kind: 'module'; module: string; export?: string; options?: unknown }
  | { kind: 'group'; devices: DeviceWorkerSpec[] };

function asObject(spec: unknown): Record<string, unknown> {
  if (typeof spec !== 'object' || spec === null)
    throw new TypeError('a device spec must be an object');
  return spec as Record<string, unknown>;
}

/** Builds the devices a spec describes (in the worker that will serve them). */
export async function buildDevices(spec: unknown): Promise<VirtioDevice[]> {
  const s = asObject(spec);
  switch (s.kind) {
    case 'rng': {
      const o: RngOptions = {};
      if (typeof s.queueSize === 'number') o.queueSize = s.queueSize;
      if (typeof s.maxBytesPerRequest === 'number') o.maxBytesPerRequest = s.maxBytesPerRequest;
      return [new RngDevice(o)];
    }
    case 'block':
      return [buildBlock(s)];
    case 'console':
      return [buildConsole(s)];
    case 'net-pair': {
      const [a, b] = createNetPair();
      const macs = Array.isArray(s.macs)
        ? (s.macs as string[])
        : ['52:54:00:00:00:01', '52:54:00:00:00:02'];
      const common = {
        ...(typeof s.queueSize === 'number' ? { queueSize: s.queueSize } : {}),
        ...(typeof s.mtu === 'number' ? { mtu: s.mtu } : {}),
      };
      return [
        new NetDevice({ backend: a, mac: macs[0] ?? null, ...common }),
        new NetDevice({ backend: b, mac: macs[1] ?? null, ...common }),
      ];
    }
    case 'module': {
      if (typeof s.module !== 'string') throw new TypeError('a module spec needs a module URL');
      const url = s.module.startsWith('/') ? `file://${s.module}` : s.module;
      const mod = (await import(url)) as Record<string, unknown>;
      const name = typeof s.export === 'string' ? s.export : 'default';
      const make = mod[name];
      if (typeof make !== 'function')
        throw new TypeError(`${s.module} has no function export "${name}"`);
      const built = (await (make as (o: unknown) => unknown)(s.options)) as
        | VirtioDevice
        | VirtioDevice[];
      return Array.isArray(built) ? built : [built];
    }
    case 'group': {
      if (!Array.isArray(s.devices)) throw new TypeError('a group spec needs a devices array');
      const all: VirtioDevice[] = [];
      for (const d of s.devices) all.push(...(await buildDevices(d)));
      return all;
    }
    default:
      throw new TypeError(`unknown device kind ${JSON.stringify(s.kind)}`);
  }
}

function buildBlock(s: Record<string, unknown>): BlockDevice {
  const readOnly = s.readOnly === true;
  let backend: BlockOptions['backend'];
  if (s.image instanceof SharedArrayBuffer)
    backend = new MemoryBackend(new Uint8Array(s.image), { readOnly });
  else if (typeof s.file === 'string') backend = FileBackend.open(s.file, { readOnly });
  else throw new TypeError('a block spec needs an image (SharedArrayBuffer) or a file path');
  const o: BlockOptions = { backend };
  if (typeof s.queueSize === 'number') o.queueSize = s.queueSize;
  if (typeof s.numQueues === 'number') o.numQueues = s.numQueues;
  if (typeof s.id === 'string') o.id = s.id;
  if (s.quiet === true) o.logger = silentLogger;
  return new BlockDevice(o);
}

/** Sends the guest's output back as its input; pauses the output while the input is full. */
class EchoConsoleBackend implements ConsoleBackend {
  private port: ConsolePort | null = null;
  private blocked = false;

  attach(port: ConsolePort): void {
    this.port = port;
  }

  detach(port: ConsolePort): void {
    if (this.port === port) this.port = null;
  }

  output(bytes: Uint8Array): boolean {
    if (this.port === null) return true;
    // The device copies the input before returning.
    if (this.port.input(bytes)) return true;
    this.blocked = true;
    return false;
  }

  inputDrained(): void {
    if (!this.blocked) return;
    this.blocked = false;
    this.port?.outputReady();
  }
}

function buildConsole(s: Record<string, unknown>): ConsoleDevice {
  const o: ConsoleOptions = {};
  if (s.echo === true) o.backend = new EchoConsoleBackend();
  if (typeof s.queueSize === 'number') o.queueSize = s.queueSize;
  if (typeof s.cols === 'number' && typeof s.rows === 'number')
    o.size = { cols: s.cols, rows: s.rows };
  return new ConsoleDevice(o);
}
