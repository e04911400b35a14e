import { GuestMemory } from '../../memory/guest-memory.js';
import { consoleLogger, type Logger, silentLogger } from '../../queue/logger.js';
import type { VirtioDevice } from '../device.js';
import { DeviceHost } from './host.js';
import type {
  DevicePort,
  ErrorMessage,
  InitMessage,
  QueryMessage,
  ReplyMessage,
} from './protocol.js';

/** Builds the devices a worker serves from the `spec` the emulator side sent. */
export type DeviceFactory = (
  spec: unknown,
) => VirtioDevice | VirtioDevice[] | Promise<VirtioDevice | VirtioDevice[]>;

export interface RunDeviceWorkerOptions {
  /** How to give the event loop a turn (default: a zero-delay timer). */
  yieldToEventLoop?: () => Promise<void>;
  /** Where the rebuilt queues report odd driver behaviour (default: per the init message). */
  logger?: Logger;
}

function errorMessage(device: number, e: unknown): ErrorMessage {
  const m: ErrorMessage = {
    type: 'error',
    device,
    message: e instanceof Error ? `${e.name}: ${e.message}` : String(e),
  };
  if (e instanceof Error && e.stack !== undefined) m.stack = e.stack;
  return m;
}

/**
 * The body of a device worker: waits for the emulator's init message, builds the devices with
 * `factory`, answers with their descriptions and serves them ({@link DeviceHost}) until asked
 * to stop. Failures are posted as error messages. Works in any worker that has a
 * {@link DevicePort}: `parentPort` of a Node worker_thread, `self` of a Web Worker.
 */
export function runDeviceWorker(
  port: DevicePort,
  factory: DeviceFactory,
  options: RunDeviceWorkerOptions = {},
): void {
  let host: DeviceHost | null = null;
  let started = false;
  const start = async (m: InitMessage): Promise<void> => {
    const memory = GuestMemory.fromShared(m.memory);
    const built = await factory(m.spec);
    const devices = Array.isArray(built) ? built : [built];
    const h = new DeviceHost(devices, memory, {
      ...m.host,
      ...(options.yieldToEventLoop !== undefined
        ? { yieldToEventLoop: options.yieldToEventLoop }
        : {}),
      logger: options.logger ?? (m.host?.logging === 'silent' ? silentLogger : consoleLogger),
      onError: (device, error) => port.postMessage(errorMessage(device, error)),
    });
    host = h;
    port.postMessage({ type: 'ready', header: h.header, devices: h.describe() });
    await h.run();
    port.postMessage({ type: 'stopped' });
  };
  const query = (m: QueryMessage): void => {
    const reply: ReplyMessage = { type: 'reply', id: m.id };
    try {
      const d = host?.device(m.device) as (VirtioDevice & { save?: () => unknown }) | undefined;
      if (d === undefined) reply.error = `no device ${m.device}`;
      else reply.state = d.save !== undefined ? d.save() : null;
    } catch (e) {
      reply.error = e instanceof Error ? e.message : String(e);
    }
    port.postMessage(reply);
  };
  port.onMessage((data) => {
    const m = data as InitMessage | QueryMessage;
    if (m.type === 'init' && !started) {
      started = true;
      start(m).catch((e: unknown) => {
        host?.failAll(e);
        port.postMessage(errorMessage(-1, e));
      });
    } else if (m.type === 'query') {
      query(m);
    }
  });
}
