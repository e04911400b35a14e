/**
 * A protocol fuzzer for the vhost-user back-end over a real Unix socket: random and mutated
 * messages, with real fds, against a VhostUserBackend serving a block device; after every
 * case the back-end must still serve a clean front-end (negotiation, memory table, a ring, a
 * block write and read-back), hold no fd it did not hold before, and never have logged an
 * internal error.
 *
 * The back-end runs in a child process (`node --import tsx -e CHILD_SOURCE`), so that a crash
 * (SIGBUS on a bad mapping, an uncaught exception in a watcher) or a hang (a loop that never
 * returns to the event loop) fails the case that caused it instead of taking down or freezing
 * the test worker. The child reports its logger output, connects and disconnects over IPC and
 * answers probes with its open fds (/proc/self/fd, after a gc) and counters.
 *
 * Generators (fast-check):
 * - `random`: random bytes, and random headers (any request number, flags and size field) with
 *   random payloads, random fds and random cuts into several sendmsg calls, optionally after a
 *   valid negotiation.
 * - `well-formed`: a message of every request type the codec knows, plus unknown request
 *   numbers, with random field values and real fds (memfds of every shape, eventfds,
 *   /dev/zero, a directory, a socket), after no prelude, a negotiation, or a running ring.
 * - `mutated session`: the session QEMU runs (split or packed ring, EVENT_IDX, INDIRECT_DESC),
 *   with a random tail (ring stop, enable toggles, memory hot-plug, resets, config access),
 *   then bit flips, truncations, extensions, wrong size fields, wrong, missing or extra fds,
 *   NEED_REPLY toggled, duplicated, swapped and dropped messages and messages cut into pieces;
 *   and, for some, hostile ring contents written into the shared guest memory and kicked.
 *
 * Per message the fuzzer frames the byte stream exactly as the back-end does (decodeHeader):
 * a header the back-end must refuse must close the connection, and a request whose reply the
 * front-end always waits for (GET_FEATURES, GET_VRING_BASE, GET_CONFIG...) must be answered or
 * the connection closed, within a deadline. Every reply must be well-formed and answer a
 * request that was sent.
 *
 * Environment: VIRTQ_SOCKET_FUZZ_RUNS=n runs n cases per generator (defaults below, about 30 s
 * in all); VIRTQ_SOCKET_FUZZ_SEED=s changes the seed (default fixed); a failure prints the seed
 * and fast-check's path: VIRTQ_SOCKET_FUZZ_SEED=s VIRTQ_SOCKET_FUZZ_PATH=p replays that case
 * (add `-t '<generator name>'`), VIRTQ_SOCKET_FUZZ_SHRINK=1 shrinks it to a minimal one.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SplitDriver } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { splitLayout } from '../../src/queue/split/layout.js';
import {
  decodeHeader,
  type FdWatcher,
  isNativeAvailable,
  loadNative,
  requestName,
  VhostUserFlags,
  type VhostUserNative,
  VhostUserProtocolFeature,
} from '../../src/vhost-user/index.js';
import {
  concat,
  encode,
  HALF,
  memTable,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  QSIZE,
  R,
  RAM,
  REGION1_GPA,
  RING_GPA,
  u32s,
  u64,
  VERSION_1,
  vringAddr,
} from './frontend.js';

// ---------------------------------------------------------------------------------------------
// Configuration

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name}=${raw}: not an integer`);
  return value;
}

const SEED = envInt('VIRTQ_SOCKET_FUZZ_SEED', 0x5f0c_4e75);
const RUNS = envInt('VIRTQ_SOCKET_FUZZ_RUNS', 0);
const REPLAY_PATH = process.env.VIRTQ_SOCKET_FUZZ_PATH;
const SHRINK = process.env.VIRTQ_SOCKET_FUZZ_SHRINK === '1';
/** Cases per generator in the default run (about 30 s on a 2-core machine). */
const DEFAULT_RUNS = { random: 400, wellFormed: 450, session: 450 };

/** How long the back-end may take to answer a request (or to close) before it counts as hung. */
const ANSWER_MS = 3000;
/** How long a whole clean session may take. */
const CLEAN_MS = 10_000;

const NEED = VhostUserFlags.VERSION | VhostUserFlags.NEED_REPLY;
const REPLY_FLAGS = VhostUserFlags.VERSION | VhostUserFlags.REPLY;
const MAX_U64 = (1n << 64n) - 1n;
const DISK_BYTES = 64 * 1024;
const LAYOUT = splitLayout(RING_GPA, QSIZE);
const RING_BYTES = LAYOUT.end - LAYOUT.desc;
const F_INDIRECT = 1n << 28n;
const F_EVENT_IDX = 1n << 29n;
const F_PACKED = 1n << 34n;
const F_LOG_ALL = 1n << 26n;

/**
 * Requests the front-end always waits for an answer to: the back-end must answer them or
 * close the connection. (SET_LOG_BASE is answered only with LOG_SHMFD, so it is left out.)
 */
const MUST_ANSWER: ReadonlySet<number> = new Set([
  R.GET_FEATURES,
  R.GET_PROTOCOL_FEATURES,
  R.GET_QUEUE_NUM,
  R.GET_VRING_BASE,
  R.GET_CONFIG,
  R.GET_MAX_MEM_SLOTS,
  R.GET_INFLIGHT_FD,
  R.GET_STATUS,
]);

const INTERNAL_ERROR = 'vhost-user: internal error while handling a request';

// ---------------------------------------------------------------------------------------------
// The back-end's process

/** Runs in the child: a block device served on VIRTQ_FUZZ_SOCKET, reporting over IPC. */
const CHILD_SOURCE = `
const env = process.env;
const { VhostUserBackend, loadNative } = await import(env.VIRTQ_FUZZ_VHOST_USER);
const { BlockDevice, MemoryBackend } = await import(env.VIRTQ_FUZZ_DEVICES);
const { readdirSync, readlinkSync } = await import('node:fs');
const send = (m) =>
  process.send(JSON.stringify(m, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
const logger = {
  warn(msg, fields) {
    send({ t: 'log', msg, fields: fields ?? null });
  },
};
const native = loadNative();
const device = new BlockDevice({
  backend: new MemoryBackend(new Uint8Array(${DISK_BYTES})),
  queueSize: 64,
  logger,
});
const backend = new VhostUserBackend(device, {
  native,
  logger,
  onConnect: () => send({ t: 'connect' }),
  onDisconnect: (reason) => send({ t: 'disconnect', reason }),
});
backend.listen(env.VIRTQ_FUZZ_SOCKET);
process.on('disconnect', () => process.exit(0));
process.on('message', (raw) => {
  const m = JSON.parse(raw);
  if (m.t !== 'probe') return;
  globalThis.gc?.();
  const fds = [];
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync('/proc/self/fd/' + name);
      // tsx opens its cache directory now and then while it loads modules: not the
      // back-end's (a probe once caught it open at the baseline and closed later).
      if (!target.startsWith('/tmp/tsx-')) fds.push(target);
    } catch {
      // readdir's own descriptor, closed by now
    }
  }
  send({
    t: 'probe',
    id: m.id,
    fds: fds.sort(),
    connected: backend.connected,
    stats: backend.stats,
    mappings: native.mappingStats(),
  });
});
send({ t: 'ready' });
`;

interface Probe {
  fds: string[];
  connected: boolean;
  stats: { connections: number; messages: number; rejected: number; kicks: number; calls: number };
  mappings: { count: number; bytes: number };
}

interface LogEntry {
  msg: string;
  fields: Record<string, unknown> | null;
}

// Wakes every waitUntil (watchers and IPC messages call it).
const waiters = new Set<() => void>();
function wake(): void {
  for (const w of [...waiters]) w();
}

