/**
 * The harness of the vhost-user socket fuzzers, for any device the back-end process serves:
 * connections to the back-end, the per-case runner (messages sent as cut, with every answer
 * the back-end owes checked, then the device's hostile guest), the checks on every reply, and
 * after every case a clean front-end (the device's own session), no fd held that was not held
 * before, and no internal error logged.
 *
 * Per message the runner frames the byte stream exactly as the back-end does (decodeHeader):
 * a header the back-end must refuse must close the connection, and a request whose reply the
 * front-end always waits for (GET_FEATURES, GET_VRING_BASE, GET_CONFIG...) must be answered or
 * the connection closed, within a deadline. Every reply must be well-formed and answer a
 * request that was sent.
 */
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SplitDriver } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  type FdWatcher,
  isNativeAvailable,
  loadNative,
  requestName,
  VhostUserFlags,
  type VhostUserNative,
} from '../../src/vhost-user/index.js';
import {
  encode,
  HALF,
  memTable,
  PROTOCOL_BIT,
  PROTOCOL_FEATURES,
  QSIZE,
  R,
  RAM,
  REGION1_GPA,
  u32s,
  u64,
  vringAddr,
} from './frontend.js';
import {
  ANSWER_MS,
  BackendProcess,
  CLEAN_MS,
  type FuzzDevice,
  type Probe,
  REPLAY_PATH,
  RUNS,
  SEED,
  SHRINK,
  sleep,
  waitUntil,
  wake,
} from './socket-fuzz-process.js';
import {
  Conn,
  type Coverage,
  describeCase,
  EMPTY,
  FdPool,
  type FrameEvent,
  Framer,
  type FuzzCase,
  INTERNAL_ERROR,
  MUST_ANSWER,
  NEED,
  REPLY_FLAGS,
  type Reply,
  type Wire,
} from './socket-fuzz-wire.js';

export const nativeOk = isNativeAvailable();
const isCI = process.env.CI !== undefined && process.env.CI !== '' && process.env.CI !== 'false';

/** A test that fails under CI without the native addon, and warns elsewhere. */
export function nativeAddonTest(title: string): void {
  describe(title, () => {
    it('has the native addon (npm ci builds it; required under CI)', () => {
      if (isCI) expect(nativeOk).toBe(true);
      else if (!nativeOk) console.warn('virtq: native addon missing; the socket fuzzer is SKIPPED');
    });
  });
}

/** What a hostile guest can do during a case: its RAM and fds, kicks, and more messages. */
export interface GuestContext {
  pool: FdPool;
  /** Kicks ring `ring` (0 or 1) through the case's kick eventfd. */
  kick(ring: number): void;
  /** Waits up to `ms` for the back-end to close the connection. */
  settle(ms: number): Promise<void>;
  /** Sends a message, with its checks; false once the connection is over. */
  send(w: Wire): Promise<boolean>;
}

/** The clean front-end's step-by-step session, one connection. */
export interface CleanSession {
  /** Which clean session this is (0, 1, ...): for fresh data each time. */
  readonly run: number;
  readonly guest: GuestMemory;
  step: string;
  /** Sends a request and returns the payload of its reply (checked: same request, REPLY). */
  ask(request: number, payload?: Uint8Array, fds?: number[], flags?: number): Promise<DataView>;
  /** Sends with NEED_REPLY and expects a zero (success) ack. */
  acked(request: number, payload?: Uint8Array, fds?: number[]): Promise<void>;
  /** The negotiation QEMU runs; returns the device's features. */
  negotiate(): Promise<bigint>;
  /** Sets the memory table (the clean RAM as two regions). */
  memory(): Promise<void>;
  /** Sets up and enables ring `k` at guest address `base`; returns its driver. */
  ring(k: number, base: number): Promise<SplitDriver>;
  /** Publishes what `driver` (ring `k`) made available, and kicks when the device asks to. */
  notify(driver: SplitDriver, k: number): void;
  /** {@link notify}, then waits for a used buffer, signalled. */
  serve(driver: SplitDriver, k: number): Promise<void>;
  /** Waits until `cond` holds (within the clean deadline), failing with `what`. */
  until(cond: () => boolean, what: string): Promise<void>;
  /** The back-end's counters. */
  probe(): Promise<Probe>;
}

export interface FuzzSpec<H> {
  /** Prefix of the fuzzer's log lines. */
  label: string;
  device: FuzzDevice;
  /** A front-end as QEMU is, through the device's rings, with exact checks. */
  clean(s: CleanSession): Promise<void>;
  /** The hostile guest of a case, once its messages are sent. */
  play(h: H, g: GuestContext): Promise<void>;
  /**
   * The used-buffer signals one clean session makes, when it is a constant. Without it the
   * runner probes the back-end between a case and its clean session, and gives `afterCase`
   * the counters across the case.
   */
  cleanCalls?: number;
  afterCase?(c: FuzzCase<H>, before: Probe, after: Probe): void;
}

