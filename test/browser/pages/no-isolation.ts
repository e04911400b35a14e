/**
 * A page that is not cross-origin isolated, so the browser withholds SharedArrayBuffer: what
 * a user gets from each API that needs shared memory, and that unshared memory still works.
 */
import {
  DeviceHost,
  DeviceWorkerLink,
  eventTargetPort,
  GuestMemory,
  RngDevice,
  SharedMemoryUnavailableError,
} from 'virtq';

function outcome(f: () => unknown): unknown {
  try {
    f();
    return 'no error';
  } catch (e) {
    return describe(e);
  }
}

function describe(e: unknown): unknown {
  if (!(e instanceof Error)) return String(e);
  return {
    name: e.name,
    code: (e as { code?: unknown }).code,
    message: e.message,
    typed: e instanceof SharedMemoryUnavailableError,
  };
}

export default async function run(): Promise<unknown> {
  const plain = GuestMemory.create(1 << 20);
  plain.writeU32(0x100, 0xfeedf00d);
  const worker = new Worker(new URL('./device-worker.js', import.meta.url), { type: 'module' });
  let link: unknown;
  try {
    await DeviceWorkerLink.connect(eventTargetPort(worker), plain, {});
    link = 'no error';
  } catch (e) {
    link = describe(e);
  } finally {
    worker.terminate();
  }
  return {
    crossOriginIsolated,
    sharedArrayBuffer: typeof SharedArrayBuffer,
    memory: outcome(() => GuestMemory.create(1 << 20, { shared: true })),
    host: outcome(() => new DeviceHost([new RngDevice()], plain)),
    link,
    plainMemoryWorks: plain.readU32(0x100) === 0xfeedf00d,
  };
}