/** Resolves true once `cond` holds, false after `ms` without it. */
function waitUntil(cond: () => boolean, ms: number): Promise<boolean> {
  if (cond()) return Promise.resolve(true);
  return new Promise((resolve) => {
    const check = (): void => {
      if (cond()) done(true);
    };
    const timer = setTimeout(() => done(cond()), ms);
    function done(value: boolean): void {
      clearTimeout(timer);
      waiters.delete(check);
      resolve(value);
    }
    waiters.add(check);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

class BackendProcess {
  readonly logs: LogEntry[] = [];
  readonly disconnects: string[] = [];
  connects = 0;
  exit: string | null = null;
  output = '';
  private ready = false;
  private killed = false;
  private nextProbe = 0;
  private readonly probes = new Map<number, Probe>();

  private constructor(
    readonly proc: ChildProcess,
    readonly socket: string,
  ) {}

  static async start(socket: string): Promise<BackendProcess> {
    const proc = spawn(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', CHILD_SOURCE],
      {
        env: {
          ...process.env,
          VIRTQ_FUZZ_SOCKET: socket,
          VIRTQ_FUZZ_VHOST_USER: fileURLToPath(
            new URL('../../src/vhost-user/index.ts', import.meta.url),
          ),
          VIRTQ_FUZZ_DEVICES: fileURLToPath(new URL('../../src/devices/index.ts', import.meta.url)),
        },
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      },
    );
    const child = new BackendProcess(proc, socket);
    const keep = (chunk: Buffer): void => {
      child.output = (child.output + chunk.toString()).slice(-8000);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    proc.on('exit', (code, signal) => {
      child.exit = signal !== null ? `killed by ${signal}` : `exited with code ${code}`;
      wake();
    });
    proc.on('message', (raw) => {
      const m = JSON.parse(String(raw)) as { t: string } & Record<string, unknown>;
      if (m.t === 'ready') child.ready = true;
      else if (m.t === 'log') child.logs.push(m as unknown as LogEntry);
      else if (m.t === 'connect') child.connects++;
      else if (m.t === 'disconnect') child.disconnects.push(String(m.reason));
      else if (m.t === 'probe') child.probes.set(m.id as number, m as unknown as Probe);
      wake();
    });
    if (!(await waitUntil(() => child.ready || child.exit !== null, 60_000)) || !child.ready) {
      child.kill();
      throw new Error(`the back-end process did not start (${child.exit}): ${child.output}`);
    }
    return child;
  }

  get alive(): boolean {
    return this.exit === null && !this.killed;
  }

  /** Throws when the process is gone, with what it printed. */
  assertAlive(): void {
    if (this.exit !== null) {
      throw new Error(`the back-end process ${this.exit}; its last output:\n${this.output}`);
    }
  }

  async probe(): Promise<Probe> {
    this.assertAlive();
    const id = this.nextProbe++;
    this.proc.send(JSON.stringify({ t: 'probe', id }));
    await waitUntil(() => this.probes.has(id) || !this.alive, ANSWER_MS);
    this.assertAlive();
    const p = this.probes.get(id);
    if (p === undefined) throw new Error('the back-end process does not answer probes (hung?)');
    this.probes.delete(id);
    return p;
  }

  /** Waits until the back-end has accepted and dropped `opened` connections in all. */
  async idle(opened: number): Promise<void> {
    const ok = await waitUntil(() => this.disconnects.length >= opened || !this.alive, ANSWER_MS);
    this.assertAlive();
    if (!ok) {
      throw new Error(
        `the back-end still holds a connection (${this.disconnects.length} of ${opened} closed)`,
      );
    }
  }

  kill(): void {
    if (this.alive) this.proc.kill('SIGKILL');
    this.killed = true;
  }
}

// ---------------------------------------------------------------------------------------------
// Wire model: what a fuzz case sends

/** The kinds of fd a message may carry; each case gets fresh ones (see FdPool). */
const FD_KINDS = [
  'ram', // 1 MiB memfd: the fuzz session's guest RAM
  'small', // 4 KiB memfd
  'empty', // 0-byte memfd
  'sealed', // 1 MiB memfd sealed against writes (no shared writable mapping)
  'shrinkSealed', // 1 MiB memfd sealed against shrinking and growing (what QEMU sends)
  'rdonly', // the RAM memfd opened read-only
  'kick', // eventfd
  'call', // eventfd
  'devzero', // /dev/zero: always readable, reads zeroes
  'devnull', // /dev/null
  'dir', // a directory
  'sock', // one end of a socketpair
] as const;
type FdKind = (typeof FD_KINDS)[number];

/** One sendmsg-level unit: bytes (usually one message), its fds, and where to cut it. */
interface Wire {
  bytes: Uint8Array;
  fds: FdKind[];
  /** Byte offsets at which the bytes go out in separate sendmsg calls. */
  splits: number[];
  /** Which of the pieces carries the fds. */
  fdPiece: number;
}

/** A block request laid out as a driver would, with at most one field corrupted. */
interface Chain {
  type: number;
  sector: bigint;
  dataLen: number;
  dataWritable: boolean;
  /** Through an indirect table (split rings). */
  indirect: boolean;
  /** A u32 of the chain's first ring descriptor overwritten. */
  corrupt: { at: number; value: number } | null;
}

interface RingWrites {
  descs: { index: number; addr: bigint; len: number; flags: number; next: number }[];
  /** Plausible requests, written over `descs`; split: heads 0, 3, 6...; packed: in order. */
  chains: Chain[];
  availFlags: number;
  /** The published available index; null: as many as there are chains. */
  availIdx: number | null;
  heads: number[];
  usedIdx: number | null;
  headers: { at: number; type: number; sector: bigint }[];
  noise: { at: number; bytes: Uint8Array }[];
}

interface Hostile {
  /** The session negotiated VIRTIO_F_RING_PACKED (chains are written in that format). */
  packed: boolean;
  first: RingWrites;
  /** Written after the first kick, while the back-end may be reading the ring. */
  again: RingWrites | null;
  kicks: number;
}

interface FuzzCase {
  wires: Wire[];
  hostile: Hostile | null;
  /** Milliseconds to leave the connection open after the last message (default: 1). */
  linger?: number;
}

/** What a case exercised, summed per generator. */
interface Coverage {
  cases: number;
  /** The back-end closed the connection (bad header, unanswerable request...). */
  closedByBackend: number;
  /** Bad headers, each followed by the close it requires. */
  badHeaders: number;
  /** Requests the front-end waits for, answered (or answered by a close). */
  answered: number;
  /** Hostile ring contents written and kicked. */
  hostileRings: number;
  /** Used buffers the back-end signalled to fuzz cases (not counting the clean front-end). */
  fuzzCalls: number;
}

const EMPTY = new Uint8Array(0);

function wire(
  request: number,
  payload: Uint8Array = EMPTY,
  flags: number = VhostUserFlags.VERSION,
  fds: FdKind[] = [],
): Wire {
  return { bytes: encode(request, payload, flags), fds, splits: [], fdPiece: 0 };
}

function hex(bytes: Uint8Array, max = 48): string {
  const shown = Array.from(bytes.subarray(0, max), (b) => b.toString(16).padStart(2, '0'));
  return shown.join('') + (bytes.length > max ? `...(+${bytes.length - max})` : '');
}

function describeWire(w: Wire): string {
  let head = 'raw';
  if (w.bytes.length >= 12) {
    const v = new DataView(w.bytes.buffer, w.bytes.byteOffset, w.bytes.byteLength);
    const request = v.getUint32(0, true);
    head = `${requestName(request) ?? `request ${request}`} flags=0x${v
      .getUint32(4, true)
      .toString(16)} size=${v.getUint32(8, true)}`;
  }
  const fds = w.fds.length > 12 ? `${w.fds.length} x ${w.fds[0]}` : w.fds.join(',');
  const cuts = w.splits.length === 0 ? '' : ` cut at ${w.splits.join(',')} (fds on ${w.fdPiece})`;
  return `${head} len=${w.bytes.length} fds=[${fds}]${cuts} ${hex(w.bytes.subarray(12))}`;
}

function describeCase(c: FuzzCase): string {
  const lines = c.wires.map((w, i) => `  ${i}: ${describeWire(w)}`);
  if (c.hostile !== null) lines.push(`  hostile ring: ${JSON.stringify(c.hostile, jsonSafe)}`);
  return lines.join('\n');
}

function jsonSafe(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return `0x${value.toString(16)}`;
  if (value instanceof Uint8Array) return hex(value, 64);
  return value;
}

// ---------------------------------------------------------------------------------------------
// Per-case fds

class FdPool {
  readonly fd: Record<FdKind, number>;
  /** The 'ram' memfd as this process maps it (for hostile ring contents). */
  readonly ram: DataView;
  private readonly owned: number[] = [];

  constructor(
    private readonly n: VhostUserNative,
    shared: { devzero: number; devnull: number; dir: number },
  ) {
    const c = n.constants;
    const memfd = (name: string, size: number, seals = 0): number => {
      const fd = n.memfdCreate(name, seals === 0 ? 0 : c.MFD_ALLOW_SEALING);
      this.owned.push(fd);
      n.ftruncate(fd, size);
      if (seals !== 0) n.addSeals(fd, seals);
      return fd;
    };
    const ram = memfd('fuzz-ram', RAM);
    const rdonly = openSync(`/proc/self/fd/${ram}`, 'r');
    this.owned.push(rdonly);
    const kick = n.eventfd(0, c.EFD_NONBLOCK);
    const call = n.eventfd(0, c.EFD_NONBLOCK);
    const [sockA, sockB] = n.socketpair();
    this.owned.push(kick, call, sockA, sockB);
    this.fd = {
      ram,
      small: memfd('fuzz-small', 4096),
      empty: memfd('fuzz-empty', 0),
      sealed: memfd('fuzz-sealed', RAM, c.F_SEAL_WRITE | c.F_SEAL_SHRINK | c.F_SEAL_GROW),
      shrinkSealed: memfd('fuzz-shrink-sealed', RAM, c.F_SEAL_SHRINK | c.F_SEAL_GROW),
      rdonly,
      kick,
      call,
      devzero: shared.devzero,
      devnull: shared.devnull,
      dir: shared.dir,
      sock: sockA,
    };
    this.ram = new DataView(n.mmap(ram, RAM, 0, c.PROT_READ | c.PROT_WRITE));
  }

  close(): void {
    for (const fd of this.owned.splice(0)) this.n.close(fd);
  }
}

/** Offset in the 'ram' memfd of guest address `gpa` (memTable(): two halves of the file). */
function ramOffset(gpa: number): number | null {
  if (gpa >= 0 && gpa < HALF) return gpa;
  if (gpa >= REGION1_GPA && gpa < REGION1_GPA + HALF) return HALF + (gpa - REGION1_GPA);
  return null;
}

const DESC_NEXT = 1;
const DESC_WRITE = 2;
const DESC_INDIRECT = 4;
const PACKED_AVAIL = 1 << 7;

function writeChains(ram: DataView, chains: Chain[], packed: boolean): void {
  const desc = ramOffset(LAYOUT.desc)!;
  const put = (off: number, d: { addr: number; len: number; flags: number; next: number }) => {
    ram.setBigUint64(off, BigInt(d.addr), true);
    ram.setUint32(off + 8, d.len, true);
    ram.setUint16(off + 12, d.flags, true);
    ram.setUint16(off + 14, d.next, true);
  };
  let slot = 0;
  chains.forEach((ch, i) => {
    const hdr = 0x1000 + 0x40 * i;
    const status = 0x3000 + i;
    const data = 0x4000 + 0x2000 * i;
    ram.setUint32(hdr, ch.type, true);
    ram.setUint32(hdr + 4, 0, true);
    ram.setBigUint64(hdr + 8, ch.sector, true);
    ram.setUint8(status, 0xff);
    const parts = [
      { addr: hdr, len: 16, write: false },
      ...(ch.dataLen > 0 ? [{ addr: data, len: ch.dataLen, write: ch.dataWritable }] : []),
      { addr: status, len: 1, write: true },
    ];
    const first = slot;
    if (packed) {
      // Packed: consecutive slots, the buffer id in every one, AVAIL set for wrap counter 1.
      parts.forEach((p, k) => {
        const last = k === parts.length - 1;
        const flags = (last ? 0 : DESC_NEXT) | (p.write ? DESC_WRITE : 0) | PACKED_AVAIL;
        // id (u16 at 12) and flags (u16 at 14) of the packed layout.
        put(desc + 16 * ((slot + k) % QSIZE), { addr: p.addr, len: p.len, flags: i, next: flags });
      });
      slot += parts.length;
    } else if (ch.indirect) {
      const table = 0x20000 + 0x100 * i;
      parts.forEach((p, k) => {
        const last = k === parts.length - 1;
        const flags = (last ? 0 : DESC_NEXT) | (p.write ? DESC_WRITE : 0);
        put(table + 16 * k, { addr: p.addr, len: p.len, flags, next: k + 1 });
      });
      put(desc + 16 * (3 * i), {
        addr: table,
        len: 16 * parts.length,
        flags: DESC_INDIRECT,
        next: 0,
      });
    } else {
      parts.forEach((p, k) => {
        const last = k === parts.length - 1;
        const flags = (last ? 0 : DESC_NEXT) | (p.write ? DESC_WRITE : 0);
        put(desc + 16 * (3 * i + k), { addr: p.addr, len: p.len, flags, next: 3 * i + k + 1 });
      });
    }
    if (!packed) ram.setUint16(ramOffset(LAYOUT.avail)! + 4 + 2 * i, 3 * i, true);
    if (ch.corrupt !== null) {
      const at = packed ? first : 3 * i;
      ram.setUint32(desc + 16 * (at % QSIZE) + 4 * (ch.corrupt.at % 4), ch.corrupt.value, true);
    }
  });
}

function writeRing(ram: DataView, w: RingWrites, packed: boolean): void {
  const at = (gpa: number, bytes: number): number | null => {
    const off = ramOffset(gpa);
    return off === null || off + bytes > RAM ? null : off;
  };
  for (const d of w.descs) {
    const off = at(LAYOUT.desc + 16 * d.index, 16);
    if (off === null) continue;
    ram.setBigUint64(off, d.addr, true);
    ram.setUint32(off + 8, d.len, true);
    ram.setUint16(off + 12, d.flags, true);
    ram.setUint16(off + 14, d.next, true);
  }
  const avail = ramOffset(LAYOUT.avail)!;
  ram.setUint16(avail, w.availFlags, true);
  w.heads.forEach((head, i) => {
    ram.setUint16(avail + 4 + 2 * (i % QSIZE), head, true);
  });
  if (w.usedIdx !== null) ram.setUint16(ramOffset(LAYOUT.used)! + 2, w.usedIdx, true);
  writeChains(ram, w.chains, packed);
  for (const h of w.headers) {
    ram.setUint32(h.at, h.type, true);
    ram.setUint32(h.at + 4, 0, true);
    ram.setBigUint64(h.at + 8, h.sector, true);
  }
  for (const z of w.noise) {
    const off = ramOffset(LAYOUT.desc + z.at)!;
    const bytes = z.bytes.subarray(0, RAM - off);
    new Uint8Array(ram.buffer, off, bytes.length).set(bytes);
  }
  // The index last: it publishes the entries (as a driver would, or not).
  ram.setUint16(avail + 2, w.availIdx ?? w.chains.length, true);
}

// ---------------------------------------------------------------------------------------------
// The front-end side of one connection

interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** The back-end's framing of the byte stream, replayed on the sending side (decodeHeader). */
type FrameEvent =
  | { kind: 'message'; request: number }
  | { kind: 'bad-header'; request: number; why: string };

class Framer {
  private readonly header = new Uint8Array(12);
  private got = 0;
  private expected = 12;
  private inPayload = false;
  broken = false;

  get atBoundary(): boolean {
    return !this.broken && this.got === 0;
  }

  feed(bytes: Uint8Array): FrameEvent[] {
    const events: FrameEvent[] = [];
    let i = 0;
    while (i < bytes.length && !this.broken) {
      const take = Math.min(this.expected - this.got, bytes.length - i);
      if (!this.inPayload) this.header.set(bytes.subarray(i, i + take), this.got);
      this.got += take;
      i += take;
      if (this.got < this.expected) break;
      const request = new DataView(this.header.buffer).getUint32(0, true);
      if (!this.inPayload) {
        let size: number;
        try {
          size = decodeHeader(this.header).size;
        } catch (e) {
          this.broken = true;
          events.push({ kind: 'bad-header', request, why: (e as Error).message });
          break;
        }
        this.inPayload = true;
        this.expected = 12 + size;
        if (size > 0) continue;
      }
      events.push({ kind: 'message', request });
      this.inPayload = false;
      this.got = 0;
      this.expected = 12;
    }
    return events;
  }
}

class Conn {
  eof = false;
  closeReason: string | null = null;
  readonly replies: Reply[] = [];
  readonly problems: string[] = [];
  receivedFds = 0;
  private rx: Uint8Array = new Uint8Array(0);
  private watcher: FdWatcher | null;
  private readonly buf = new Uint8Array(4096);

  constructor(
    private readonly n: VhostUserNative,
    readonly fd: number,
  ) {
    this.watcher = n.watch(fd, n.constants.POLL_READABLE, (error) => {
      this.readable(error);
      wake();
    });
  }

  private readable(error: Error | null): void {
    if (error !== null) {
      this.finish(`poll: ${error.message}`);
      return;
    }
    for (;;) {
      let r: ReturnType<VhostUserNative['recvmsg']>;
      try {
        r = this.n.recvmsg(this.fd, this.buf, 8);
      } catch (e) {
        this.finish(`recvmsg: ${(e as Error).message}`);
        return;
      }
      for (const fd of r.fds) {
        this.receivedFds++;
        this.n.close(fd);
      }
      if (r.bytes < 0) return;
      if (r.bytes === 0) {
        this.finish('closed by the back-end');
        return;
      }
      this.rx = concat(this.rx, this.buf.subarray(0, r.bytes));
      this.parse();
    }
  }

  private parse(): void {
    while (this.rx.length >= 12) {
      const v = new DataView(this.rx.buffer, this.rx.byteOffset, this.rx.byteLength);
      const size = v.getUint32(8, true);
      if (size > 12 + 256) {
        this.problems.push(`a reply announces ${size} payload bytes`);
        this.rx = new Uint8Array(0);
        return;
      }
      if (this.rx.length < 12 + size) return;
      this.replies.push({
        request: v.getUint32(0, true),
        flags: v.getUint32(4, true),
        payload: this.rx.slice(12, 12 + size),
      });
      this.rx = this.rx.slice(12 + size);
    }
  }

  private finish(reason: string): void {
    this.eof = true;
    this.closeReason = reason;
    this.watcher?.stop();
    this.watcher = null;
  }

  /** Sends `bytes` with `fds` on the first byte; false when the back-end closed the socket. */
  async send(bytes: Uint8Array, fds: number[]): Promise<boolean> {
    let at = 0;
    const deadline = Date.now() + ANSWER_MS;
    while (at < bytes.length) {
      let sent: number;
      try {
        sent = this.n.sendmsg(this.fd, bytes.subarray(at), at === 0 ? fds : []);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EPIPE' || code === 'ECONNRESET') return false;
        throw e;
      }
      if (sent < 0) {
        // The socket buffer is full: the back-end stopped reading.
        if (Date.now() > deadline) throw new Error('the back-end stopped reading its socket');
        await sleep(1);
        continue;
      }
      at += sent;
    }
    return true;
  }

  close(): void {
    this.watcher?.stop();
    this.watcher = null;
    this.n.close(this.fd);
  }
}

// ---------------------------------------------------------------------------------------------
// Generators

const u32 = fc.nat(0xffff_ffff);
const u64Any = fc.bigInt({ min: 0n, max: MAX_U64 });
const fdKind = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom<FdKind>('ram', 'kick') },
  { weight: 3, arbitrary: fc.constantFrom(...FD_KINDS) },
);
const fdList = fc.oneof(
  { weight: 30, arbitrary: fc.array(fdKind, { maxLength: 4 }) },
  { weight: 2, arbitrary: fc.array(fdKind, { minLength: 5, maxLength: 12 }) },
  // Up to SCM_MAX_FD: the back-end must close every one of them.
  { weight: 1, arbitrary: fc.integer({ min: 13, max: 253 }).map((k) => Array(k).fill('call')) },
);
const flagsValid = fc.constantFrom(VhostUserFlags.VERSION, NEED);
const flagsAny = fc.oneof(
  { weight: 6, arbitrary: flagsValid },
  { weight: 1, arbitrary: fc.nat(15) },
  { weight: 1, arbitrary: u32 },
);
const ringIndex = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom(0, 1) },
  { weight: 1, arbitrary: fc.nat(255) },
  { weight: 1, arbitrary: u32 },
);
const ringNum = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0, 1, 2, 15, 16, 64, 65, 256, 0x8000, 0xffff) },
  { weight: 1, arbitrary: fc.nat(0x1_0000) },
  { weight: 1, arbitrary: u32 },
);
/** A 64-bit value: usually near the fuzz session's addresses, sometimes anything. */
const addrU64 = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(0, 8, 0x1000, HALF, HALF - 8, REGION1_GPA, RAM, 2 * RAM, 0x7f00_0000_0000)
      .map(BigInt),
  },
  { weight: 2, arbitrary: fc.nat(2 * RAM).map((x) => BigInt(x & ~7)) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(0x7f00_0000_0000n, 0x7e00_0000_0000n, 0x7e00_0000_0040n),
  },
  { weight: 1, arbitrary: fc.maxSafeNat().map(BigInt) },
  { weight: 1, arbitrary: u64Any },
);
const sizeU64 = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(0, 8, 4096, HALF, RAM, RAM + 4096, 2 * RAM).map(BigInt) },
  { weight: 1, arbitrary: fc.nat(2 * RAM).map(BigInt) },
  { weight: 1, arbitrary: u64Any },
);
const region = fc
  .tuple(addrU64, sizeU64, addrU64, addrU64)
  .map(([gpa, size, user, offset]) => concat(u64(gpa), u64(size), u64(user), u64(offset)));
