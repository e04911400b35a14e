import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type FdWatcher,
  loadNative,
  NativeAddonUnavailableError,
  nativeAddonPath,
  nativePrebuildsDir,
  type VhostUserNative,
} from '../../src/vhost-user/index.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const child = fileURLToPath(new URL('./native-child.ts', import.meta.url));

let native: VhostUserNative | undefined;
let loadError: unknown;
try {
  native = loadNative();
} catch (e) {
  loadError = e;
}

// CI must build the addon: there a missing one fails the suite. Elsewhere it is reported loudly
// and the one test below says so in its name.
const required =
  ['true', '1'].includes(process.env.CI ?? '') || process.env.VIRTQ_NATIVE_REQUIRED === '1';

if (native === undefined) {
  const message = loadError instanceof Error ? loadError.message : String(loadError);
  console.warn(
    `\n${'!'.repeat(78)}\nvirtq: the native addon is not available, so NO vhost-user native test ran.\n` +
      `${message}\n${'!'.repeat(78)}\n`,
  );
  describe('native addon', () => {
    it(`NOT BUILT: vhost-user native tests did not run (${nativePrebuildsDir})`, () => {
      expect(loadError).toBeInstanceOf(NativeAddonUnavailableError);
      if (required) {
        throw new Error(`the native addon must be built under CI=true: ${message}`);
      }
    });
  });
} else {
  describeNative(native);
}

/** The `flags` of /proc/self/fdinfo/<fd>, an octal number. */
function fdFlags(fd: number): number {
  const text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  const match = /^flags:\s+([0-7]+)$/m.exec(text);
  if (match === null) throw new Error(`no flags for fd ${fd}`);
  return Number.parseInt(match[1]!, 8);
}
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;

function errorOf(f: () => unknown): NodeJS.ErrnoException {
  try {
    f();
  } catch (e) {
    return e as NodeJS.ErrnoException;
  }
  throw new Error('expected an error');
}

function runChild(mode: string): Record<string, unknown> {
  const result = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', child, mode], {
    cwd: root,
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
  });
  if (result.status !== 0) {
    throw new Error(`child ${mode} exited ${result.status}: ${result.stderr}${result.stdout}`);
  }
  const line = result.stdout.trim().split('\n').at(-1) ?? '';
  return JSON.parse(line) as Record<string, unknown>;
}