/** What the generator of a fuzz run must reach (a broken generator fails, not silently). */
export type Reach = 'badHeaders' | 'hostileRings' | 'fuzzCalls';

/**
 * Registers the fuzzer's setup and teardown in the calling describe block (a fresh back-end
 * process; fds and RAM for the clean front-end) and returns its two entry points.
 */
export function socketFuzzSuite<H>(spec: FuzzSpec<H>) {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  let dir = '';
  let socket = '';
  let starts = 0;
  let backend: BackendProcess;
  /** Connections opened to the current back-end process. */
  let opened = 0;
  let baseline: Probe;
  /** The back-end's probe at the end of the last case (or its start). */
  let last: Probe;
  const shared = { devzero: -1, devnull: -1, dir: -1 };
  /** The clean front-end's guest RAM, and per ring its eventfds and signals seen. */
  let clean: {
    memfd: number;
    guest: GuestMemory;
    kicks: number[];
    callFds: number[];
    calls: number[];
    watchers: FdWatcher[];
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
    backend = await BackendProcess.start(socket, spec.device);
    opened = 0;
    await cleanSession();
    await backend.idle(opened);
    baseline = await backend.probe();
    last = baseline;
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

  async function cleanSession(): Promise<void> {
    const conn = await connect();
    const until = async (cond: () => boolean, what: string): Promise<void> => {
      const ok = await waitUntil(() => cond() || conn.eof || !backend.alive, CLEAN_MS);
      backend.assertAlive();
      if (!ok || !cond()) {
        throw new Error(conn.eof ? `connection closed: ${conn.closeReason}` : what);
      }
    };
    const s: CleanSession = {
      run: cleanRuns++,
      guest: clean.guest,
      step: 'connect',
      async ask(request, payload = EMPTY, fds = [], flags = VhostUserFlags.VERSION) {
        s.step = requestName(request) ?? String(request);
        const from = conn.replies.length;
        if (!(await conn.send(encode(request, payload, flags), fds))) {
          throw new Error('the back-end closed the connection');
        }
        await until(() => conn.replies.length > from, 'no reply');
        const reply = conn.replies[from]!;
        expect(reply.request).toBe(request);
        expect(reply.flags).toBe(REPLY_FLAGS);
        return new DataView(reply.payload.buffer, reply.payload.byteOffset, reply.payload.length);
      },
      async acked(request, payload, fds) {
        const r = await s.ask(request, payload, fds, NEED);
        expect(r.getBigUint64(0, true)).toBe(0n);
      },
      async negotiate() {
        const features = (await s.ask(R.GET_FEATURES)).getBigUint64(0, true);
        expect(features & PROTOCOL_BIT).toBe(PROTOCOL_BIT);
        const proto = (await s.ask(R.GET_PROTOCOL_FEATURES)).getBigUint64(0, true);
        expect(proto & PROTOCOL_FEATURES).toBe(PROTOCOL_FEATURES);
        s.step = 'SET_PROTOCOL_FEATURES';
        const sent = await conn.send(encode(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES)), []);
        expect(sent).toBe(true);
        expect((await s.ask(R.GET_QUEUE_NUM)).getBigUint64(0, true)).toBe(1n);
        await s.acked(R.SET_OWNER);
        return features;
      },
      memory: () => s.acked(R.SET_MEM_TABLE, memTable(), [clean.memfd, clean.memfd]),
      async ring(k, base) {
        const driver = new SplitDriver(clean.guest, { size: QSIZE, base });
        const { desc, avail, used } = driver.layout;
        await s.acked(R.SET_VRING_NUM, u32s(k, QSIZE));
        await s.acked(R.SET_VRING_BASE, u32s(k, 0));
        await s.acked(R.SET_VRING_ADDR, vringAddr(k, desc, avail, used));
        await s.acked(R.SET_VRING_CALL, u64(k), [clean.callFds[k]!]);
        await s.acked(R.SET_VRING_KICK, u64(k), [clean.kicks[k]!]);
        await s.acked(R.SET_VRING_ENABLE, u32s(k, 1));
        return driver;
      },
      notify(driver, k) {
        if (driver.kick()) n.eventfdWrite(clean.kicks[k]!, 1);
      },
      async serve(driver, k) {
        const calls = clean.calls[k]!;
        s.notify(driver, k);
        await until(
          () => driver.hasUsed() && clean.calls[k]! > calls,
          'the request was not completed (or not signalled)',
        );
      },
      until,
      probe: () => backend.probe(),
    };
    try {
      await spec.clean(s);
    } catch (e) {
      throw new Error(
        `the clean front-end failed at ${s.step}: ${(e as Error).message}\n` +
          `back-end disconnect reasons (last 3): ${backend.disconnects.slice(-3).join(' | ')}`,
      );
    } finally {
      conn.close();
    }
  }

  /** Sends one case's messages, checking every answer the back-end owes, then its guest. */
  async function runCase(c: FuzzCase<H>, pool: FdPool, cov: Coverage): Promise<void> {
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
    const sendWire = async (w: Wire, what: string): Promise<void> => {
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
        await check(framer.feed(piece), what);
        if (conn.eof) break;
      }
    };
    const open = () => !conn.eof && !framer.broken;
    try {
      for (const [i, w] of c.wires.entries()) {
        if (!open()) break;
        await sendWire(w, `message ${i}`);
      }
      if (c.hostile !== null && open()) {
        cov.hostileRings++;
        await spec.play(c.hostile, {
          pool,
          kick: (ring) => n.eventfdWrite(ring === 0 ? pool.fd.kick : pool.fd.kick1, 1),
          settle: async (ms) => {
            await waitUntil(() => conn.eof, ms);
          },
          send: async (w) => {
            if (open()) await sendWire(w, 'a message of the guest');
            return open();
          },
        });
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
  async function fuzzOne(c: FuzzCase<H>, cov: Coverage = emptyCoverage()): Promise<Probe> {
    if (!backend.alive) await startBackend();
    const logsBefore = backend.logs.length;
    const pool = new FdPool(n, shared);
    cov.cases++;
    try {
      await runCase(c, pool, cov);
      let mid: Probe | null = null;
      if (spec.cleanCalls === undefined) {
        await backend.idle(opened);
        mid = await backend.probe();
        spec.afterCase?.(c, last, mid);
      }
      await cleanSession();
      await backend.idle(opened);
      const probe = await backend.probe();
      expect(probe.connected).toBe(false);
      expect(probe.fds, 'fds held by the back-end when idle').toEqual(baseline.fds);
      const logs = backend.logs.slice(logsBefore);
      for (const l of logs) logCounts.set(l.msg, (logCounts.get(l.msg) ?? 0) + 1);
      const internal = logs.filter((l) => l.msg === INTERNAL_ERROR);
      expect(internal, 'internal errors logged by the back-end').toEqual([]);
      cov.fuzzCalls +=
        mid !== null
          ? mid.stats.calls - last.stats.calls
          : Math.max(0, probe.stats.calls - last.stats.calls - spec.cleanCalls!);
      last = probe;
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

  /** `runs` cases of `arb` (VIRTQ_SOCKET_FUZZ_RUNS overrides), reaching what `reach` names. */
  async function fuzz(
    name: string,
    arb: fc.Arbitrary<FuzzCase<H>>,
    runs: number,
    reach: readonly Reach[] = [],
  ): Promise<Coverage> {
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
      `${spec.label} ${name}: ${cov.cases} cases in ${Date.now() - started} ms (seed ${SEED}): ` +
        `${cov.closedByBackend} closed by the back-end, ${cov.badHeaders} bad headers, ` +
        `${cov.answered} awaited answers, ${cov.hostileRings} hostile rings, ` +
        `${cov.fuzzCalls} used-buffer signals`,
    );
    // The generators reach what they are for (a broken generator fails here, not silently).
    if (REPLAY_PATH === undefined && numRuns >= 100) {
      expect(cov.answered).toBeGreaterThan(0);
      expect(cov.closedByBackend).toBeGreaterThan(0);
      for (const what of reach) expect(cov[what], what).toBeGreaterThan(0);
    }
    return cov;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'virtq-socket-fuzz-'));
    shared.devzero = openSync('/dev/zero', 'r');
    shared.devnull = openSync('/dev/null', 'r+');
    shared.dir = openSync(dir, 'r');
    const memfd = n.memfdCreate('clean-ram', 0);
    n.ftruncate(memfd, RAM);
    const ram = n.mmap(memfd, RAM, 0, n.constants.PROT_READ | n.constants.PROT_WRITE);
    const eventfd = () => n.eventfd(0, n.constants.EFD_NONBLOCK);
    const callFds = [eventfd(), eventfd()];
    clean = {
      memfd,
      guest: new GuestMemory([
        { base: 0, length: HALF, buffer: ram },
        { base: REGION1_GPA, length: HALF, buffer: ram, offset: HALF },
      ]),
      kicks: [eventfd(), eventfd()],
      callFds,
      calls: [0, 0],
      watchers: callFds.map((call, k) =>
        n.watch(call, n.constants.POLL_READABLE, () => {
          const v = n.eventfdRead(call);
          if (typeof v === 'bigint' || v > 0) clean.calls[k]!++;
          wake();
        }),
      ),
    };
    await startBackend();
  });

  afterAll(() => {
    backend?.kill();
    if (clean !== undefined) {
      for (const w of clean.watchers) w.stop();
      for (const fd of [clean.memfd, ...clean.kicks, ...clean.callFds]) n.close(fd);
    }
    for (const fd of Object.values(shared)) if (fd >= 0) closeSync(fd);
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
    if (logCounts.size > 0) {
      const top = [...logCounts].sort((a, b) => b[1] - a[1]).slice(0, 12);
      console.log(
        `${spec.label}: back-end log messages\n${top.map(([m, k]) => `  ${k} x ${m}`).join('\n')}`,
      );
    }
  });

  return { fuzz, fuzzOne };
}