const featureMask = (bits: number) =>
  fc.oneof(
    { weight: 3, arbitrary: fc.array(fc.nat(bits - 1), { maxLength: 8 }) },
    { weight: 1, arbitrary: fc.array(fc.nat(63), { maxLength: 8 }) },
  );
const maskOf = (bits: number[]): bigint => bits.reduce((m, b) => m | (1n << BigInt(b)), 0n);

/** Splits and the piece that carries the fds, for any wire. */
const cutting = fc.record({
  splits: fc.oneof(
    { weight: 6, arbitrary: fc.constant<number[]>([]) },
    { weight: 1, arbitrary: fc.array(fc.nat(300), { minLength: 1, maxLength: 3 }) },
  ),
  fdPiece: fc.nat(3),
});

function withCut(w: Wire, cut: { splits: number[]; fdPiece: number }): Wire {
  return { ...w, splits: cut.splits, fdPiece: cut.fdPiece };
}

/** (b) A well-formed message of every request type, random field values. */
const wellFormedWire: fc.Arbitrary<Wire> = fc
  .tuple(
    fc.oneof(
      fc
        .tuple(
          fc.constantFrom(
            R.GET_FEATURES,
            R.GET_PROTOCOL_FEATURES,
            R.SET_OWNER,
            R.RESET_OWNER,
            R.RESET_DEVICE,
            R.GET_QUEUE_NUM,
            R.GET_MAX_MEM_SLOTS,
            R.GET_STATUS,
          ),
          flagsValid,
        )
        .map(([r, f]) => wire(r, EMPTY, f)),
      fc
        .tuple(flagsValid, featureMask(40), fc.boolean())
        .map(([f, bits, usual]) =>
          wire(R.SET_FEATURES, u64(usual ? maskOf(bits) | VERSION_1 : maskOf(bits)), f),
        ),
      fc
        .tuple(flagsValid, featureMask(20))
        .map(([f, bits]) => wire(R.SET_PROTOCOL_FEATURES, u64(maskOf(bits)), f)),
      fc
        .tuple(flagsValid, fc.array(fc.tuple(region, fdKind), { maxLength: 9 }))
        .map(([f, regions]) =>
          wire(
            R.SET_MEM_TABLE,
            concat(u32s(regions.length, 0), ...regions.map(([r]) => r)),
            f,
            regions.map(([, k]) => k),
          ),
        ),
      fc
        .tuple(flagsValid, fc.constantFrom(0n, 1n), region, fdKind, fc.boolean())
        .map(([f, pad, r, k, add]) =>
          add
            ? wire(R.ADD_MEM_REG, concat(u64(pad), r), f, [k])
            : wire(R.REM_MEM_REG, concat(u64(pad), r), f, pad === 0n ? [] : [k]),
        ),
      fc
        .tuple(
          fc.constantFrom(
            R.SET_VRING_NUM,
            R.SET_VRING_BASE,
            R.GET_VRING_BASE,
            R.SET_VRING_ENABLE,
            R.VRING_KICK,
          ),
          flagsValid,
          ringIndex,
          ringNum,
        )
        .map(([r, f, index, num]) => wire(r, u32s(index, num), f)),
      fc
        .tuple(flagsValid, ringIndex, fc.oneof(fc.constantFrom(0, 1), u32), addrU64, addrU64)
        .chain(([f, index, ringFlags, a, b]) =>
          fc
            .tuple(fc.constantFrom(a, b, a + 0x100n), fc.constantFrom(a, b, b + 0x200n), addrU64)
            .map(([c, d, log]) =>
              wire(
                R.SET_VRING_ADDR,
                concat(u32s(index, ringFlags), u64(a), u64(c), u64(d), u64(log)),
                f,
              ),
            ),
        ),
      fc
        .tuple(
          fc.constantFrom(R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR),
          flagsValid,
          fc.oneof(
            { weight: 8, arbitrary: fc.constantFrom(0, 1) },
            { weight: 1, arbitrary: fc.nat(255) },
          ),
          fc.boolean(),
          fdKind,
        )
        .map(([r, f, index, noFd, k]) =>
          wire(r, u64(index | (noFd ? 0x100 : 0)), f, noFd ? [] : [k]),
        ),
      fc
        .tuple(
          fc.constantFrom(R.GET_CONFIG, R.SET_CONFIG),
          flagsValid,
          fc.oneof(fc.nat(300), u32),
          fc.nat(256),
          fc.oneof(fc.constantFrom(0, 1), u32),
        )
        .chain(([r, f, offset, size, cfgFlags]) =>
          fc
            .uint8Array({ minLength: size, maxLength: size })
            .map((bytes) => wire(r, concat(u32s(offset, size, cfgFlags), bytes), f)),
        ),
      fc
        .tuple(flagsValid, sizeU64, sizeU64, fdKind)
        .map(([f, size, offset, k]) =>
          wire(R.SET_LOG_BASE, concat(u64(size), u64(offset)), f, [k]),
        ),
      fc.tuple(flagsValid, fdKind).map(([f, k]) => wire(R.SET_LOG_FD, EMPTY, f, [k])),
      fc
        .tuple(flagsValid, sizeU64, sizeU64, ringNum, ringNum, fdKind, fc.boolean())
        .map(([f, size, offset, queues, qsize, k, set]) => {
          const payload = concat(
            u64(size),
            u64(offset),
            new Uint8Array(new Uint16Array([queues & 0xffff, qsize & 0xffff]).buffer),
            new Uint8Array(4),
          );
          return set
            ? wire(R.SET_INFLIGHT_FD, payload, f, [k])
            : wire(R.GET_INFLIGHT_FD, payload, f);
        }),
      fc.tuple(flagsValid, fdKind).map(([f, k]) => wire(R.SET_BACKEND_REQ_FD, EMPTY, f, [k])),
      fc
        .tuple(flagsValid, fc.oneof(fc.nat(255).map(BigInt), u64Any))
        .map(([f, status]) => wire(R.SET_STATUS, u64(status), f)),
      // Requests virtq does not implement and numbers no spec assigns.
      fc
        .tuple(
          fc.oneof(
            fc.constantFrom(19, 20, 22, 23, 26, 27, 28, 29, 30, 33, 0, 41, 42, 255),
            fc.integer({ min: 41, max: 0xffff }),
            u32,
          ),
          flagsValid,
          fc.uint8Array({ maxLength: 64 }),
          fc.array(fdKind, { maxLength: 2 }),
        )
        .map(([r, f, payload, fds]) => wire(r, payload, f, fds)),
    ),
    cutting,
  )
  .map(([w, cut]) => withCut(w, cut));

