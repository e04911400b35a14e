/**
 * Ring-worker mode of VhostUserBackend: each ring served on its own thread. A read that blocks
 * one ring's worker must not hold up the other ring; stopping a ring answers with where it
 * stopped; call eventfds and the dirty log can be replaced while rings run.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { BlockDevice, MemoryBackend } from '../../src/devices/index.js';
import { SplitDriver } from '../../src/driver/index.js';
import {
  isNativeAvailable,
  VHOST_F_LOG_ALL,
  VhostUserBackend,
  VhostUserProtocolFeature,
} from '../../src/vhost-user/index.js';
import {
  concat,
  Frontend,
  guestRam,
  memTable,
  nativeFixture,
  PROTOCOL_BIT,
  R,
  RING_GPA,
  silent,
  u32s,
  u64,
  until,
  VERSION_1,
  vringAddr,
} from './frontend.js';
import { create, GATED_SECTOR } from './workers/gated-block.js';

const P = VhostUserProtocolFeature;
const PROTOCOL =
  (1n << BigInt(P.REPLY_ACK)) |
  (1n << BigInt(P.CONFIG)) |
  (1n << BigInt(P.MQ)) |
  (1n << BigInt(P.LOG_SHMFD));
const LOG_ALL = 1n << BigInt(VHOST_F_LOG_ALL);
const QSIZE = 16;
const T_IN = 0;
const T_OUT = 1;
const nativeOk = isNativeAvailable();

describe.runIf(nativeOk)('VhostUserBackend with one worker thread per ring', () => {
  const { n, cleanups, eventfd } = nativeFixture(nativeOk);

  /**
   * A back-end in ring-worker mode over the gated block device (test/vhost-user/workers), its
   * guest RAM, and a front-end connected to it.
   */
  function gatedBackend(
    numQueues: number,
    ackTimeoutMs?: number,
    holdLoad = false,
    pollIdleMicros = 0,
  ) {
    const image = new SharedArrayBuffer(128 * 512);
    const gate = new SharedArrayBuffer(12);
    const options = { image, gate, numQueues, holdLoad };
    const spec = {
      kind: 'module',
      module: pathToFileURL(new URL('./workers/gated-block.ts', import.meta.url).pathname).href,
      export: 'create',
      options,
    };
    const backend = new VhostUserBackend(create(options), {
      native: n,
      logger: silent,
      pollIdleMicros,
      ringWorkers: {
        spec,
        quiet: true,
        ...(ackTimeoutMs !== undefined ? { ackTimeoutMs } : {}),
      },
    });
    cleanups.push(() => backend.close());
    const { memfd, guest } = guestRam(n, cleanups);
    const [a, b] = n.socketpair();
    cleanups.push(() => n.close(a));
    backend.attach(b);
    return { image, gate, backend, memfd, guest, fe: new Frontend(n, a) };
  }

  it('serves two rings on two threads: one blocked ring never holds up the other', async () => {
    const { image, gate, backend, memfd, guest, fe } = gatedBackend(2);

    const offered = await fe.u64(R.GET_FEATURES);
    await fe.u64(R.GET_PROTOCOL_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL));
    expect(await fe.u64(R.GET_QUEUE_NUM)).toBe(2n);
    const features = (offered & VERSION_1) | PROTOCOL_BIT;
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);

    const rings = [0, 1].map((index) => {
      const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA + index * 0x4000 });
      return { index, driver, kick: eventfd(), call: eventfd(), err: eventfd() };
    });
    for (const r of rings) {
      const { desc, avail, used } = r.driver.layout;
      expect(await fe.acked(R.SET_VRING_NUM, u32s(r.index, QSIZE))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_BASE, u32s(r.index, 0))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(r.index, desc, avail, used))).toBe(0n);
      expect(await fe.acked(R.SET_VRING_CALL, u64(r.index), [r.call])).toBe(0n);
      expect(await fe.acked(R.SET_VRING_ERR, u64(r.index), [r.err])).toBe(0n);
      expect(await fe.acked(R.SET_VRING_KICK, u64(r.index), [r.kick])).toBe(0n);
      expect(await fe.acked(R.SET_VRING_ENABLE, u32s(r.index, 1))).toBe(0n);
    }

    /** A one-sector request on ring `r`, its buffers at `at` (header, data, status pages). */
    const submit = (r: (typeof rings)[number], at: number, type: number, sector: number) => {
      guest.writeU32(at, type);
      guest.writeU32(at + 4, 0);
      guest.writeU64(at + 8, sector);
      guest.writeU8(at + 0x2000, 0xff);
      const hdr = { addr: at, len: 16 };
      const data = { addr: at + 0x1000, len: 512 };
      const status = { addr: at + 0x2000, len: 1 };
      if (type === T_OUT) r.driver.add([hdr, data], [status]);
      else r.driver.add([hdr], [data, status]);
      if (r.driver.kick()) n.eventfdWrite(r.kick, 1);
    };
    const completed = async (r: (typeof rings)[number], what: string) => {
      await until(() => r.driver.hasUsed(), what);
      expect(r.driver.popUsed()).toBeGreaterThanOrEqual(0);
    };

    // Ring 0: a read of the gated sector, which blocks ring 0's worker inside the disk read.
    new Uint8Array(image, GATED_SECTOR * 512, 512).fill(0x77);
    submit(rings[0]!, 0x10000, T_IN, GATED_SECTOR);
    const gateView = new Int32Array(gate);
    await until(() => Atomics.load(gateView, 1) === 1, 'ring 0 to block');

    // Ring 1 keeps going meanwhile: a write and a read back.
    guest.fill(0x21000, 512, 0x5a);
    submit(rings[1]!, 0x20000, T_OUT, 7);
    await completed(rings[1]!, 'ring 1 write while ring 0 is blocked');
    submit(rings[1]!, 0x30000, T_IN, 7);
    await completed(rings[1]!, 'ring 1 read while ring 0 is blocked');
    expect(guest.readU8(0x31000)).toBe(0x5a);
    expect(new Uint8Array(image, 7 * 512, 512).every((x) => x === 0x5a)).toBe(true);
    expect(rings[0]!.driver.hasUsed()).toBe(false);

    // Open the gate: ring 0 completes its read.
    Atomics.store(gateView, 0, 1);
    Atomics.notify(gateView, 0);
    await completed(rings[0]!, 'ring 0 after the gate opened');
    expect(guest.readU8(0x11000)).toBe(0x77);
    expect(guest.readU8(0x12000)).toBe(0);

    // A new call eventfd for a running ring: the next completion signals it, not the old one.
    const call2 = eventfd();
    expect(await fe.acked(R.SET_VRING_CALL, u64(1), [call2])).toBe(0n);
    // Acknowledged: the worker is done with the old eventfd (drained here, then left alone).
    n.eventfdRead(rings[1]!.call);
    // Logging starts on the running rings.
    expect(await fe.acked(R.SET_FEATURES, u64(features | LOG_ALL))).toBe(0n);
    const logFd = n.memfdCreate('log', 0);
    cleanups.push(() => n.close(logFd));
    n.ftruncate(logFd, 4096);
    const logMap = new Uint8Array(n.mmap(logFd, 4096, 0, n.constants.PROT_READ));
    fe.send(R.SET_LOG_BASE, concat(u64(4096), u64(0)), [logFd]);
    expect((await fe.recv())?.request).toBe(R.SET_LOG_BASE);
    submit(rings[1]!, 0x40000, T_IN, 7);
    await completed(rings[1]!, 'ring 1 with the new call fd');
    // The worker writes the call eventfd just after publishing the used element.
    await until(() => Number(n.eventfdRead(call2)) >= 1, 'the new call eventfd');
    expect(Number(n.eventfdRead(rings[1]!.call))).toBe(-1);
    const page = 0x41000 >>> 12;
    expect(logMap[page >>> 3]! & (1 << (page & 7))).not.toBe(0);

    // A hostile chain on ring 1 (descriptor 999 of 16): its worker's device needs a reset,
    // and the ring's error eventfd says so; ring 0 is unaffected.
    const avail = rings[1]!.driver.layout.avail;
    guest.writeU16(avail + 4 + 2 * 3, 999);
    Atomics.store(guest.typedView(Uint16Array, avail, 2), 1, 4);
    n.eventfdWrite(rings[1]!.kick, 1);
    await until(() => Number(n.eventfdRead(rings[1]!.err)) >= 1, 'ring 1 error eventfd');
    expect(Number(n.eventfdRead(rings[0]!.err))).toBe(-1);

    // Stopping answers with where each ring stopped.
    for (const [index, expected] of [
      [0, 1],
      [1, 4],
    ] as const) {
      fe.send(R.GET_VRING_BASE, u32s(index, 0));
      const reply = await fe.recv();
      expect(new DataView(reply!.payload.buffer).getUint32(4, true)).toBe(expected);
    }
    const stats = backend.stats;
    // A kick the driver skipped (the device had notifications off while busy) is fine.
    expect(stats.kicks).toBeGreaterThanOrEqual(2);
    expect(stats.calls).toBeGreaterThanOrEqual(4);
    expect(stats.loggedPages).toBeGreaterThanOrEqual(1);
  });
  it('polling mode in a ring worker: requests served with the driver not notifying', async () => {
    // An idle time far beyond the test (10 s): on a loaded machine a pause of the test's own
    // thread between two requests must not end polling (the fallback to kicks when idle has
    // its tests in ring-poller.test.ts and backend.test.ts). With 200 ms, one CI run on Node 22
    // saw notifications on again before a request.
    const { backend, memfd, guest, fe } = gatedBackend(1, undefined, false, 10_000_000);
    const offered = await fe.u64(R.GET_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL));
    const features = (offered & VERSION_1) | PROTOCOL_BIT;
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);
    const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA });
    const kick = eventfd();
    const { desc, avail, used } = driver.layout;
    expect(await fe.acked(R.SET_VRING_NUM, u32s(0, QSIZE))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_BASE, u32s(0, 0))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(0, desc, avail, used))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_CALL, u64(0), [eventfd()])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_KICK, u64(0), [kick])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);
    // The worker starts the ring polled: the driver sees notifications off.
    await until(() => backend.stats.polls === 1, 'the worker to poll');
    for (let k = 0; k < 8; k++) {
      guest.writeU32(0x10000, T_IN);
      guest.writeU64(0x10008, k);
      driver.add(
        [{ addr: 0x10000, len: 16 }],
        [
          { addr: 0x11000, len: 512 },
          { addr: 0x12000, len: 1 },
        ],
      );
      expect(driver.kick()).toBe(false);
      await until(() => driver.hasUsed(), `request ${k}`);
      expect(driver.popUsed()).toBeGreaterThanOrEqual(0);
    }
    expect(backend.stats.kicks).toBe(0);
    expect(backend.stats.pollTurns).toBeGreaterThan(0);
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    const reply = await fe.recv();
    expect(new DataView(reply!.payload.buffer).getUint32(4, true)).toBe(8);
  });

  it('gives up a ring whose worker does not stop in time: the connection closes, no stale base', async () => {
    const { gate, backend, memfd, guest, fe } = gatedBackend(1, 300);
    const offered = await fe.u64(R.GET_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL));
    const features = (offered & VERSION_1) | PROTOCOL_BIT;
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);
    const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA });
    const { desc, avail, used } = driver.layout;
    const kick = eventfd();
    expect(await fe.acked(R.SET_VRING_NUM, u32s(0, QSIZE))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_BASE, u32s(0, 0))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(0, desc, avail, used))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_KICK, u64(0), [kick])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);
    // Device features cannot change under a running ring (only LOG_ALL may).
    expect(await fe.acked(R.SET_FEATURES, u64(features | (1n << 28n)))).not.toBe(0n);

    // A read the worker's disk never finishes.
    guest.writeU32(0x10000, T_IN);
    guest.writeU64(0x10008, GATED_SECTOR);
    driver.add(
      [{ addr: 0x10000, len: 16 }],
      [
        { addr: 0x11000, len: 512 },
        { addr: 0x12000, len: 1 },
      ],
    );
    if (driver.kick()) n.eventfdWrite(kick, 1);
    await until(() => Atomics.load(new Int32Array(gate), 1) === 1, 'the worker to block');
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    expect(await fe.recv()).toBeNull();
    await until(() => !backend.connected, 'the disconnect');
    // The back-end serves the next front-end (a new worker for the ring).
    const [c, d] = n.socketpair();
    cleanups.push(() => n.close(c));
    backend.attach(d);
    expect(await new Frontend(n, c).u64(R.GET_QUEUE_NUM)).toBe(1n);
  });
  it("keeps a lost ring's eventfds open until its terminated worker is gone", async () => {
    // The worker starts slowly, so the kick arrives before it watches the kick fd; it then
    // registers its watch and, before its event loop ever runs, blocks in the gated read. Its
    // stop times out and it is terminated. Had the back-end closed the kick fd at once, the
    // worker's last loop pass during termination would have tried to add the closed fd to
    // epoll, and libuv aborts the whole process on that.
    const { gate, backend, memfd, guest, fe } = gatedBackend(1, 300, true);
    const kick = eventfd();
    const call = eventfd();
    // The open descriptors that can be the back-end's.
    const openFds = () =>
      new Set(
        readdirSync('/proc/self/fd').filter((fd) => {
          try {
            // Not the listing itself, nor tsx's cache directory (tsx opens it while loading).
            const target = readlinkSync(`/proc/self/fd/${fd}`);
            return !target.startsWith('/proc/') && !target.startsWith('/tmp/tsx-');
          } catch {
            return false; // the listing's own descriptor, already closed
          }
        }),
      );
    const before = openFds();
    await fe.negotiate();
    const features = VERSION_1 | PROTOCOL_BIT;
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);
    const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA });
    const { desc, avail, used } = driver.layout;
    expect(await fe.acked(R.SET_VRING_NUM, u32s(0, QSIZE))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_BASE, u32s(0, 0))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(0, desc, avail, used))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_CALL, u64(0), [call])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_KICK, u64(0), [kick])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);
    guest.writeU32(0x10000, T_IN);
    guest.writeU64(0x10008, GATED_SECTOR);
    driver.add(
      [{ addr: 0x10000, len: 16 }],
      [
        { addr: 0x11000, len: 512 },
        { addr: 0x12000, len: 1 },
      ],
    );
    if (driver.kick()) n.eventfdWrite(kick, 1);
    const gateView = new Int32Array(gate);
    Atomics.store(gateView, 2, 1);
    Atomics.notify(gateView, 2);
    await until(() => Atomics.load(gateView, 1) === 1, 'the worker to block');
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    expect(await fe.recv()).toBeNull();
    await until(() => !backend.connected, 'the disconnect');
    // Once the worker is gone, so are the descriptors of its ring (and the connection's).
    await until(() => [...openFds()].every((fd) => before.has(fd)), 'the ring fds to close');
  });

  it('refuses to serve a device with asynchronous transfers on its own thread', () => {
    const disk = Object.assign(new MemoryBackend(4096), {
      async: { readv() {}, writev() {}, flush() {} },
    });
    const device = new BlockDevice({ backend: disk, asyncIo: true });
    expect(device.asyncTransfers).toBe(true);
    expect(() => new VhostUserBackend(device, { native: n, logger: silent })).toThrow(TypeError);
  });
});
