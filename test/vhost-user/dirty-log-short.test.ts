/**
 * SET_LOG_BASE with a log that does not reach every page of the memory table (QEMU may send
 * one for a moment while it grows the log): the back-end accepts it, logs what the log holds,
 * and warns about, and counts, the pages the device wrote beyond it. Before, those were dropped
 * without a word, and `loggedPages` counted them as logged.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { BlockDevice, MemoryBackend } from '../../src/devices/index.js';
import { SplitDriver } from '../../src/driver/index.js';
import {
  isNativeAvailable,
  loadNative,
  VhostUserProtocolFeature as P,
  VHOST_F_LOG_ALL,
  VhostUserBackend,
  type VhostUserNative,
} from '../../src/vhost-user/index.js';
import {
  concat,
  Frontend,
  guestRam,
  memTable,
  PROTOCOL_BIT,
  R,
  RING_GPA,
  setupSplitRing,
  u32s,
  u64,
  until,
  VERSION_1,
} from './frontend.js';

const nativeOk = isNativeAvailable();
const PROTOCOL = (1n << BigInt(P.REPLY_ACK)) | (1n << BigInt(P.LOG_SHMFD));
const LOG_ALL = 1n << BigInt(VHOST_F_LOG_ALL);
const QSIZE = 16;

describe.runIf(nativeOk)('vhost-user: a dirty log shorter than guest memory', () => {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });
  const eventfd = () => {
    const fd = n.eventfd(0, n.constants.EFD_NONBLOCK);
    cleanups.push(() => n.close(fd));
    return fd;
  };

  it('a written page the log cannot hold is refused or reported, never dropped silently', async () => {
    const warnings: string[] = [];
    const logger = { warn: (m: string) => void warnings.push(m) };
    const device = new BlockDevice({
      backend: new MemoryBackend(new Uint8Array(64 * 1024)),
      queueSize: QSIZE,
    });
    const backend = new VhostUserBackend(device, { native: n, logger });
    cleanups.push(() => backend.close());
    const { memfd, guest } = guestRam(n, cleanups);
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    cleanups.push(() => fe.close());

    const offered = await fe.u64(R.GET_FEATURES);
    await fe.u64(R.GET_PROTOCOL_FEATURES);
    fe.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL));
    const features = (offered & VERSION_1) | PROTOCOL_BIT;
    expect(await fe.acked(R.SET_FEATURES, u64(features))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [memfd, memfd])).toBe(0n);

    const driver = new SplitDriver(guest, { size: QSIZE, base: RING_GPA });
    const kick = eventfd();
    await setupSplitRing(fe, 0, driver.layout, kick, { call: eventfd(), logUsed: true });
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);

    // Migration starts. The log is 8 bytes: 64 pages, guest [0, 256 KiB); the table reaches
    // 0x180000 and the ring (used ring included) lives at 0x100000.
    expect(await fe.acked(R.SET_FEATURES, u64(features | LOG_ALL))).toBe(0n);
    const logFd = n.memfdCreate('log', 0);
    cleanups.push(() => n.close(logFd));
    n.ftruncate(logFd, 4096);
    fe.send(R.SET_LOG_BASE, concat(u64(8), u64(0)), [logFd]);
    expect((await fe.recv())?.request).toBe(R.SET_LOG_BASE);
    expect(backend.logging).toBe(true);

    // A write request: the device writes its status (page 0x32, logged) and the used ring
    // (page 0x100, beyond the log).
    guest.writeU32(0x30000, 1);
    guest.writeU32(0x30004, 0);
    guest.writeU64(0x30008, 6);
    guest.writeU8(0x32000, 0xff);
    driver.add(
      [
        { addr: 0x30000, len: 16 },
        { addr: 0x31000, len: 512 },
      ],
      [{ addr: 0x32000, len: 1 }],
    );
    if (driver.kick()) n.eventfdWrite(kick, 1);
    await until(() => driver.hasUsed(), 'a used buffer');
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    expect((await fe.recv())?.request).toBe(R.GET_VRING_BASE);

    // The status byte's page is logged; the used ring's page could not be: warned (once),
    // counted, and not counted as logged.
    const log = new Uint8Array(
      n.mmap(logFd, 4096, 0, n.constants.PROT_READ | n.constants.PROT_WRITE),
    );
    expect(log[0x32 >>> 3]! & (1 << (0x32 & 7))).not.toBe(0);
    expect(warnings.filter((w) => /dirty log too short/.test(w))).toHaveLength(1);
    expect(backend.stats.droppedLogPages).toBeGreaterThanOrEqual(1);
    expect(backend.stats.loggedPages).toBe(1);
  });
});