/** (a) Random bytes, or a random header (any request, flags, size) over a random payload. */
const randomWire: fc.Arbitrary<Wire> = fc.oneof(
  fc
    .record({ bytes: fc.uint8Array({ maxLength: 320 }), fds: fdList, cut: cutting })
    .map(({ bytes, fds, cut }) => withCut({ bytes, fds, splits: [], fdPiece: 0 }, cut)),
  fc
    .record({
      request: fc.oneof(fc.nat(45), u32),
      flags: flagsAny,
      payload: fc.uint8Array({ maxLength: 300 }),
      size: fc.oneof(
        { weight: 3, arbitrary: fc.constant(-1) },
        { weight: 1, arbitrary: fc.nat(300) },
        { weight: 1, arbitrary: u32 },
      ),
      fds: fdList,
      cut: cutting,
    })
    .map(({ request, flags, payload, size, fds, cut }) => {
      const bytes = concat(u32s(request, flags, size < 0 ? payload.length : size), payload);
      return withCut({ bytes, fds, splits: [], fdPiece: 0 }, cut);
    }),
);

function negotiation(protocol: bigint = PROTOCOL_FEATURES): Wire[] {
  return [
    wire(R.GET_FEATURES),
    wire(R.GET_PROTOCOL_FEATURES),
    wire(R.SET_PROTOCOL_FEATURES, u64(protocol)),
    wire(R.GET_QUEUE_NUM),
    wire(R.SET_OWNER, EMPTY, NEED),
  ];
}

