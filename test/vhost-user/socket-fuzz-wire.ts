/**
 * The wire model of the vhost-user socket fuzzers: what a fuzz case sends (messages as bytes,
 * with fds by kind and cuts into several sendmsg calls), the fds each case gets, the
 * back-end's framing replayed on the sending side, and the front-end's end of one connection.
 */
import { openSync } from 'node:fs';
import {
  decodeHeader,
  type FdWatcher,
  requestName,
  VhostUserFlags,
  type VhostUserNative,
} from '../../src/vhost-user/index.js';
import { concat, encode, HALF, R, RAM, REGION1_GPA } from './frontend.js';
import { ANSWER_MS, sleep, wake } from './socket-fuzz-process.js';

export const NEED = VhostUserFlags.VERSION | VhostUserFlags.NEED_REPLY;
export const REPLY_FLAGS = VhostUserFlags.VERSION | VhostUserFlags.REPLY;

/**
 * Requests the front-end always waits for an answer to: the back-end must answer them or
 * close the connection. (SET_LOG_BASE is answered only with LOG_SHMFD, so it is left out.)
 */
export const MUST_ANSWER: ReadonlySet<number> = new Set([
  R.GET_FEATURES,
  R.GET_PROTOCOL_FEATURES,
  R.GET_QUEUE_NUM,
  R.GET_VRING_BASE,
  R.GET_CONFIG,
  R.GET_MAX_MEM_SLOTS,
  R.GET_INFLIGHT_FD,
  R.GET_STATUS,
]);

export const INTERNAL_ERROR = 'vhost-user: internal error while handling a request';

// ---------------------------------------------------------------------------------------------
// What a fuzz case sends

/** The kinds of fd a message may carry; each case gets fresh ones (see FdPool). */
export const FD_KINDS = [
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
export type FdKind = (typeof FD_KINDS)[number];
/**
 * Any fd of a case's pool: the kinds generators pick from, and the eventfds of ring 1, which
 * only the sessions of two-ring devices name.
 */
export type PoolFd = FdKind | 'kick1' | 'call1';

/** One sendmsg-level unit: bytes (usually one message), its fds, and where to cut it. */
export interface Wire {
  bytes: Uint8Array;
  fds: PoolFd[];
  /** Byte offsets at which the bytes go out in separate sendmsg calls. */
  splits: number[];
  /** Which of the pieces carries the fds. */
  fdPiece: number;
}

export interface FuzzCase<H = unknown> {
  wires: Wire[];
  /** What the device-specific guest does once the messages are sent (hostile rings, kicks). */
  hostile: H | null;
  /** Milliseconds to leave the connection open after the last message (default: 1). */
  linger?: number;
}

/** What a case exercised, summed per generator. */
export interface Coverage {
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

export const EMPTY = new Uint8Array(0);

export function wire(
  request: number,
  payload: Uint8Array = EMPTY,
  flags: number = VhostUserFlags.VERSION,
  fds: PoolFd[] = [],
): Wire {
  return { bytes: encode(request, payload, flags), fds, splits: [], fdPiece: 0 };
}

function hex(bytes: Uint8Array, max = 48): string {
  const shown = Array.from(bytes.subarray(0, max), (b) => b.toString(16).padStart(2, '0'));
  return shown.join('') + (bytes.length > max ? `...(+${bytes.length - max})` : '');
}

export function describeWire(w: Wire): string {
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

export function describeCase(c: FuzzCase): string {
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

export class FdPool {
  readonly fd: Record<PoolFd, number>;
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
    const kick1 = n.eventfd(0, c.EFD_NONBLOCK);
    const call1 = n.eventfd(0, c.EFD_NONBLOCK);
    const [sockA, sockB] = n.socketpair();
    this.owned.push(kick, call, kick1, call1, sockA, sockB);
    this.fd = {
      ram,
      small: memfd('fuzz-small', 4096),
      empty: memfd('fuzz-empty', 0),
      sealed: memfd('fuzz-sealed', RAM, c.F_SEAL_WRITE | c.F_SEAL_SHRINK | c.F_SEAL_GROW),
      shrinkSealed: memfd('fuzz-shrink-sealed', RAM, c.F_SEAL_SHRINK | c.F_SEAL_GROW),
      rdonly,
      kick,
      call,
      kick1,
      call1,
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
export function ramOffset(gpa: number): number | null {
  if (gpa >= 0 && gpa < HALF) return gpa;
  if (gpa >= REGION1_GPA && gpa < REGION1_GPA + HALF) return HALF + (gpa - REGION1_GPA);
  return null;
}

// ---------------------------------------------------------------------------------------------
// The front-end side of one connection

export interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** The back-end's framing of the byte stream, replayed on the sending side (decodeHeader). */
export type FrameEvent =
  | { kind: 'message'; request: number }
  | { kind: 'bad-header'; request: number; why: string };

export class Framer {
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

export class Conn {
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
