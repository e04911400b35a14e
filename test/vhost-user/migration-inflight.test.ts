/**
 * LOG_SHMFD (dirty logging for live migration), INFLIGHT_SHMFD (resuming after a back-end
 * crash) and ring restarts from a non-initial VRING_BASE, against a real back-end over a
 * socketpair, with guest RAM in a memfd the test maps too.
 */
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockDevice, MemoryBackend } from '../../src/devices/index.js';
import { PackedDriver, SplitDriver } from '../../src/driver/index.js';
import { VIRTIO_F_RING_PACKED } from '../../src/queue/constants.js';
import {
  isNativeAvailable,
  loadNative,
  VHOST_F_LOG_ALL,
  VhostUserBackend,
  type VhostUserNative,
  VhostUserProtocolFeature,
} from '../../src/vhost-user/index.js';
import {
  inflightBufferBytes,
  SplitInflight,
  splitInflightBytes,
  splitInflightRegionBytes,
} from '../../src/vhost-user/inflight.js';
import {
  concat,
  Frontend,
  guestRam,
  memTable,
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

const P = VhostUserProtocolFeature;
const PROTOCOL =
  (1n << BigInt(P.REPLY_ACK)) |
  (1n << BigInt(P.CONFIG)) |
  (1n << BigInt(P.MQ)) |
  (1n << BigInt(P.LOG_SHMFD)) |
  (1n << BigInt(P.INFLIGHT_SHMFD));
const LOG_ALL = 1n << BigInt(VHOST_F_LOG_ALL);
const PACKED = 1n << BigInt(VIRTIO_F_RING_PACKED);
const QSIZE = 16;
const SECTOR_BYTES = 512;
const T_IN = 0;
const T_OUT = 1;

const nativeOk = isNativeAvailable();

describe('the native addon', () => {
  it('is available under CI', () => {
    if (process.env.CI === 'true') expect(nativeOk).toBe(true);
    else if (!nativeOk) console.warn('virtq: native addon missing; vhost-user tests skipped');
  });
});

/** A warning logger that keeps what it was told. */
function recordingLogger() {
  const lines: string[] = [];
  return { lines, warn: (m: string) => void lines.push(m) };
}

describe.runIf(nativeOk)('vhost-user LOG_SHMFD, INFLIGHT_SHMFD and ring restarts', () => {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });

  /** A block device whose rings may be up to `queueSize` entries (default: the rings' QSIZE). */
  function setup(logger: { warn(m: string): void } = silent, queueSize = QSIZE) {
    const disk = new Uint8Array(64 * 1024);
    const device = new BlockDevice({ backend: new MemoryBackend(disk), queueSize });
    const backend = new VhostUserBackend(device, { native: n, logger });
    cleanups.push(() => backend.close());
    const { memfd, guest } = guestRam(n, cleanups);
    return { disk, device, backend, memfd, guest };
  }
  type Setup = ReturnType<typeof setup>;

  function connect(backend: VhostUserBackend): Frontend {
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    cleanups.push(() => fe.close());
    return fe;
  }

  function eventfd(): number {
    const fd = n.eventfd(0, n.constants.EFD_NONBLOCK);
    cleanups.push(() => n.close(fd));
    return fd;
  }

  /** A reply with the fds attached to it. */
  async function recvWithFds(fe: Frontend): Promise<{ payload: Uint8Array; fds: number[] }> {
    const r = await fe.recvWithFds();
    if (r === null) throw new Error('connection closed');
    return r;
  }

  /** Negotiation up to a mapped memory table; returns the offered device features. */
  async function negotiate(s: Setup, fe: Frontend, extra = 0n): Promise<bigint> {
    const offered = await fe.u64(R.GET_FEATURES);
    expect(offered & LOG_ALL).toBe(LOG_ALL);
    const proto = await fe.u64(R.GET_PROTOCOL_FEATURES);
    expect(proto & PROTOCOL).toBe(PROTOCOL);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL));
    expect(await fe.acked(R.SET_OWNER)).toBe(0n);
    const features = (offered & (VERSION_1 | extra)) | PROTOCOL_BIT;
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [s.memfd, s.memfd])).toBe(0n);
    return features;
  }

  /** Configures and starts ring 0 at `base`; returns its kick and call eventfds. */
  async function startRing(
    fe: Frontend,
    layout: { desc: number; avail: number; used: number },
    base: number,
    flags = 0,
    size = QSIZE,
  ) {
    const kick = eventfd();
    const call = eventfd();
    expect(await fe.acked(R.SET_VRING_NUM, u32s(0, size))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_BASE, u32s(0, base))).toBe(0n);
    const addr = vringAddr(0, layout.desc, layout.avail, layout.used);
    new DataView(addr.buffer).setUint32(4, flags, true);
    // log_guest_addr: the used ring's guest address, as QEMU passes it.
    new DataView(addr.buffer).setBigUint64(32, BigInt(layout.used), true);
    expect(await fe.acked(R.SET_VRING_ADDR, addr)).toBe(0n);
    expect(await fe.acked(R.SET_VRING_CALL, u64(0), [call])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_KICK, u64(0), [kick])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);
    return { kick, call };
  }

  async function stopRing(fe: Frontend): Promise<number> {
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    const r = await fe.recv();
    expect(r?.request).toBe(R.GET_VRING_BASE);
    return new DataView(r!.payload.buffer).getUint32(4, true);
  }

  /**
   * Writes a block request for `sector` into guest memory: header at `at`, data on the next
   * page, status on the page after (so each has its own dirty bit).
   */
  function blockRequest(s: Setup, at: number, type: number, sector: number, fill: number) {
    s.guest.writeU32(at, type);
    s.guest.writeU32(at + 4, 0);
    s.guest.writeU64(at + 8, sector);
    s.guest.fill(at + 0x1000, SECTOR_BYTES, fill);
    s.guest.writeU8(at + 0x2000, 0xff);
    const hdr = { addr: at, len: 16 };
    const data = { addr: at + 0x1000, len: SECTOR_BYTES };
    const status = { addr: at + 0x2000, len: 1 };
    return type === T_OUT
      ? { readable: [hdr, data], writable: [status] }
      : { readable: [hdr], writable: [data, status] };
  }

  it('logs every guest page the device writes, and only those, while LOG_ALL is on', async () => {
    const s = setup();
    const fe = connect(s.backend);
    const features = await negotiate(s, fe);
    const driver = new SplitDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const { kick, call } = await startRing(fe, driver.layout, 0, 1);

    // Migration starts: LOG_ALL on a running device, then the log and its eventfd.
    expect(await fe.acked(R.SET_FEATURES, u64(features | LOG_ALL))).toBe(0n);
    // QEMU also re-sends each running ring's addresses with VHOST_VRING_F_LOG: accepted.
    const again = vringAddr(0, driver.layout.desc, driver.layout.avail, driver.layout.used);
    new DataView(again.buffer).setUint32(4, 1, true);
    new DataView(again.buffer).setBigUint64(32, BigInt(driver.layout.used), true);
    expect(await fe.acked(R.SET_VRING_ADDR, again)).toBe(0n);
    // Changing device features while rings run is refused.
    expect(await fe.acked(R.SET_FEATURES, u64((features & ~VERSION_1) | LOG_ALL))).not.toBe(0n);
    const logBytes = 4096;
    const logFd = n.memfdCreate('log', 0);
    cleanups.push(() => n.close(logFd));
    n.ftruncate(logFd, logBytes);
    const logMap = new Uint8Array(n.mmap(logFd, logBytes, 0, n.constants.PROT_READ));
    fe.send(R.SET_LOG_BASE, concat(u64(logBytes), u64(0)), [logFd]);
    const ack = await fe.recv();
    expect(ack?.request).toBe(R.SET_LOG_BASE);
    expect(new DataView(ack!.payload.buffer).getBigUint64(0, true)).toBe(0n);
    const logCall = eventfd();
    expect(await fe.acked(R.SET_LOG_FD, new Uint8Array(0), [logCall])).toBe(0n);
    expect(s.backend.logging).toBe(true);
    // Pages written before logging started may be logged too (the rings, at their start);
    // nothing else is.
    const loggedPages = () => {
      const pages: number[] = [];
      for (let p = 0; p < logBytes * 8; p++)
        if ((logMap[p >>> 3]! & (1 << (p & 7))) !== 0) pages.push(p);
      return pages;
    };
    expect(loggedPages().every((p) => p === RING_GPA >>> 12)).toBe(true);

    // A read: the device writes the data buffer and the status and the used ring; it only
    // reads the header. A write: the device writes only its status and the used ring.
    const read = blockRequest(s, 0x24000, T_IN, 5, 0);
    driver.add(read.readable, read.writable);
    const write = blockRequest(s, 0x30000, T_OUT, 6, 0x5a);
    driver.add(write.readable, write.writable);
    if (driver.kick()) n.eventfdWrite(kick, 1);
    await until(() => driver.hasUsed(), 'used buffers');
    while (driver.popUsed() >= 0) {}
    expect(Number(n.eventfdRead(call))).toBeGreaterThanOrEqual(1);

    const logged = (gpa: number) => (logMap[gpa >>> 15]! & (1 << ((gpa >>> 12) & 7))) !== 0;
    expect(logged(0x25000)).toBe(true); // data read from disk
    expect(logged(0x26000)).toBe(true); // status of the read
    expect(logged(0x32000)).toBe(true); // status of the write
    expect(logged(driver.layout.used)).toBe(true);
    expect(logged(0x24000)).toBe(false); // headers are only read
    expect(logged(0x30000)).toBe(false);
    expect(logged(0x31000)).toBe(false); // the write's data: only read
    expect(logged(0x50000)).toBe(false);
    expect(Number(n.eventfdRead(logCall))).toBeGreaterThanOrEqual(1);
    expect(s.backend.stats.loggedPages).toBeGreaterThanOrEqual(2);

    // The last pass: GET_VRING_BASE returns after everything is in the log.
    expect(await stopRing(fe)).toBe(2);
    // LOG_ALL off again: further writes are not logged.
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(s.backend.logging).toBe(false);
  });

  it('refuses a log that is too small for its mapping and SET_LOG_BASE without LOG_SHMFD', async () => {
    const s = setup();
    const fe = connect(s.backend);
    await negotiate(s, fe);
    const logFd = n.memfdCreate('log', 0);
    cleanups.push(() => n.close(logFd));
    n.ftruncate(logFd, 100);
    // The front-end waits for SET_LOG_BASE's answer; one that cannot be given ends the
    // connection (a SIGBUS-prone mapping is never made).
    fe.send(R.SET_LOG_BASE, concat(u64(4096), u64(0)), [logFd]);
    expect(await fe.recv()).toBeNull();
    await until(() => !s.backend.connected, 'the disconnect');
  });

  /** GET_INFLIGHT_FD then SET_INFLIGHT_FD, as QEMU does at the first start. */
  async function inflightBuffer(fe: Frontend): Promise<{ fd: number; size: number }> {
    const req = concat(u64(0), u64(0), new Uint8Array([1, 0, QSIZE, 0, 0, 0, 0, 0]));
    fe.send(R.GET_INFLIGHT_FD, req);
    const r = await recvWithFds(fe);
    expect(r.fds).toHaveLength(1);
    const v = new DataView(r.payload.buffer);
    const size = Number(v.getBigUint64(0, true));
    expect(size).toBe(inflightBufferBytes(1, QSIZE));
    expect(v.getBigUint64(8, true)).toBe(0n);
    const fd = r.fds[0]!;
    cleanups.push(() => n.close(fd));
    const set = concat(u64(size), u64(0), new Uint8Array([1, 0, QSIZE, 0, 0, 0, 0, 0]));
    expect(await fe.acked(R.SET_INFLIGHT_FD, set, [fd])).toBe(0n);
    return { fd, size };
  }

  it('sizes inflight regions for the largest ring the device accepts, not the smaller queue size the front-end asks with', async () => {
    // QEMU asks with its queue-size property (128) while its virtio-mmio transport lets Linux
    // pick a 1024-entry ring: here the front-end asks for 16 and starts a 64-entry ring.
    const log = recordingLogger();
    const s = setup(log, 64);
    const fe = connect(s.backend);
    await negotiate(s, fe);
    const req = concat(u64(0), u64(0), new Uint8Array([1, 0, QSIZE, 0, 0, 0, 0, 0]));
    fe.send(R.GET_INFLIGHT_FD, req);
    const r = await recvWithFds(fe);
    const size = Number(new DataView(r.payload.buffer).getBigUint64(0, true));
    expect(size).toBe(inflightBufferBytes(1, 64));
    const fd = r.fds[0]!;
    cleanups.push(() => n.close(fd));
    const set = concat(u64(size), u64(0), new Uint8Array([1, 0, QSIZE, 0, 0, 0, 0, 0]));
    expect(await fe.acked(R.SET_INFLIGHT_FD, set, [fd])).toBe(0n);
    const region = new DataView(n.mmap(fd, size, 0, n.constants.PROT_READ));
    const driver = new SplitDriver(s.guest, { size: 64, base: RING_GPA });
    const { kick } = await startRing(fe, driver.layout, 0, 0, 64);
    expect(region.getUint16(10, true)).toBe(64); // desc_num
    // Fill the ring beyond the 16 entries asked for: every chain is tracked and completed.
    for (let k = 0; k < 20; k++) {
      const w = blockRequest(s, 0x20000 + (k % 4) * 0x4000, T_OUT, k, k + 1);
      driver.add(w.readable, w.writable);
    }
    if (driver.kick()) n.eventfdWrite(kick, 1);
    let done = 0;
    await until(() => {
      while (driver.popUsed() >= 0) done++;
      return done === 20;
    }, 'all 20 chains');
    expect(region.getUint16(14, true)).toBe(20); // used_idx
    expect(log.lines.filter((l) => l.includes('untracked'))).toEqual([]);
    // Chains took heads past 16: their counters were recorded in the larger region.
    expect(Number(region.getBigUint64(16 + 16 * 57 + 8, true))).toBeGreaterThan(0);
    expect(await stopRing(fe)).toBe(20);
  });

  it('records pops and completions in the inflight buffer as the spec lays it out', async () => {
    const s = setup();
    const fe = connect(s.backend);
    await negotiate(s, fe);
    const { fd, size } = await inflightBuffer(fe);
    const region = new DataView(n.mmap(fd, size, 0, n.constants.PROT_READ));
    const driver = new SplitDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const { kick } = await startRing(fe, driver.layout, 0);
    expect(region.getUint16(8, true)).toBe(1); // version
    expect(region.getUint16(10, true)).toBe(QSIZE); // desc_num
    for (let k = 0; k < 3; k++) {
      const w = blockRequest(s, 0x20000 + k * 0x4000, T_OUT, k, k + 1);
      driver.add(w.readable, w.writable);
    }
    if (driver.kick()) n.eventfdWrite(kick, 1);
    await until(() => driver.hasUsed(), 'used buffers');
    while (driver.popUsed() >= 0) {}
    expect(region.getUint16(14, true)).toBe(3); // used_idx
    for (let i = 0; i < QSIZE; i++) expect(region.getUint8(16 + 16 * i)).toBe(0);
    // Counters were handed out in pop order.
    const counters = [0, 3, 6].map((h) => Number(region.getBigUint64(16 + 16 * h + 8, true)));
    expect(counters).toEqual([0, 1, 2]);
    expect(await stopRing(fe)).toBe(3);
  });

  it('after a crash, completes exactly the chains left in flight, oldest first, then carries on', async () => {
    const log = recordingLogger();
    const s = setup(log);
    let fe = connect(s.backend);
    await negotiate(s, fe);
    const { fd, size } = await inflightBuffer(fe);
    const driver = new SplitDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const { kick } = await startRing(fe, driver.layout, 0);
    // One request completes normally.
    const first = blockRequest(s, 0x20000, T_OUT, 1, 0x11);
    driver.add(first.readable, first.writable);
    if (driver.kick()) n.eventfdWrite(kick, 1);
    await until(() => driver.hasUsed(), 'the first completion');
    expect(driver.popUsed()).toBe(0);

    // Two more are made available but the back-end "dies" having taken both: the front-end
    // goes away before kicking, and the buffer is edited as the dead back-end would have left
    // it (both heads in flight, the later head with the older counter).
    const a = blockRequest(s, 0x24000, T_OUT, 2, 0x22);
    const headA = driver.add(a.readable, a.writable);
    const b = blockRequest(s, 0x28000, T_OUT, 3, 0x33);
    const headB = driver.add(b.readable, b.writable);
    driver.publish();
    fe.close();
    await until(() => !s.backend.connected, 'the disconnect');
    const rw = new DataView(n.mmap(fd, size, 0, n.constants.PROT_READ | n.constants.PROT_WRITE));
    rw.setUint8(16 + 16 * headA, 1);
    rw.setBigUint64(16 + 16 * headA + 8, 7n, true);
    rw.setUint8(16 + 16 * headB, 1);
    rw.setBigUint64(16 + 16 * headB + 8, 5n, true);

    // The front-end reconnects, hands the buffer back and restarts the ring where it believes
    // the back-end was: at the used index (QEMU cannot ask a dead back-end).
    fe = connect(s.backend);
    await negotiate(s, fe);
    const set = concat(u64(size), u64(0), new Uint8Array([1, 0, QSIZE, 0, 0, 0, 0, 0]));
    expect(await fe.acked(R.SET_INFLIGHT_FD, set, [fd])).toBe(0n);
    const ring = await startRing(fe, driver.layout, 1);
    await until(() => driver.hasUsed(), 'the resubmitted chains');
    const order: number[] = [];
    await until(() => {
      for (let id = driver.popUsed(); id >= 0; id = driver.popUsed()) order.push(id);
      return order.length === 2;
    }, 'both resubmitted chains');
    expect(order).toEqual([headB, headA]); // counter order
    expect(s.backend.stats.resubmitted).toBe(2);
    expect(s.disk[2 * SECTOR_BYTES]).toBe(0x22);
    expect(s.disk[3 * SECTOR_BYTES]).toBe(0x33);
    expect(log.lines.some((l) => l.includes('inflight'))).toBe(true);

    // The ring continues after them: a new request is served once, from avail index 3.
    const c = blockRequest(s, 0x2c000, T_OUT, 4, 0x44);
    driver.add(c.readable, c.writable);
    if (driver.kick()) n.eventfdWrite(ring.kick, 1);
    await until(() => driver.hasUsed(), 'the new request');
    expect(driver.popUsed()).toBeGreaterThanOrEqual(0);
    expect(driver.popUsed()).toBe(-1);
    expect(s.disk[4 * SECTOR_BYTES]).toBe(0x44);
    expect(await stopRing(fe)).toBe(4);
  });

  it('does not redo a batch the dead back-end published but had not yet cleared', async () => {
    const s = setup();
    let fe = connect(s.backend);
    await negotiate(s, fe);
    const { fd, size } = await inflightBuffer(fe);
    const driver = new SplitDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const { kick } = await startRing(fe, driver.layout, 0);
    const w = blockRequest(s, 0x20000, T_OUT, 1, 0x11);
    const head = driver.add(w.readable, w.writable);
    if (driver.kick()) n.eventfdWrite(kick, 1);
    await until(() => driver.hasUsed(), 'the completion');
    expect(driver.popUsed()).toBe(head);
    fe.close();
    await until(() => !s.backend.connected, 'the disconnect');
    // The crash came between publishing used.idx = 1 and clearing the entry.
    const rw = new DataView(n.mmap(fd, size, 0, n.constants.PROT_READ | n.constants.PROT_WRITE));
    rw.setUint8(16 + 16 * head, 1);
    rw.setUint16(14, 0, true); // used_idx still the old one
    rw.setUint16(12, head, true); // last_batch_head

    fe = connect(s.backend);
    await negotiate(s, fe);
    const set = concat(u64(size), u64(0), new Uint8Array([1, 0, QSIZE, 0, 0, 0, 0, 0]));
    expect(await fe.acked(R.SET_INFLIGHT_FD, set, [fd])).toBe(0n);
    await startRing(fe, driver.layout, 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(driver.hasUsed()).toBe(false);
    expect(s.backend.stats.resubmitted).toBe(0);
    expect(rw.getUint8(16 + 16 * head)).toBe(0);
    expect(rw.getUint16(14, true)).toBe(1);
    expect(await stopRing(fe)).toBe(1);
  });

  it('signals the error eventfds when a hostile chain puts the device into DEVICE_NEEDS_RESET', async () => {
    const log = recordingLogger();
    const s = setup(log);
    const fe = connect(s.backend);
    await negotiate(s, fe);
    const driver = new SplitDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const err = eventfd();
    expect(await fe.acked(R.SET_VRING_ERR, u64(0), [err])).toBe(0n);
    const { kick } = await startRing(fe, driver.layout, 0);
    // An available-ring entry naming descriptor 999 of a 16-entry table.
    const avail = driver.layout.avail;
    s.guest.writeU16(avail + 4, 999);
    Atomics.store(s.guest.typedView(Uint16Array, avail, 2), 1, 1);
    n.eventfdWrite(kick, 1);
    await until(() => Number(n.eventfdRead(err)) >= 1, 'the error eventfd');
    expect(s.device.needsReset).toBe(true);
    expect(log.lines.some((l) => l.includes('needs a reset'))).toBe(true);
    expect(await stopRing(fe)).toBe(1);
  });

  it('packed: GET_VRING_BASE reports both positions and a ring restarts from them', async () => {
    const s = setup();
    const fe = connect(s.backend);
    const features = await negotiate(s, fe, PACKED);
    expect(features & PACKED).toBe(PACKED);
    // Packed rings have an inflight buffer too (the packed layout); the ring records in it and
    // an orderly restart resumes exactly where GET_VRING_BASE said.
    await inflightBuffer(fe);

    const driver = new PackedDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const layout = {
      desc: driver.layout.desc,
      avail: driver.layout.driver,
      used: driver.layout.device,
    };
    let ring = await startRing(fe, layout, 0x8000_8000);
    const run = async (count: number, first: number) => {
      for (let k = 0; k < count; k++) {
        const w = blockRequest(s, 0x20000 + k * 0x4000, T_OUT, first + k, first + k);
        driver.add(w.readable, w.writable);
      }
      if (driver.kick()) n.eventfdWrite(ring.kick, 1);
      let got = 0;
      await until(() => {
        while (driver.popUsed() >= 0) got++;
        return got === count;
      }, `${count} completions`);
    };
    // 17 requests of 3 descriptors: 51 slots, three laps and 3 slots.
    await run(5, 0);
    await run(5, 5);
    await run(5, 10);
    await run(2, 15);
    const base = await stopRing(fe);
    const avail = base & 0xffff;
    const used = base >>> 16;
    expect(avail).toBe(used);
    expect(avail).toBe(3); // slot 3, wrap counter 0 after an odd number of laps

    ring = await startRing(fe, layout, base);
    await run(4, 30);
    for (let k = 0; k < 4; k++) expect(s.disk[(30 + k) * SECTOR_BYTES]).toBe(30 + k);
    expect(await stopRing(fe)).not.toBe(base);
  });
});