/** The session QEMU runs up to a running ring 0 over the 'ram' memfd. */
function session(features: bigint, protocol: bigint = PROTOCOL_FEATURES): Wire[] {
  const packed = (features & F_PACKED) !== 0n;
  return [
    ...negotiation(protocol),
    wire(R.GET_CONFIG, concat(u32s(0, 8, 0), new Uint8Array(8))),
    wire(R.SET_FEATURES, u64(features), NEED),
    wire(R.SET_MEM_TABLE, memTable(), NEED, ['ram', 'ram']),
    wire(R.SET_VRING_NUM, u32s(0, QSIZE), NEED),
    wire(R.SET_VRING_BASE, u32s(0, packed ? 0x8000 : 0), NEED),
    wire(R.SET_VRING_ADDR, vringAddr(0, LAYOUT.desc, LAYOUT.avail, LAYOUT.used), NEED),
    wire(R.SET_VRING_CALL, u64(0), NEED, ['call']),
    wire(R.SET_VRING_KICK, u64(0), NEED, ['kick']),
    wire(R.SET_VRING_ENABLE, u32s(0, 1), NEED),
  ];
}

const sessionFeatures = fc
  .tuple(fc.boolean(), fc.boolean(), fc.boolean(), fc.boolean())
  .map(
    ([eventIdx, indirect, packed, logAll]) =>
      VERSION_1 |
      PROTOCOL_BIT |
      (eventIdx ? F_EVENT_IDX : 0n) |
      (indirect ? F_INDIRECT : 0n) |
      (packed ? F_PACKED : 0n) |
      (logAll ? F_LOG_ALL : 0n),
  );
const sessionProtocol = fc
  .subarray([
    VhostUserProtocolFeature.RESET_DEVICE,
    VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS,
    VhostUserProtocolFeature.LOG_SHMFD,
    VhostUserProtocolFeature.INFLIGHT_SHMFD,
  ])
  .map((bits) => PROTOCOL_FEATURES | maskOf(bits));

/** What QEMU may send once the ring runs. */
const SESSION_TAIL: Wire[] = [
  wire(R.GET_VRING_BASE, u32s(0, 0)),
  wire(R.SET_VRING_ENABLE, u32s(0, 0), NEED),
  wire(R.SET_VRING_ENABLE, u32s(0, 1), NEED),
  wire(R.SET_VRING_KICK, u64(0), NEED, ['kick']),
  wire(R.SET_VRING_CALL, u64(0x100), NEED),
  // Memory hot-plug: a third region, then its removal; a whole new table under a running ring.
  wire(
    R.ADD_MEM_REG,
    concat(u64(0), u64(0x20_0000), u64(4096), u64(0x7d00_0000_0000), u64(0)),
    NEED,
    ['small'],
  ),
  wire(
    R.REM_MEM_REG,
    concat(u64(0), u64(0x20_0000), u64(4096), u64(0x7d00_0000_0000), u64(0)),
    NEED,
  ),
  wire(R.SET_MEM_TABLE, memTable(), NEED, ['ram', 'ram']),
  wire(R.GET_CONFIG, concat(u32s(0, 60, 0), new Uint8Array(60))),
  wire(R.SET_CONFIG, concat(u32s(20, 1, 0), new Uint8Array([1])), NEED),
  wire(R.SET_LOG_BASE, concat(u64(4096), u64(0)), NEED, ['small']),
  wire(R.GET_INFLIGHT_FD, concat(u64(0), u64(0), u32s(1 | (QSIZE << 16)), new Uint8Array(4))),
  wire(R.GET_STATUS),
  wire(R.RESET_DEVICE, EMPTY, NEED),
  wire(R.RESET_OWNER),
];

type Mutation =
  | { op: 'flip'; msg: number; bit: number }
  | { op: 'truncate'; msg: number; keep: number }
  | { op: 'extend'; msg: number; extra: Uint8Array }
  | { op: 'size'; msg: number; size: number }
  | { op: 'request'; msg: number; request: number }
  | { op: 'needReply'; msg: number }
  | { op: 'fds'; msg: number; fds: FdKind[] }
  | { op: 'duplicate'; msg: number }
  | { op: 'swap'; msg: number; other: number }
  | { op: 'drop'; msg: number }
  | { op: 'cut'; msg: number; splits: number[]; fdPiece: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('flip' as const), msg: fc.nat(), bit: fc.nat() }),
  fc.record({ op: fc.constant('truncate' as const), msg: fc.nat(), keep: fc.nat() }),
  fc.record({
    op: fc.constant('extend' as const),
    msg: fc.nat(),
    extra: fc.uint8Array({ minLength: 1, maxLength: 40 }),
  }),
  fc.record({
    op: fc.constant('size' as const),
    msg: fc.nat(),
    size: fc.oneof(fc.nat(300), u32),
  }),
  fc.record({ op: fc.constant('request' as const), msg: fc.nat(), request: fc.nat(45) }),
  fc.record({ op: fc.constant('needReply' as const), msg: fc.nat() }),
  fc.record({ op: fc.constant('fds' as const), msg: fc.nat(), fds: fdList }),
  fc.record({ op: fc.constant('duplicate' as const), msg: fc.nat() }),
  fc.record({ op: fc.constant('swap' as const), msg: fc.nat(), other: fc.nat() }),
  fc.record({ op: fc.constant('drop' as const), msg: fc.nat() }),
  fc.record({
    op: fc.constant('cut' as const),
    msg: fc.nat(),
    splits: fc.array(fc.nat(60), { minLength: 1, maxLength: 3 }),
    fdPiece: fc.nat(3),
  }),
);

