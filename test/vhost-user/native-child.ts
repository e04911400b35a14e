/**
 * Child process for native.test.ts, for what needs a process of its own: a one-thread libuv
 * threadpool, `--expose-gc`, or an uncaught exception. Run as
 * `node --expose-gc --import tsx native-child.ts <mode>` with UV_THREADPOOL_SIZE=1; prints one
 * JSON line with what it saw.
 */
import { read, readFileSync, stat } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { loadNative } from '../../src/vhost-user/index.js';

const native = loadNative();
const { EFD_NONBLOCK, POLL_READABLE, PROT_READ, PROT_WRITE } = native.constants;

function report(result: unknown): void {
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

function tick(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The only threadpool thread is held by an fs.read on a blocking eventfd (what reading a kick
 * with fs.read does), and an fs.stat queues behind it. 64 watched eventfds must still all fire.
 */
async function threadpool(): Promise<void> {
  const blocker = native.eventfd(0, 0); // blocking: fs.read waits in the pool thread
  let readDone = false;
  let statDone = false;
  read(blocker, Buffer.alloc(8), 0, 8, null, () => {
    readDone = true;
  });
  stat('.', () => {
    statDone = true;
  });
  await tick(50); // let the read reach the pool thread and block there

  const count = 64;
  const fds: number[] = [];
  let fired = 0;
  let drained = 0;
  const allFired = new Promise<void>((resolve) => {
    for (let i = 0; i < count; i++) {
      const fd = native.eventfd(0, EFD_NONBLOCK);
      fds.push(fd);
      const watcher = native.watch(fd, POLL_READABLE, (error) => {
        if (error) throw error;
        drained += Number(native.eventfdRead(fd));
        watcher.stop();
        if (++fired === count) resolve();
      });
    }
  });
  for (let i = 0; i < count; i++) native.eventfdWrite(fds[i]!, i + 1);
  const timeout = setTimeout(() => {
    report({ error: `only ${fired} of ${count} watchers fired` });
    process.exit(1);
  }, 10_000);
  await allFired;
  clearTimeout(timeout);
  const poolWasBusy = !readDone && !statDone;

  native.eventfdWrite(blocker, 1); // release the pool thread
  while (!readDone || !statDone) await tick(5);
  for (const fd of fds) native.close(fd);
  native.close(blocker);
  report({ fired, drained, poolWasBusy, readDone, statDone });
}

function mapsMentioning(name: string): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes(`memfd:${name}`)).length;
}

async function collect(until: () => boolean, rounds = 100): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with --expose-gc');
  for (let round = 1; round <= rounds; round++) {
    gc();
    await tick(round < 10 ? 0 : 10);
    if (until()) return round;
  }
  return -1;
}

/**
 * 64 mappings become unreachable and are unmapped by their deleters (counted by the addon and
 * seen gone from /proc/self/maps). A mapping shared with a worker stays mapped until the worker
 * lets it go too.
 */
async function gc(): Promise<void> {
  const name = 'virtq-gc-probe';
  const size = 1 << 20;
  const fd = native.memfdCreate(name, 0);
  native.ftruncate(fd, size);

  const before = native.mappingStats();
  let buffers: SharedArrayBuffer[] = [];
  for (let i = 0; i < 64; i++) buffers.push(native.mmap(fd, size, 0, PROT_READ | PROT_WRITE));
  new Uint8Array(buffers[0]!)[size - 1] = 0x5a;
  const seenByLast = new Uint8Array(buffers[63]!)[size - 1];
  const mapped = native.mappingStats();
  const mappedInMaps = mapsMentioning(name);
  buffers = [];
  const rounds = await collect(() => native.mappingStats().count === before.count);
  const afterGc = native.mappingStats();
  const afterGcInMaps = mapsMentioning(name);

  // A buffer handed to a worker: main drops its reference, the worker still reads it.
  let shared: SharedArrayBuffer | null = native.mmap(fd, size, 0, PROT_READ | PROT_WRITE);
  new Int32Array(shared)[0] = 4242;
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     parentPort.once('message', (sab) => {
       parentPort.once('message', () => parentPort.postMessage(Atomics.load(new Int32Array(sab), 0)));
       parentPort.postMessage('got it');
     });`,
    { eval: true },
  );
  worker.postMessage(shared);
  await new Promise((resolve) => worker.once('message', resolve));
  shared = null;
  await collect(() => false, 20); // plenty of collections in main
  const whileWorkerHolds = native.mappingStats().count - before.count;
  worker.postMessage('read');
  const workerRead = await new Promise((resolve) => worker.once('message', resolve));
  await worker.terminate();
  const workerRounds = await collect(() => native.mappingStats().count === before.count);
  native.close(fd);
  report({
    seenByLast,
    mapped: mapped.count - before.count,
    mappedBytes: mapped.bytes - before.bytes,
    mappedInMaps,
    rounds,
    afterGc: afterGc.count - before.count,
    afterGcBytes: afterGc.bytes - before.bytes,
    afterGcInMaps,
    whileWorkerHolds,
    workerRead,
    workerRounds,
    finalInMaps: mapsMentioning(name),
  });
}

/** A watcher callback that throws raises an uncaught exception, and the process goes on. */
async function uncaught(): Promise<void> {
  const fd = native.eventfd(0, EFD_NONBLOCK);
  const caught = new Promise<string>((resolve) => {
    process.once('uncaughtException', (error) => resolve(error.message));
  });
  const watcher = native.watch(fd, POLL_READABLE, () => {
    native.eventfdRead(fd);
    watcher.stop();
    throw new Error('thrown by a watcher');
  });
  native.eventfdWrite(fd, 1);
  const message = await caught;
  await tick(10);
  native.close(fd);
  report({ message, stillRunning: true });
}

const modes: Record<string, () => Promise<void>> = { threadpool, gc, uncaught };
const mode = modes[process.argv[2] ?? ''];
if (mode === undefined) throw new Error(`unknown mode ${process.argv[2]}`);
await mode();