describe('SplitInflight over a region a hostile front-end wrote', () => {
  it('never throws, returns each head once, inside the ring, and sizes the buffer', () => {
    expect(splitInflightRegionBytes(16)).toBe(320);
    expect(splitInflightBytes(2, 128) % 64).toBe(0);
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 16 + 16 * QSIZE, maxLength: 16 + 16 * QSIZE }),
        fc.integer({ min: 1, max: QSIZE }),
        fc.integer({ min: 0, max: 0xffff }),
        fc.boolean(),
        (bytes, ringSize, usedIdx, valid) => {
          const buf = new SharedArrayBuffer(bytes.length);
          new Uint8Array(buf).set(bytes);
          const dv = new DataView(buf);
          if (valid) {
            dv.setUint16(8, 1, true);
            dv.setUint16(10, QSIZE, true);
          }
          const region = new SplitInflight(buf, 0, QSIZE);
          const r = region.resume(ringSize, usedIdx, silent);
          expect(new Set(r.heads).size).toBe(r.heads.length);
          for (const h of r.heads) expect(h).toBeLessThan(ringSize);
          // A region never used leaves the ring where VRING_BASE put it.
          if (valid) expect(r.nextAvail).toBe((usedIdx + r.heads.length) & 0xffff);
          else if (r.nextAvail === null) expect(r.heads).toEqual([]);
          else expect(r.nextAvail).toBe((usedIdx + r.heads.length) & 0xffff);
          // Still usable afterwards.
          region.popped(0);
          region.used(0);
          region.published((usedIdx + 1) & 0xffff);
          expect(dv.getUint16(8, true)).toBe(1);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