function describeNative(n: VhostUserNative): void {
  const c = n.constants;
  const RW = c.PROT_READ | c.PROT_WRITE;

  // Socket files live here (a short path: sun_path holds 107 bytes).
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'virtq-native-'));
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  describe('native addon: Unix sockets with SCM_RIGHTS', () => {
    it('connects, accepts and passes a memfd and an eventfd that both ends then share', () => {
      const path = join(dir, 'roundtrip.sock');
      const listener = n.listen(path, 4);
      expect(fdFlags(listener) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
      expect(n.accept(listener)).toBe(-1); // nothing pending: EAGAIN as -1

      const client = n.connect(path);
      const server = n.accept(listener);
      expect(server).toBeGreaterThanOrEqual(0);
      expect(fdFlags(server) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
      expect(fdFlags(client) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);

      const size = 64 * 1024;
      const memfd = n.memfdCreate('virtq-roundtrip', 0);
      n.ftruncate(memfd, size);
      const kick = n.eventfd(0, c.EFD_NONBLOCK);

      const message = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
      expect(n.sendmsg(client, message, [memfd, kick])).toBe(message.length);

      const buffer = new Uint8Array(64);
      const got = n.recvmsg(server, buffer, 8);
      expect(got.bytes).toBe(message.length);
      expect(got.controlTruncated).toBe(false);
      expect(buffer.subarray(0, got.bytes)).toEqual(message);
      expect(got.fds).toHaveLength(2);
      const [theirMemfd, theirKick] = got.fds as [number, number];
      expect(theirMemfd).not.toBe(memfd);
      expect(theirKick).not.toBe(kick);
      expect(fdFlags(theirMemfd) & O_CLOEXEC).toBe(O_CLOEXEC); // MSG_CMSG_CLOEXEC

      // Both ends map the same memory: writes through one SharedArrayBuffer appear in the other.
      const mine = n.mmap(memfd, size, 0, RW);
      const theirs = n.mmap(theirMemfd, size, 0, RW);
      expect(mine).toBeInstanceOf(SharedArrayBuffer);
      expect(mine.byteLength).toBe(size);
      new Uint32Array(mine)[100] = 0xdeadbeef;
      expect(new Uint32Array(theirs)[100]).toBe(0xdeadbeef);
      Atomics.store(new Int32Array(theirs), 7, 77);
      expect(Atomics.load(new Int32Array(mine), 7)).toBe(77);
      new Uint8Array(theirs).set([9, 8, 7], size - 3);
      expect([...new Uint8Array(mine, size - 3)]).toEqual([9, 8, 7]);

      // A mapping at a page offset sees the same bytes.
      const tail = n.mmap(theirMemfd, c.PAGE_SIZE, size - c.PAGE_SIZE, c.PROT_READ);
      expect([...new Uint8Array(tail, c.PAGE_SIZE - 3)]).toEqual([9, 8, 7]);

      // The eventfd too: a kick written on one descriptor is read on the other.
      expect(n.eventfdWrite(kick, 3)).toBe(true);
      expect(n.eventfdRead(theirKick)).toBe(3);
      expect(n.eventfdRead(kick)).toBe(-1);

      expect(n.recvmsg(server, buffer, 8)).toEqual({ bytes: -1, fds: [], controlTruncated: false });
      n.close(client);
      expect(n.recvmsg(server, buffer, 8).bytes).toBe(0); // end of stream

      for (const fd of [server, listener, memfd, kick, theirMemfd, theirKick]) n.close(fd);
    });

    it('reports control data truncated when more descriptors come than maxFds', () => {
      const [a, b] = n.socketpair();
      const e = [0, 1, 2].map(() => n.eventfd(0, c.EFD_NONBLOCK));
      const buffer = new Uint8Array(16);

      n.sendmsg(a, new Uint8Array([1]), e);
      const one = n.recvmsg(b, buffer, 1);
      expect(one.bytes).toBe(1);
      expect(one.fds).toHaveLength(1);
      expect(one.controlTruncated).toBe(true);

      n.sendmsg(a, new Uint8Array([2]), e);
      const none = n.recvmsg(b, buffer, 0);
      expect(none).toEqual({ bytes: 1, fds: [], controlTruncated: true });

      n.sendmsg(a, new Uint8Array([3]), e);
      const all = n.recvmsg(b, buffer, c.MAX_FDS_PER_MESSAGE);
      expect(all.fds).toHaveLength(3);
      expect(all.controlTruncated).toBe(false);

      for (const fd of [a, b, ...e, ...one.fds, ...all.fds]) n.close(fd);
    });

    it('reads into any ArrayBufferView, a SharedArrayBuffer view included, at its offset', () => {
      const [a, b] = n.socketpair();
      n.sendmsg(a, new DataView(new Uint8Array([0, 5, 6, 7, 0]).buffer, 1, 3), []);
      const shared = new Uint8Array(new SharedArrayBuffer(16));
      expect(n.recvmsg(b, shared.subarray(4, 8), 0).bytes).toBe(3);
      expect([...shared.subarray(0, 8)]).toEqual([0, 0, 0, 0, 5, 6, 7, 0]);
      n.close(a);
      n.close(b);
    });

    it('returns -1 from sendmsg when the socket buffer is full, and shutdown ends the stream', () => {
      const [a, b] = n.socketpair();
      const chunk = new Uint8Array(64 * 1024);
      let sent = 0;
      let result = 0;
      for (let i = 0; i < 10_000 && result !== -1; i++) {
        result = n.sendmsg(a, chunk, []);
        if (result > 0) sent += result;
      }
      expect(result).toBe(-1);
      expect(sent).toBeGreaterThan(0);
      n.shutdown(a, c.SHUT_WR);
      const buffer = new Uint8Array(chunk.length);
      let received = 0;
      for (let r = n.recvmsg(b, buffer, 0); r.bytes !== 0; r = n.recvmsg(b, buffer, 0)) {
        expect(r.bytes).toBeGreaterThan(0);
        received += r.bytes;
      }
      expect(received).toBe(sent);
      n.close(a);
      n.close(b);
    });

    it('toggles O_NONBLOCK', () => {
      const [a, b] = n.socketpair();
      n.setNonBlocking(a, false);
      expect(fdFlags(a) & O_NONBLOCK).toBe(0);
      n.setNonBlocking(a, true);
      expect(fdFlags(a) & O_NONBLOCK).toBe(O_NONBLOCK);
      n.close(a);
      n.close(b);
    });
  });

  describe('native addon: eventfd', () => {
    it('adds writes up, reads and resets, and reports an empty counter as -1', () => {
      const fd = n.eventfd(2, c.EFD_NONBLOCK);
      expect(fdFlags(fd) & (O_CLOEXEC | O_NONBLOCK)).toBe(O_CLOEXEC | O_NONBLOCK);
      n.eventfdWrite(fd, 5);
      n.eventfdWrite(fd, 7n);
      expect(n.eventfdRead(fd)).toBe(14);
      expect(n.eventfdRead(fd)).toBe(-1);
      n.close(fd);
    });

    it('counts down by one in semaphore mode', () => {
      const fd = n.eventfd(0, c.EFD_NONBLOCK | c.EFD_SEMAPHORE);
      n.eventfdWrite(fd, 3);
      expect([n.eventfdRead(fd), n.eventfdRead(fd), n.eventfdRead(fd), n.eventfdRead(fd)]).toEqual([
        1, 1, 1, -1,
      ]);
      n.close(fd);
    });

    it('returns large counters as bigint and refuses to overflow', () => {
      const fd = n.eventfd(0, c.EFD_NONBLOCK);
      expect(n.eventfdWrite(fd, 2n ** 60n)).toBe(true);
      expect(n.eventfdRead(fd)).toBe(2n ** 60n);
      expect(n.eventfdWrite(fd, 2n ** 64n - 2n)).toBe(true);
      expect(n.eventfdWrite(fd, 1)).toBe(false); // would overflow: EAGAIN
      expect(() => n.eventfdWrite(fd, 2n ** 64n - 1n)).toThrow(RangeError);
      n.close(fd);
    });
  });

  describe('native addon: memfd seals', () => {
    it('adds and reads seals; a sealed memfd refuses to shrink', () => {
      const fd = n.memfdCreate('virtq-seals', c.MFD_ALLOW_SEALING);
      n.ftruncate(fd, 8192);
      n.addSeals(fd, c.F_SEAL_SHRINK | c.F_SEAL_GROW);
      expect(n.getSeals(fd) & (c.F_SEAL_SHRINK | c.F_SEAL_GROW)).toBe(
        c.F_SEAL_SHRINK | c.F_SEAL_GROW,
      );
      expect(errorOf(() => n.ftruncate(fd, 4096)).code).toBe('EPERM');
      n.close(fd);
      const unsealable = n.memfdCreate('virtq-no-seals', 0);
      expect(n.getSeals(unsealable) & c.F_SEAL_SEAL).toBe(c.F_SEAL_SEAL);
      n.close(unsealable);
    });
  });

  describe('native addon: fallocate', () => {
    it('punches a hole that reads back as zeroes, keeping the size', () => {
      const fd = n.memfdCreate('virtq-falloc', 0);
      n.ftruncate(fd, 4 * 4096);
      const map = new Uint8Array(n.mmap(fd, 4 * 4096, 0, c.PROT_READ | c.PROT_WRITE));
      map.fill(0xab);
      n.fallocate(fd, c.FALLOC_FL_PUNCH_HOLE | c.FALLOC_FL_KEEP_SIZE, 4096, 8192);
      expect(map.subarray(0, 4096).every((b) => b === 0xab)).toBe(true);
      expect(map.subarray(4096, 3 * 4096).every((b) => b === 0)).toBe(true);
      expect(map.subarray(3 * 4096).every((b) => b === 0xab)).toBe(true);
      // Punching without KEEP_SIZE is refused by the kernel; bad arguments never reach it.
      // (EOPNOTSUPP, which Node names ENOTSUP: the two are one value on Linux.)
      expect(['EOPNOTSUPP', 'ENOTSUP']).toContain(
        errorOf(() => n.fallocate(fd, c.FALLOC_FL_PUNCH_HOLE, 0, 4096)).code,
      );
      expect(() => n.fallocate(fd, 0, -1, 4096)).toThrow(RangeError);
      expect(() => n.fallocate(fd, 0, 0, 0)).toThrow(RangeError);
      n.close(fd);
    });
  });

  describe('native addon: watchers on the event loop', () => {
    it('calls back on the event loop with the ready events, and never after stop()', async () => {
      const fd = n.eventfd(0, c.EFD_NONBLOCK);
      const calls: Array<{ error: unknown; events: number; value: number | bigint }> = [];
      let self: FdWatcher | undefined;
      let fired!: () => void;
      let firing = new Promise<void>((resolve) => {
        fired = resolve;
      });
      const watcher = n.watch(fd, c.POLL_READABLE, function (error, events) {
        self = this;
        calls.push({ error, events, value: n.eventfdRead(fd) });
        fired();
      });
      expect(watcher.active).toBe(true);
      let synchronous = true;
      n.eventfdWrite(fd, 9);
      expect(calls).toHaveLength(0); // never called from inside eventfdWrite
      synchronous = false;
      await firing;
      expect(synchronous).toBe(false);
      expect(calls).toEqual([{ error: null, events: c.POLL_READABLE, value: 9 }]);
      expect(self).toBe(watcher);

      firing = new Promise<void>((resolve) => {
        fired = resolve;
      });
      n.eventfdWrite(fd, 1);
      await firing;
      expect(calls).toHaveLength(2);

      watcher.stop();
      watcher.stop(); // idempotent
      expect(watcher.active).toBe(false);
      n.eventfdWrite(fd, 1);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(calls).toHaveLength(2);
      expect(() => watcher.update(c.POLL_READABLE)).toThrow(/stopped/);
      n.close(fd);
    });

    it('switches events with update() and returns itself from ref() and unref()', async () => {
      const [a, b] = n.socketpair();
      const seen: number[] = [];
      let fired!: () => void;
      let firing = new Promise<void>((resolve) => {
        fired = resolve;
      });
      const watcher = n.watch(a, c.POLL_WRITABLE, (error, events) => {
        expect(error).toBeNull();
        seen.push(events);
        watcher.update(c.POLL_READABLE);
        fired();
      });
      expect(watcher.unref()).toBe(watcher);
      expect(watcher.ref()).toBe(watcher);
      await firing;
      expect(seen).toEqual([c.POLL_WRITABLE]);

      firing = new Promise<void>((resolve) => {
        fired = resolve;
      });
      n.sendmsg(b, new Uint8Array([1]), []);
      await firing;
      expect(seen[1]! & c.POLL_READABLE).toBe(c.POLL_READABLE);
      watcher.stop();
      n.close(a);
      n.close(b);
    });

    it('keeps an active watcher alive without a reference from JavaScript', async () => {
      const fd = n.eventfd(0, c.EFD_NONBLOCK);
      let fired!: (value: number | bigint) => void;
      const firing = new Promise<number | bigint>((resolve) => {
        fired = resolve;
      });
      (() => {
        n.watch(fd, c.POLL_READABLE, function () {
          this.stop();
          fired(n.eventfdRead(fd));
        });
      })();
      setFlagsFromString('--expose-gc');
      (runInNewContext('gc') as () => void)();
      await new Promise((resolve) => setTimeout(resolve, 10));
      n.eventfdWrite(fd, 4);
      expect(await firing).toBe(4);
      n.close(fd);
    });

    it('fires while the only threadpool thread is blocked (no threadpool use, 64 watchers)', () => {
      const result = runChild('threadpool');
      expect(result).toEqual({
        fired: 64,
        drained: (64 * 65) / 2,
        poolWasBusy: true,
        readDone: true,
        statDone: true,
      });
    });

    it('reports a callback that throws as an uncaught exception', () => {
      expect(runChild('uncaught')).toEqual({ message: 'thrown by a watcher', stillRunning: true });
    });

    it('closes active watchers when a worker ends, without crashing the process', async () => {
      const script = `
        const { parentPort } = require('node:worker_threads');
        const n = require(${JSON.stringify(nativeAddonPath())});
        for (let i = 0; i < 8; i++) {
          const fd = n.eventfd(1, n.constants.EFD_NONBLOCK); // readable: fires until drained
          n.watch(fd, n.constants.POLL_READABLE, () => {});
        }
        const fd = n.eventfd(0, n.constants.EFD_NONBLOCK);
        n.watch(fd, n.constants.POLL_READABLE, () => {}).unref();
        parentPort.postMessage('ready');
      `;
      for (let i = 0; i < 5; i++) {
        const worker = new Worker(script, { eval: true });
        await new Promise((resolve) => worker.once('message', resolve));
        expect(await worker.terminate()).toBe(1);
      }
      // A worker whose only watcher is unref()'d ends by itself.
      const selfEnding = new Worker(
        `const n = require(${JSON.stringify(nativeAddonPath())});
         n.watch(n.eventfd(0, n.constants.EFD_NONBLOCK), n.constants.POLL_READABLE, () => {}).unref();`,
        { eval: true },
      );
      expect(await new Promise((resolve) => selfEnding.once('exit', resolve))).toBe(0);
    });
  });

  describe('native addon: mmap lifetime', () => {
    it('unmaps when the last SharedArrayBuffer is collected (child with --expose-gc)', () => {
      const result = runChild('gc');
      expect(result).toMatchObject({
        seenByLast: 0x5a,
        mapped: 64,
        mappedBytes: 64 << 20,
        mappedInMaps: 64,
        afterGc: 0,
        afterGcBytes: 0,
        afterGcInMaps: 0,
        whileWorkerHolds: 1,
        workerRead: 4242,
        finalInMaps: 0,
      });
      expect(result.rounds).toBeGreaterThan(0);
      expect(result.workerRounds).toBeGreaterThan(0);
    });
  });

  describe('native addon: errors', () => {
    it('carries code, errno, syscall and path like Node errors', () => {
      const missing = join(dir, 'nobody.sock');
      const e = errorOf(() => n.connect(missing));
      expect(e).toBeInstanceOf(Error);
      expect(e.code).toBe('ENOENT');
      expect(e.errno).toBe(-2);
      expect(e.syscall).toBe('connect');
      expect(e.path).toBe(missing);
      expect(e.message).toBe(`ENOENT: no such file or directory, connect '${missing}'`);

      const bad = errorOf(() => n.close(1 << 30));
      expect([bad.code, bad.errno, bad.syscall]).toEqual(['EBADF', -9, 'close']);
    });

    it('names the failure of each call', () => {
      const path = join(dir, 'taken.sock');
      const listener = n.listen(path, 1);
      expect(errorOf(() => n.listen(path, 1)).code).toBe('EADDRINUSE');
      n.close(listener);
      expect(errorOf(() => n.connect(path)).code).toBe('ECONNREFUSED');
      writeFileSync(join(dir, 'plain'), 'x');
      expect(errorOf(() => n.connect(join(dir, 'plain'))).code).toBe('ECONNREFUSED');
      expect(errorOf(() => n.listen(`/tmp/${'x'.repeat(120)}`, 1)).code).toBe('ENAMETOOLONG');

      const efd = n.eventfd(0, c.EFD_NONBLOCK);
      expect(errorOf(() => n.mmap(efd, 4096, 0, RW)).code).toBe('ENODEV');
      expect(errorOf(() => n.recvmsg(efd, new Uint8Array(8), 1)).code).toBe('ENOTSOCK');
      expect(errorOf(() => n.accept(efd)).code).toBe('ENOTSOCK');
      const memfd = n.memfdCreate('virtq-err', 0);
      n.ftruncate(memfd, 8192);
      expect(errorOf(() => n.mmap(memfd, 4096, 100, RW)).code).toBe('EINVAL'); // unaligned
      const closed = n.eventfd(0, 0);
      n.close(closed);
      const w = errorOf(() => n.watch(closed, c.POLL_READABLE, () => {}));
      expect([w.code, w.syscall]).toEqual(['EBADF', 'uv_poll_init']);
      const [a, b] = n.socketpair();
      n.close(b);
      expect(errorOf(() => n.sendmsg(a, new Uint8Array(1), [])).code).toBe('EPIPE');
      for (const fd of [efd, memfd, a]) n.close(fd);
    });

    it('throws TypeError or RangeError for arguments that could never be valid', () => {
      const bad = (f: () => unknown) => errorOf(f).constructor;
      expect(bad(() => n.close('3' as unknown as number))).toBe(TypeError);
      expect(bad(() => n.close(-1))).toBe(RangeError);
      expect(bad(() => n.close(1.5))).toBe(RangeError);
      expect(bad(() => n.listen('a\0b', 1))).toBe(TypeError);
      expect(bad(() => n.recvmsg(0, [1, 2] as unknown as Uint8Array, 1))).toBe(TypeError);
      expect(bad(() => n.recvmsg(0, new Uint8Array(1), c.MAX_FDS_PER_MESSAGE + 1))).toBe(
        RangeError,
      );
      expect(bad(() => n.recvmsg(0, new Uint8Array(0), 1))).toBe(RangeError);
      expect(bad(() => n.sendmsg(0, new Uint8Array(0), []))).toBe(RangeError);
      expect(bad(() => n.sendmsg(0, new Uint8Array(1), [-1]))).toBe(TypeError);
      expect(bad(() => n.sendmsg(0, new Uint8Array(1), new Array(254).fill(0)))).toBe(RangeError);
      expect(bad(() => n.mmap(0, 0, 0, RW))).toBe(RangeError);
      expect(bad(() => n.mmap(0, 4096, 0, c.PROT_WRITE))).toBe(RangeError);
      expect(bad(() => n.eventfd(0, 1 << 20))).toBe(RangeError);
      expect(bad(() => n.eventfdWrite(0, -1))).toBe(RangeError);
      expect(bad(() => n.watch(0, 1 << 8, () => {}))).toBe(RangeError);
      expect(bad(() => n.watch(0, c.POLL_READABLE, 'f' as unknown as () => void))).toBe(TypeError);
    });
  });
}