function mutate(wires: Wire[], m: Mutation): Wire[] {
  if (wires.length === 0) return wires;
  const out = wires.slice();
  const i = m.msg % out.length;
  const w = out[i]!;
  const setU32 = (bytes: Uint8Array, at: number, value: number): Uint8Array => {
    const copy = bytes.slice();
    if (copy.length >= at + 4) new DataView(copy.buffer).setUint32(at, value, true);
    return copy;
  };
  switch (m.op) {
    case 'flip': {
      if (w.bytes.length === 0) break;
      const bytes = w.bytes.slice();
      const bit = m.bit % (bytes.length * 8);
      bytes[bit >> 3]! ^= 1 << (bit & 7);
      out[i] = { ...w, bytes };
      break;
    }
    case 'truncate':
      out[i] = { ...w, bytes: w.bytes.slice(0, m.keep % (w.bytes.length + 1)) };
      break;
    case 'extend':
      out[i] = { ...w, bytes: concat(w.bytes, m.extra) };
      break;
    case 'size':
      out[i] = { ...w, bytes: setU32(w.bytes, 8, m.size) };
      break;
    case 'request':
      out[i] = { ...w, bytes: setU32(w.bytes, 0, m.request) };
      break;
    case 'needReply': {
      const flags = w.bytes.length >= 8 ? new DataView(w.bytes.buffer).getUint32(4, true) : 0;
      out[i] = { ...w, bytes: setU32(w.bytes, 4, flags ^ VhostUserFlags.NEED_REPLY) };
      break;
    }
    case 'fds':
      out[i] = { ...w, fds: m.fds };
      break;
    case 'duplicate':
      out.splice(i, 0, w);
      break;
    case 'swap': {
      const j = m.other % out.length;
      out[i] = out[j]!;
      out[j] = w;
      break;
    }
    case 'drop':
      out.splice(i, 1);
      break;
    case 'cut':
      out[i] = { ...w, splits: m.splits, fdPiece: m.fdPiece };
      break;
  }
  return out;
}

const descAddr = fc.oneof(
  {
    weight: 4,
    arbitrary: fc
      .constantFrom(
        0,
        0x1000,
        0x2000,
        0x3000,
        HALF - 16,
        HALF - 1,
        HALF,
        REGION1_GPA,
        LAYOUT.desc + 8,
        LAYOUT.used,
        REGION1_GPA + HALF - 8,
        REGION1_GPA + HALF,
        2 ** 53 - 1,
      )
      .map(BigInt),
  },
  { weight: 2, arbitrary: fc.nat(2 * RAM).map(BigInt) },
  { weight: 1, arbitrary: u64Any },
);
const ringWrites: fc.Arbitrary<RingWrites> = fc.record({
  descs: fc.array(
    fc.record({
      index: fc.nat(QSIZE + 1),
      addr: descAddr,
      len: fc.oneof(fc.constantFrom(0, 1, 16, 20, 512, 513, 4096, HALF, 0xffff_ffff), u32),
      flags: fc.oneof(
        { weight: 4, arbitrary: fc.nat(7) },
        { weight: 1, arbitrary: fc.nat(0xffff) },
      ),
      next: fc.oneof(
        { weight: 4, arbitrary: fc.nat(QSIZE) },
        { weight: 1, arbitrary: fc.nat(0xffff) },
      ),
    }),
    { maxLength: QSIZE + 4 },
  ),
  chains: fc.array(
    fc.record({
      type: fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(0, 1, 4, 8, 11, 13) },
        { weight: 1, arbitrary: u32 },
      ),
      sector: fc.oneof(
        { weight: 4, arbitrary: fc.nat(140).map(BigInt) },
        { weight: 1, arbitrary: u64Any },
      ),
      dataLen: fc.oneof(
        { weight: 4, arbitrary: fc.constantFrom(0, 16, 20, 512, 1024, 4096, 8192) },
        { weight: 1, arbitrary: fc.nat(8192) },
      ),
      dataWritable: fc.boolean(),
      indirect: fc.boolean(),
      corrupt: fc.option(fc.record({ at: fc.nat(3), value: u32 }), { nil: null, freq: 4 }),
    }),
    { maxLength: 5 },
  ),
  availFlags: fc.nat(3),
  availIdx: fc.oneof(
    { weight: 8, arbitrary: fc.constant(null) },
    { weight: 2, arbitrary: fc.nat(QSIZE + 2) },
    { weight: 1, arbitrary: fc.nat(0xffff) },
  ),
  heads: fc.array(
    fc.oneof({ weight: 4, arbitrary: fc.nat(QSIZE - 1) }, { weight: 1, arbitrary: fc.nat(0xffff) }),
    { maxLength: QSIZE },
  ),
  usedIdx: fc.option(fc.nat(0xffff), { nil: null }),
  headers: fc.array(
    fc.record({
      at: fc.constantFrom(0x1000, 0x2000, 0x3000),
      type: fc.oneof(fc.constantFrom(0, 1, 4, 8, 11, 13, 14, 16, 18), u32),
      sector: fc.oneof(fc.constantFrom(0n, 1n, 127n, 128n, 1n << 53n, MAX_U64), u64Any),
    }),
    { maxLength: 3 },
  ),
  // Raw garbage over the rings, in one case of four (it breaks the chains above).
  noise: fc.oneof(
    { weight: 3, arbitrary: fc.constant<RingWrites['noise']>([]) },
    {
      weight: 1,
      arbitrary: fc.array(
        fc.record({
          at: fc.nat(RING_BYTES - 1),
          bytes: fc.uint8Array({ minLength: 1, maxLength: 64 }),
        }),
        { minLength: 1, maxLength: 3 },
      ),
    },
  ),
});
const hostile: fc.Arbitrary<Hostile> = fc.record({
  packed: fc.constant(false),
  first: ringWrites,
  again: fc.option(ringWrites, { nil: null, freq: 1 }),
  kicks: fc.integer({ min: 1, max: 3 }),
});

const randomCase: fc.Arbitrary<FuzzCase> = fc
  .tuple(fc.boolean(), fc.array(randomWire, { minLength: 1, maxLength: 6 }))
  .map(([negotiated, wires]) => ({
    wires: [...(negotiated ? negotiation() : []), ...wires],
    hostile: null,
  }));

const wellFormedCase: fc.Arbitrary<FuzzCase> = fc
  .tuple(
    fc.constantFrom('none', 'negotiated', 'ring'),
    fc.array(wellFormedWire, { minLength: 1, maxLength: 8 }),
  )
  .map(([prelude, wires]) => ({
    wires: [
      ...(prelude === 'negotiated' ? negotiation() : []),
      ...(prelude === 'ring' ? session(VERSION_1 | PROTOCOL_BIT) : []),
      ...wires,
    ],
    hostile: null,
  }));

const sessionCase: fc.Arbitrary<FuzzCase> = fc.oneof(
  // A session broken by mutations, sometimes with a hostile ring on top.
  {
    weight: 3,
    arbitrary: fc
      .record({
        features: sessionFeatures,
        protocol: sessionProtocol,
        tail: fc.array(fc.constantFrom(...SESSION_TAIL), { maxLength: 4 }),
        mutations: fc.array(mutation, { minLength: 1, maxLength: 4 }),
        hostile: fc.option(hostile, { nil: null }),
      })
      .map(({ features, protocol, tail, mutations, hostile: h }) => ({
        wires: mutations.reduce(mutate, [...session(features, protocol), ...tail]),
        hostile: h === null ? null : { ...h, packed: (features & F_PACKED) !== 0n },
      })),
  },
  // A valid session whose ring runs, then hostile ring contents.
  {
    weight: 2,
    arbitrary: fc
      .record({
        features: sessionFeatures,
        protocol: sessionProtocol,
        tail: fc.array(fc.constantFrom(...SESSION_TAIL), { maxLength: 1 }),
        hostile,
      })
      .map(({ features, protocol, tail, hostile: h }) => ({
        wires: [...session(features, protocol), ...tail],
        hostile: { ...h, packed: (features & F_PACKED) !== 0n },
      })),
  },
);

// ---------------------------------------------------------------------------------------------

const nativeOk = isNativeAvailable();
const isCI = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false';

describe('the vhost-user socket fuzzer', () => {
  it('has the native addon (npm ci builds it; required under CI)', () => {
    if (isCI) expect(nativeOk).toBe(true);
    else if (!nativeOk) console.warn('virtq: native addon missing; the socket fuzzer is SKIPPED');
  });
});

