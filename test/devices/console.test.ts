import { PassThrough, Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import {
  CONSOLE_CONFIG_EMERG_WR,
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleOptions,
  ConsolePipe,
  VIRTIO_CONSOLE_F_EMERG_WRITE,
  VIRTIO_CONSOLE_F_MULTIPORT,
  VIRTIO_CONSOLE_F_SIZE,
} from '../../src/devices/console/index.js';
import {
  featureBit,
  STATUS_DEVICE_NEEDS_RESET,
  VIRTIO_ID_CONSOLE,
} from '../../src/devices/device.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { type ConsoleDriverOptions, ConsoleGuestDriver } from '../../src/driver/devices/console.js';
import type { InterruptWaiter } from '../../src/driver/devices/waiter.js';
import { FeaturesRefusedError, type MmioGuestDriver } from '../../src/driver/mmio.js';
import { GuestMemory } from '../../src/memory/index.js';
import { ConsoleStreamBackend } from '../../src/node/index.js';
import { silentLogger } from '../../src/queue/index.js';
import { INT_CONFIG_CHANGE, MMIO, MmioTransport } from '../../src/transport/mmio.js';
import { RINGS, World, WorldBus } from './net-rig.js';

const SIZE = featureBit(VIRTIO_CONSOLE_F_SIZE);
const EMERG = featureBit(VIRTIO_CONSOLE_F_EMERG_WRITE);

function consoleRig(world: World, device: ConsoleOptions = {}, driver: ConsoleDriverOptions = {}) {
  const memory = GuestMemory.create(1 << 20);
  const backend = device.backend ?? new ConsolePipe();
  const options: ConsoleOptions = { queueSize: 32, ...device, backend };
  const dev = new ConsoleDevice(options);
  const transport = new MmioTransport(dev, memory, { logger: silentLogger });
  const bus = new WorldBus(world, transport);
  world.pairs.push({ driver: memory, device: memory });
  const guest = new ConsoleGuestDriver(
    bus,
    memory,
    new GuestAllocator(memory, 0x1000, memory.size),
    driver,
  );
  return { memory, backend, device: dev, transport, bus, guest, options };
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytes = (n: number, seed = 0) =>
  Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

describe.each(RINGS)('virtio-console over $name', (ring) => {
  const F = ring.features | SIZE | EMERG;

  it('carries bytes both ways through the in-memory pipe', async () => {
    const r = consoleRig(new World(), { size: { cols: 80, rows: 25 } });
    const pipe = r.backend as ConsolePipe;
    r.guest.init(F);
    expect(r.transport.read(MMIO.DEVICE_ID, 4)).toBe(VIRTIO_ID_CONSOLE);
    await r.guest.write('hello, host\n');
    expect(text(pipe.takeOutput())).toBe('hello, host\n');
    const big = bytes(5000, 3);
    await r.guest.write(big);
    await r.guest.flush();
    expect(pipe.takeOutput()).toEqual(big);
    expect(pipe.push('hello, guest')).toBe(true);
    expect(text(await r.guest.read())).toBe('hello, guest');
    const input = bytes(3000, 9);
    pipe.push(input);
    expect(await r.guest.readExactly(3000)).toEqual(input);
    expect(r.device.stats).toMatchObject({ bytesOut: 12 + 5000, bytesIn: 12 + 3000 });
  });

  it('input waits in the device until the guest posts receive buffers: nothing lost', async () => {
    const r = consoleRig(
      new World(),
      { inputHighWater: 4096 },
      { postRxBuffers: false, rxBuffers: 8, rxBufferSize: 100 },
    );
    const pipe = r.backend as ConsolePipe;
    let drained = 0;
    pipe.onDrain = () => drained++;
    pipe.push('early bytes '); // before the driver even started
    r.guest.init(F);
    const input = bytes(10000, 1);
    expect(pipe.push(input)).toBe(false); // over the high-water mark: slow down
    expect(r.device.pendingInput).toBe(12 + 10000);
    r.guest.postRx(2);
    const got: Uint8Array[] = [];
    let total = 0;
    while (total < 10012) {
      const b = await r.guest.read();
      got.push(b);
      total += b.length;
    }
    const all = new Uint8Array(total);
    let at = 0;
    for (const g of got) {
      all.set(g, at);
      at += g.length;
    }
    expect(text(all.subarray(0, 12))).toBe('early bytes ');
    expect(all.subarray(12)).toEqual(input);
    expect(drained).toBe(1);
    expect(r.device.pendingInput).toBe(0);
  });

  it('output back-pressure: the device stops reading the transmitq while the backend is paused', async () => {
    const r = consoleRig(new World());
    const pipe = r.backend as ConsolePipe;
    r.guest.init(F);
    pipe.pauseOutput();
    expect(r.guest.tryWrite(bytes(4096))).toBe(4096); // four 1 KiB chains
    expect(pipe.takeOutput().length).toBe(1024); // the first chain, then the device waits
    expect(r.device.stats.bytesOut).toBe(1024);
    pipe.resumeOutput();
    expect(pipe.takeOutput()).toEqual(bytes(4096).subarray(1024));
    await r.guest.flush();
    expect(r.guest.txPending).toBe(0);
  });

  it('reports the console size, and a resize with a configuration interrupt', () => {
    const r = consoleRig(new World(), { size: { cols: 132, rows: 43 } });
    r.guest.init(F);
    expect([r.guest.cols, r.guest.rows]).toEqual([132, 43]);
    r.device.resize(100, 30);
    expect(r.transport.interruptStatus & INT_CONFIG_CHANGE).not.toBe(0);
    r.guest.handleInterrupt();
    expect([r.guest.cols, r.guest.rows]).toEqual([100, 30]);
    expect(r.guest.configChanges).toBe(1);
    // Without VIRTIO_CONSOLE_F_SIZE offered there is no size to change.
    const plain = consoleRig(new World());
    expect(plain.device.offeredFeatures & SIZE).toBe(0n);
    expect(() => plain.device.resize(1, 1)).toThrow(TypeError);
  });

  it('emergency writes reach the backend, even before the driver configured the device', () => {
    const r = consoleRig(new World());
    const pipe = r.backend as ConsolePipe;
    r.transport.write(MMIO.CONFIG + CONSOLE_CONFIG_EMERG_WR, 4, 0x4121); // lower byte: '!'
    r.guest.init(F);
    r.guest.emergencyWrite(0x3f);
    expect(text(pipe.takeOutput())).toBe('!?');
    expect(r.device.stats.emergencyBytes).toBe(2);
    // A write of the whole configuration space (vhost-user SET_CONFIG) covers emerg_wr too;
    // one that ends before it or starts after its first byte writes nothing.
    const whole = new Uint8Array(12);
    whole[CONSOLE_CONFIG_EMERG_WR] = 0x2a; // '*'
    r.device.writeConfig(0, whole);
    r.device.writeConfig(0, whole.subarray(0, CONSOLE_CONFIG_EMERG_WR));
    r.device.writeConfig(CONSOLE_CONFIG_EMERG_WR + 1, Uint8Array.of(0x41));
    expect(text(pipe.takeOutput())).toBe('*');
    expect(r.device.stats.emergencyBytes).toBe(3);
    const off = consoleRig(new World(), { emergencyWrite: false });
    off.transport.write(MMIO.CONFIG + CONSOLE_CONFIG_EMERG_WR, 4, 0x41);
    expect((off.backend as ConsolePipe).takeOutput().length).toBe(0);
  });

  it('refuses MULTIPORT (not offered) and accepts the rest', () => {
    const r = consoleRig(new World(), { size: { cols: 1, rows: 1 } });
    expect(() => r.guest.init(0n, ring.features | featureBit(VIRTIO_CONSOLE_F_MULTIPORT))).toThrow(
      FeaturesRefusedError,
    );
    expect(r.guest.init(F) & (SIZE | EMERG)).toBe(SIZE | EMERG);
  });

  it('returns unsupported chains (readable receive buffer, writable transmit buffer) and carries on', async () => {
    const r = consoleRig(new World(), {}, { postRxBuffers: false });
    const pipe = r.backend as ConsolePipe;
    r.guest.init(F);
    const m: MmioGuestDriver = r.guest.mmio;
    const rx = m.queues[0]!;
    const tx = m.queues[1]!;
    pipe.push('x');
    rx.add([{ addr: 0x80000, len: 16 }], []);
    m.kick(0);
    expect(rx.popUsed()).toBeGreaterThanOrEqual(0);
    expect(rx.lastUsedLen).toBe(0);
    expect(r.device.stats.rxBadBuffers).toBe(1);
    tx.add([{ addr: 0x80000, len: 4 }], [{ addr: 0x80100, len: 4 }]);
    m.kick(1);
    expect(tx.popUsed()).toBeGreaterThanOrEqual(0);
    expect(r.device.stats.txUnsupported).toBe(1);
    expect(r.device.lastTxUnsupported).toBe('writable-descriptors');
    expect(pipe.takeOutput().length).toBe(0);
    expect(r.transport.status & STATUS_DEVICE_NEEDS_RESET).toBe(0);
    r.guest.postRx();
    expect(text(await r.guest.read())).toBe('x');
  });

  it('reset in the middle of I/O: pending input survives, the device works after', async () => {
    const r = consoleRig(new World(), {}, { postRxBuffers: false });
    const pipe = r.backend as ConsolePipe;
    r.guest.init(F);
    pipe.push('before reset');
    r.guest.tryWrite(new TextEncoder().encode('out'));
    r.guest.reset();
    expect(r.transport.status).toBe(0);
    expect(r.device.pendingInput).toBe(12);
    r.guest.init(F);
    r.guest.postRx();
    expect(text(await r.guest.read())).toBe('before reset');
    await r.guest.write('after');
    expect(text(pipe.takeOutput())).toBe('outafter');
  });

  it('snapshot in the middle of I/O: pending input is saved, delivered once after restore', async () => {
    const world = new World();
    const r = consoleRig(
      world,
      { size: { cols: 10, rows: 20 } },
      { postRxBuffers: false, rxBufferSize: 16 },
    );
    const pipe = r.backend as ConsolePipe;
    r.guest.init(F);
    const input = bytes(300, 5);
    pipe.push(input);
    r.guest.postRx(4); // 64 bytes delivered before the snapshot
    expect(r.device.pendingInput).toBe(236);
    const state = JSON.parse(JSON.stringify(r.transport.save()));
    r.device.detach();
    const copy = GuestMemory.create(r.memory.size);
    copy.write(0, r.memory.slice(0, r.memory.size));
    const pipe2 = new ConsolePipe();
    const dev2 = new ConsoleDevice({ ...r.options, backend: pipe2 });
    const t2 = new MmioTransport(dev2, copy, { logger: silentLogger });
    t2.restore(state);
    world.pairs[0]!.device = copy;
    r.bus.transport = t2;
    expect(dev2.pendingInput).toBe(236);
    expect([dev2.cols, dev2.rows]).toEqual([10, 20]);
    world.run(() => dev2.kick());
    expect(await r.guest.readExactly(300)).toEqual(input);
    pipe.push('lost: the old device is detached');
    // Host-side input reaches the device outside any bus access: run it in the world too.
    world.run(() => pipe2.push('!'));
    expect(text(await r.guest.read())).toBe('!');
    await r.guest.write('bye');
    expect(text(pipe2.takeOutput())).toBe('bye');
  });
});

describe('virtio-console over Node streams', () => {
  const eventLoop: InterruptWaiter = {
    wait: () => new Promise((resolve) => setImmediate(resolve)),
  };

  it('echoes: the output stream piped back into the input stream', async () => {
    const loop = new PassThrough();
    const world = new World();
    const backend: ConsoleBackend = new ConsoleStreamBackend(loop, loop);
    const r = consoleRig(world, { backend }, { waiter: eventLoop, maxWaits: 5000 });
    r.guest.init(RINGS[1]!.features);
    const msg = bytes(20000, 11);
    const reading = r.guest.readExactly(msg.length);
    await r.guest.write(msg);
    expect(await reading).toEqual(msg);
    r.device.detach();
  });

  it('applies back-pressure to a slow writable and a fast readable, losing nothing', async () => {
    const chunks: Buffer[] = [];
    const slow = new Writable({
      highWaterMark: 256,
      write(chunk: Buffer, _enc, cb) {
        chunks.push(chunk);
        setImmediate(cb);
      },
    });
    const input = new PassThrough();
    const world = new World();
    const r = consoleRig(
      world,
      { backend: new ConsoleStreamBackend(input, slow), inputHighWater: 512 },
      { waiter: eventLoop, maxWaits: 5000, postRxBuffers: false },
    );
    r.guest.init(RINGS[2]!.features);
    const out = bytes(3000, 2);
    expect(r.guest.tryWrite(out)).toBe(3000); // three chains
    // The first chain overfilled the stream: the device waits for 'drain' before the next.
    expect(chunks.length).toBe(1);
    await r.guest.flush();
    expect(chunks.length).toBe(3);
    expect(Buffer.concat(chunks)).toEqual(Buffer.from(out));
    const data = bytes(5000, 4);
    input.write(data);
    await eventLoop.wait();
    expect(r.device.pendingInput).toBe(5000);
    expect(input.isPaused()).toBe(true);
    r.guest.postRx();
    expect(await r.guest.readExactly(5000)).toEqual(data);
    expect(input.isPaused()).toBe(false);
  });
});