describe.runIf(nativeOk)('vhost-user back-end socket fuzzer', () => {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  let dir = '';
  let socket = '';
  let starts = 0;
  let backend: BackendProcess;
  /** Connections opened to the current back-end process. */
  let opened = 0;
  let baseline: Probe;
  /** The back-end's used-buffer signals so far (stats.calls). */
  let lastCalls = 0;
  const shared = { devzero: -1, devnull: -1, dir: -1 };
  /** The clean front-end's guest RAM and eventfds. */
  let clean: {
    memfd: number;
    guest: GuestMemory;
    kick: number;
    call: number;
    calls: number;
    watcher: FdWatcher;
  };
  let cleanRuns = 0;
  const logCounts = new Map<string, number>();

  async function connect(): Promise<Conn> {
    const deadline = Date.now() + ANSWER_MS;
    for (;;) {
      backend.assertAlive();
      try {
        const fd = n.connect(socket);
        opened++;
        return new Conn(n, fd);
      } catch (e) {
        // EAGAIN: the backlog holds a connection the back-end has not accepted yet.
        const code = (e as NodeJS.ErrnoException).code;
        if ((code !== 'EAGAIN' && code !== 'ECONNREFUSED') || Date.now() > deadline) throw e;
        await sleep(1);
      }
    }
  }

  async function startBackend(): Promise<void> {
    // A fresh path: the socket of a killed back-end may linger for a moment.
    socket = join(dir, `backend-${++starts}.sock`);
    backend = await BackendProcess.start(socket);
    opened = 0;
    await cleanSession();
    await backend.idle(opened);
    baseline = await backend.probe();
    lastCalls = baseline.stats.calls;
  }

  /** Waits for a reply to `request` after index `from`, or the end of the connection. */
  async function answer(conn: Conn, request: number, from: number): Promise<Reply | null> {
    const find = () => conn.replies.slice(from).find((r) => r.request === request);
    const ok = await waitUntil(() => find() !== undefined || conn.eof || !backend.alive, ANSWER_MS);
    backend.assertAlive();
    if (!ok) {
      throw new Error(
        `${requestName(request)} was neither answered nor the connection closed within ${ANSWER_MS} ms`,
      );
    }
    return find() ?? null;
  }

  /** A front-end as QEMU is: negotiation, memory, ring 0, a block write and read-back. */
  async function cleanSession(): Promise<void> {
    const conn = await connect();
    const step = { name: 'connect' };
    try {
      const ask = async (
        request: number,
        payload: Uint8Array = EMPTY,
        fds: number[] = [],
        flags: number = VhostUserFlags.VERSION,
      ): Promise<DataView> => {
        step.name = requestName(request) ?? String(request);
        const from = conn.replies.length;
        if (!(await conn.send(encode(request, payload, flags), fds))) {
          throw new Error('the back-end closed the connection');
        }
        const ok = await waitUntil(
          () => conn.replies.length > from || conn.eof || !backend.alive,
          CLEAN_MS,
        );
        backend.assertAlive();
        const reply = conn.replies[from];
        if (!ok || reply === undefined) {
          throw new Error(conn.eof ? `connection closed: ${conn.closeReason}` : 'no reply');
        }
        expect(reply.request).toBe(request);
        expect(reply.flags).toBe(REPLY_FLAGS);
        return new DataView(reply.payload.buffer, reply.payload.byteOffset, reply.payload.length);
      };
      const acked = async (request: number, payload?: Uint8Array, fds?: number[]) => {
        const r = await ask(request, payload, fds, NEED);
        expect(r.getBigUint64(0, true)).toBe(0n);
      };

      const features = (await ask(R.GET_FEATURES)).getBigUint64(0, true);
      expect(features & PROTOCOL_BIT).toBe(PROTOCOL_BIT);
      const proto = (await ask(R.GET_PROTOCOL_FEATURES)).getBigUint64(0, true);
      expect(proto & PROTOCOL_FEATURES).toBe(PROTOCOL_FEATURES);
      step.name = 'SET_PROTOCOL_FEATURES';
      expect(await conn.send(encode(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES)), [])).toBe(
        true,
      );
      expect((await ask(R.GET_QUEUE_NUM)).getBigUint64(0, true)).toBe(1n);
      await acked(R.SET_OWNER);
      const cfg = await ask(R.GET_CONFIG, concat(u32s(0, 8, 0), new Uint8Array(8)));
      expect(cfg.getBigUint64(12, true)).toBe(BigInt(DISK_BYTES / 512));
      await acked(R.SET_FEATURES, u64((features & VERSION_1) | PROTOCOL_BIT));
      await acked(R.SET_MEM_TABLE, memTable(), [clean.memfd, clean.memfd]);
      const driver = new SplitDriver(clean.guest, { size: QSIZE, base: RING_GPA });
      const { desc, avail, used } = driver.layout;
      await acked(R.SET_VRING_NUM, u32s(0, QSIZE));
      await acked(R.SET_VRING_BASE, u32s(0, 0));
      await acked(R.SET_VRING_ADDR, vringAddr(0, desc, avail, used));
      await acked(R.SET_VRING_CALL, u64(0), [clean.call]);
      await acked(R.SET_VRING_KICK, u64(0), [clean.kick]);
      await acked(R.SET_VRING_ENABLE, u32s(0, 1));

      // A write of a fresh pattern, then a read of it back, through the ring.
      const run = cleanRuns++;
      const sector = (run * 37) % (DISK_BYTES / 512);
      const io = async (type: number, data: number, write: boolean): Promise<void> => {
        step.name = write ? 'block write' : 'block read';
        const g = clean.guest;
        g.writeU32(0x1000, type);
        g.writeU32(0x1004, 0);
        g.writeU64(0x1008, sector);
        g.writeU8(0x3000, 0xff);
        const hdr = { addr: 0x1000, len: 16 };
        const status = { addr: 0x3000, len: 1 };
        const buf = { addr: data, len: 512 };
        if (write) driver.add([hdr, buf], [status]);
        else driver.add([hdr], [buf, status]);
        const calls = clean.calls;
        if (driver.kick()) n.eventfdWrite(clean.kick, 1);
        const ok = await waitUntil(
          () => (driver.hasUsed() && clean.calls > calls) || !backend.alive,
          CLEAN_MS,
        );
        backend.assertAlive();
        if (!ok) throw new Error('the request was not completed (or not signalled)');
        expect(driver.popUsed()).toBeGreaterThanOrEqual(0);
        expect(g.readU8(0x3000)).toBe(0);
      };
      const pattern = new Uint8Array(512).map((_, i) => (i * 13 + run) & 0xff);
      clean.guest.write(0x2000, pattern);
      await io(1, 0x2000, true);
      clean.guest.fill(0x4000, 512);
      await io(0, 0x4000, false);
      const back = new Uint8Array(512);
      clean.guest.read(0x4000, back);
      expect(back).toEqual(pattern);
      const base = await ask(R.GET_VRING_BASE, u32s(0, 0));
      expect(base.getUint32(4, true)).toBe(2);
    } catch (e) {
      throw new Error(
        `the clean front-end failed at ${step.name}: ${(e as Error).message}\n` +
          `back-end disconnect reasons (last 3): ${backend.disconnects.slice(-3).join(' | ')}`,
      );
    } finally {
      conn.close();
    }
  }

  /** Sends one case's messages, checking every answer the back-end owes. */
  async function runCase(c: FuzzCase, pool: FdPool, cov: Coverage): Promise<void> {
    const conn = await connect();
    const framer = new Framer();
    const sent = new Set<number>();
    let complete = 0;
    let mark = 0;
    const check = async (events: FrameEvent[], what: string): Promise<void> => {
      for (const ev of events) {
        if (ev.kind === 'bad-header') {
          cov.badHeaders++;
          const closed = await waitUntil(() => conn.eof || !backend.alive, ANSWER_MS);
          backend.assertAlive();
          if (!closed) {
            throw new Error(`${what}: a bad header (${ev.why}) did not close the connection`);
          }
          return;
        }
        complete++;
        sent.add(ev.request);
        if (!MUST_ANSWER.has(ev.request)) continue;
        const reply = await answer(conn, ev.request, mark);
        cov.answered++;
        if (reply !== null) mark = conn.replies.indexOf(reply) + 1;
      }
    };
    try {
      for (const [i, w] of c.wires.entries()) {
        if (conn.eof || framer.broken) break;
        const fds = w.fds.map((k) => pool.fd[k]);
        const cuts = [...new Set(w.splits.filter((s) => s > 0 && s < w.bytes.length))].sort(
          (a, b) => a - b,
        );
        const pieces: Uint8Array[] = [];
        let from = 0;
        for (const s of [...cuts, w.bytes.length]) {
          pieces.push(w.bytes.subarray(from, s));
          from = s;
        }
        const fdPiece = Math.min(w.fdPiece, pieces.length - 1);
        for (const [p, piece] of pieces.entries()) {
          if (piece.length === 0) continue;
          if (!(await conn.send(piece, p === fdPiece ? fds : []))) break;
          await check(framer.feed(piece), `message ${i}`);
          if (conn.eof) break;
        }
      }
      if (c.hostile !== null && !conn.eof && !framer.broken) {
        const h = c.hostile;
        cov.hostileRings++;
        writeRing(pool.ram, h.first, h.packed);
        for (let k = 0; k < h.kicks; k++) {
          n.eventfdWrite(pool.fd.kick, 1);
          await waitUntil(() => conn.eof, 2);
          if (k === 0 && h.again !== null) writeRing(pool.ram, h.again, h.packed);
        }
      }
      // The same connection still answers (when the framing is intact).
      if (!conn.eof && framer.atBoundary) {
        const probe = encode(R.GET_QUEUE_NUM, EMPTY);
        const from = conn.replies.length;
        if (await conn.send(probe, [])) {
          await check(framer.feed(probe), 'the trailing GET_QUEUE_NUM');
          const reply = conn.replies.slice(from).find((r) => r.request === R.GET_QUEUE_NUM);
          if (reply !== undefined) expect(reply.payload).toEqual(u64(1));
        }
      }
      // Anything still in flight arrives now, or never.
      await waitUntil(() => conn.eof, c.linger ?? 1);
    } finally {
      if (conn.eof) cov.closedByBackend++;
      conn.close();
    }
    // Every reply is a well-formed answer to a request this connection sent.
    expect(conn.problems).toEqual([]);
    expect(conn.replies.length).toBeLessThanOrEqual(complete);
    for (const r of conn.replies) {
      expect(r.flags, `reply to ${r.request}`).toBe(REPLY_FLAGS);
      expect(sent.has(r.request), `reply to ${r.request}, which was not sent`).toBe(true);
      if (r.request === R.GET_CONFIG) {
        if (r.payload.length > 0) {
          const size = new DataView(r.payload.buffer).getUint32(4, true);
          expect(r.payload.length).toBe(12 + size);
        }
      } else if (r.request !== R.GET_INFLIGHT_FD) {
        expect(r.payload.length, `reply to ${requestName(r.request)}`).toBe(8);
      }
    }
  }

  function emptyCoverage(): Coverage {
    return {
      cases: 0,
      closedByBackend: 0,
      badHeaders: 0,
      answered: 0,
      hostileRings: 0,
      fuzzCalls: 0,
    };
  }

  /**
   * One property run: the case, then a clean front-end, the fds and the logs. Returns the
   * back-end's probe once it is idle again.
   */
  async function fuzzOne(c: FuzzCase, cov: Coverage = emptyCoverage()): Promise<Probe> {
    if (!backend.alive) await startBackend();
    const logsBefore = backend.logs.length;
    const pool = new FdPool(n, shared);
    cov.cases++;
    try {
      await runCase(c, pool, cov);
      await cleanSession();
      await backend.idle(opened);
      const probe = await backend.probe();
      expect(probe.connected).toBe(false);
      expect(probe.fds, 'fds held by the back-end when idle').toEqual(baseline.fds);
      const logs = backend.logs.slice(logsBefore);
      for (const l of logs) logCounts.set(l.msg, (logCounts.get(l.msg) ?? 0) + 1);
      const internal = logs.filter((l) => l.msg === INTERNAL_ERROR);
      expect(internal, 'internal errors logged by the back-end').toEqual([]);
      // The clean front-end's two requests signal twice; the rest came from the case.
      cov.fuzzCalls += Math.max(0, probe.stats.calls - lastCalls - 2);
      lastCalls = probe.stats.calls;
      return probe;
    } catch (e) {
      const logs = backend.logs
        .slice(logsBefore)
        .slice(-12)
        .map((l) => `  ${l.msg} ${JSON.stringify(l.fields)}`);
      // The next case (of a shrink, or of the next test) starts from a fresh back-end.
      backend.kill();
      throw new Error(
        `${(e as Error).message}\ncase:\n${describeCase(c)}\nback-end log (last 12):\n${logs.join('\n')}`,
        { cause: e },
      );
    } finally {
      pool.close();
    }
  }

  async function fuzz(name: string, arb: fc.Arbitrary<FuzzCase>, runs: number): Promise<void> {
    const started = Date.now();
    const cov = emptyCoverage();
    const numRuns = RUNS > 0 ? RUNS : runs;
    await fc.assert(
      fc.asyncProperty(arb, async (c) => {
        await fuzzOne(c, cov);
      }),
      {
        seed: SEED,
        numRuns,
        endOnFailure: !SHRINK,
        ...(REPLAY_PATH !== undefined ? { path: REPLAY_PATH } : {}),
      },
    );
    console.log(
      `socket fuzz ${name}: ${cov.cases} cases in ${Date.now() - started} ms (seed ${SEED}): ` +
        `${cov.closedByBackend} closed by the back-end, ${cov.badHeaders} bad headers, ` +
        `${cov.answered} awaited answers, ${cov.hostileRings} hostile rings, ` +
        `${cov.fuzzCalls} used-buffer signals`,
    );
    // The generators reach what they are for (a broken generator fails here, not silently).
    if (REPLAY_PATH === undefined && numRuns >= 100) {
      expect(cov.answered).toBeGreaterThan(0);
      expect(cov.closedByBackend).toBeGreaterThan(0);
      if (name === 'random') expect(cov.badHeaders).toBeGreaterThan(0);
      if (name === 'mutated session') {
        expect(cov.hostileRings).toBeGreaterThan(0);
        expect(cov.fuzzCalls).toBeGreaterThan(0);
      }
    }
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'virtq-socket-fuzz-'));
    shared.devzero = openSync('/dev/zero', 'r');
    shared.devnull = openSync('/dev/null', 'r+');
    shared.dir = openSync(dir, 'r');
    const memfd = n.memfdCreate('clean-ram', 0);
    n.ftruncate(memfd, RAM);
    const ram = n.mmap(memfd, RAM, 0, n.constants.PROT_READ | n.constants.PROT_WRITE);
    const call = n.eventfd(0, n.constants.EFD_NONBLOCK);
    clean = {
      memfd,
      guest: new GuestMemory([
        { base: 0, length: HALF, buffer: ram },
        { base: REGION1_GPA, length: HALF, buffer: ram, offset: HALF },
      ]),
      kick: n.eventfd(0, n.constants.EFD_NONBLOCK),
      call,
      calls: 0,
      watcher: n.watch(call, n.constants.POLL_READABLE, () => {
        const v = n.eventfdRead(call);
        if (typeof v === 'bigint' || v > 0) clean.calls++;
        wake();
      }),
    };
    await startBackend();
  });

  afterAll(() => {
    backend?.kill();
    if (clean !== undefined) {
      clean.watcher.stop();
      for (const fd of [clean.memfd, clean.kick, clean.call]) n.close(fd);
    }
    for (const fd of Object.values(shared)) if (fd >= 0) closeSync(fd);
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
    if (logCounts.size > 0) {
      const top = [...logCounts].sort((a, b) => b[1] - a[1]).slice(0, 12);
      console.log(
        `socket fuzz: back-end log messages\n${top.map(([m, k]) => `  ${k} x ${m}`).join('\n')}`,
      );
    }
  });

  it('(a) random bytes and random headers', async () => {
    await fuzz('random', randomCase, DEFAULT_RUNS.random);
  });

  it('(b) well-formed messages of every request type with random fields', async () => {
    await fuzz('well-formed', wellFormedCase, DEFAULT_RUNS.wellFormed);
  });

  it('(c) mutated QEMU-like sessions, with hostile ring contents', async () => {
    await fuzz('mutated session', sessionCase, DEFAULT_RUNS.session);
  });

  it('answers or closes on every request the front-end waits for, however malformed', async () => {
    // Each waits-for-a-reply request: valid, refused by the device, and with a broken payload.
    const wires: Wire[] = [];
    for (const request of MUST_ANSWER) {
      wires.push(wire(request), wire(request, u32s(0xffff_ffff, 0xffff_ffff), NEED));
    }
    for (const w of wires) {
      await fuzzOne({ wires: [...negotiation(), w], hostile: null });
    }
  });

  describe('regressions found by the fuzzer', () => {
    it('closes the fd of SET_LOG_FD when the front-end goes away', async () => {
      // (b): the log eventfd stayed open after the disconnect, one fd leaked per front-end.
      const protocol = PROTOCOL_FEATURES | (1n << BigInt(VhostUserProtocolFeature.LOG_SHMFD));
      await fuzzOne({
        wires: [...negotiation(protocol), wire(R.SET_LOG_FD, EMPTY, NEED, ['call'])],
        hostile: null,
      });
    });

    it('refuses a kick fd that cannot be polled (a regular file) without an internal error', async () => {
      // (b): watch() threw EPERM (epoll refuses regular files, directories and /dev/zero), which
      // the back-end logged as an internal error.
      for (const kind of ['ram', 'small', 'dir', 'devzero', 'devnull'] as const) {
        await fuzzOne({
          wires: [...negotiation(), wire(R.SET_VRING_KICK, u64(0), NEED, [kind])],
          hostile: null,
        });
      }
    });
  });
});
