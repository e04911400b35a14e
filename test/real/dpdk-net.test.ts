/**
 * `virtq vhost-user-net` against DPDK's testpmd as the driver: `net_virtio_user` is an
 * independent userspace virtio-net driver that speaks vhost-user, so a virtq back-end serves a
 * real driver that is not Linux. One queue pair, split and packed rings, `in_order` 0 and 1,
 * `mrg_rxbuf` 0 and 1. Counts decide, from testpmd's own statistics and the back-end's:
 * - `sink`: testpmd sends (`txonly`) and the sink counted exactly the packets testpmd sent;
 * - `reflect`: testpmd sends 10 bursts (`start tx_first 10`) and then only receives: every
 *   packet comes back, so received = sent = reflected;
 * - `generate --count N`: testpmd receives (`rxonly`) exactly N packets.
 *
 * When testpmd or its drivers are missing the tests are skipped with a loud warning, or fail
 * when CI is set (`scripts/install-dpdk.sh` installs them). See docs/REAL-GUEST.md.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type LoggedProcess, spawnLogged, stopProcess, virtqCliArgs, waitFor } from './guest.js';

const TESTPMD = '/usr/bin/dpdk-testpmd';
const PMD_DIR = '/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0';
const NEEDED = [
  TESTPMD,
  `${PMD_DIR}/librte_net_virtio.so.23`,
  `${PMD_DIR}/librte_mempool_ring.so.23`,
];
const missing = NEEDED.filter((f) => !existsSync(f));
const ci = process.env.CI ?? '';
const inCi = ci !== '' && ci !== '0' && ci.toLowerCase() !== 'false';
if (missing.length > 0) {
  const bar = '!'.repeat(100);
  console.warn(
    `${bar}\ntest/real/dpdk-net.test.ts: the DPDK tests ${inCi ? 'FAIL (CI is set)' : 'are SKIPPED'}: missing\n` +
      missing.map((m) => `  - ${m}\n`).join('') +
      `Install them with: sudo scripts/install-dpdk.sh\n${bar}`,
  );
}

const GENERATE_COUNT = 20_000;

let workDir = '';
const cli = await virtqCliArgs();
let runs = 0;

beforeAll(async () => {
  workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-dpdk-'));
});

afterAll(async () => {
  if (workDir !== '') await fs.rm(workDir, { recursive: true, force: true });
});

function startBackend(socket: string, args: string[]): LoggedProcess {
  return spawnLogged(process.execPath, [
    ...cli.args,
    'vhost-user-net',
    '--socket-path',
    socket,
    ...args,
  ]);
}

/** testpmd, interactive, with the commands written to its stdin as the test goes. */
class Testpmd {
  readonly child: ChildProcess;
  out = '';
  /** Standard output alone (`out` has both streams, in arrival order). */
  stdout = '';
  exited = false;

  constructor(socket: string, devargs: string, mode: string, queues = 1, extra: string[] = []) {
    const prefix = `virtq${process.pid}x${runs++}`;
    this.child = spawn(
      'timeout',
      [
        '60',
        // testpmd prints its statistics with stdio, fully buffered into a pipe: line by line.
        'stdbuf',
        '-oL',
        TESTPMD,
        '--lcores',
        '0@1,1@1',
        '--no-huge',
        '-m',
        '1024',
        '--no-pci',
        `--file-prefix=${prefix}`,
        '--vdev',
        `net_virtio_user0,path=${socket}${queues === 1 ? ',queues=1' : `,queues=${queues}`},${devargs}`,
        '--',
        '-i',
        '--nb-cores=1',
        ...(queues > 1 ? [`--rxq=${queues}`, `--txq=${queues}`] : []),
        ...extra,
        // `start` would drop what already waits in the receive ring (generated frames the
        // device delivered before it): count those too.
        '--no-flush-rx',
        `--forward-mode=${mode}`,
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    this.child.stdout!.setEncoding('utf8');
    this.child.stderr!.setEncoding('utf8');
    this.child.stdout!.on('data', (s: string) => {
      this.out += s;
      this.stdout += s;
    });
    this.child.stderr!.on('data', (s: string) => {
      this.out += s;
    });
    this.child.on('exit', () => {
      this.exited = true;
    });
  }

  /**
   * Waits for testpmd's prompt on its standard output alone: in the merged output a message
   * on standard error can land between "testpmd" and "> " (seen once: the promiscuous-mode
   * warning after a reconnect).
   */
  async prompt(ms = 30_000): Promise<void> {
    const ok = await waitFor(() => this.stdout.includes('testpmd> ') || this.exited, ms);
    if (!ok || !this.stdout.includes('testpmd> '))
      throw new Error(`testpmd did not print its prompt:\n${this.out}`);
  }

  /** Waits until testpmd printed `text` (after `from`), or fails with its output. */
  async expect(text: string, from = 0, ms = 30_000): Promise<number> {
    const ok = await waitFor(() => this.out.indexOf(text, from) >= 0 || this.exited, ms);
    const at = this.out.indexOf(text, from);
    if (!ok || at < 0)
      throw new Error(`testpmd did not print ${JSON.stringify(text)}:\n${this.out}`);
    return at + text.length;
  }

  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }

  /** `stop`, and the accumulated RX and TX packet counts it prints. */
  async stop(): Promise<{ rx: number; tx: number }> {
    const from = this.out.length;
    this.send('stop');
    const at = await this.expect('Accumulated forward statistics', from);
    // The heading itself ends in '+' signs: wait for the end of the TX line, the block's last
    // counters, or the block can be read before testpmd wrote them.
    await this.expect('\n', await this.expect('TX-total:', at));
    const block = this.out.slice(at);
    const rx = /RX-packets:\s+(\d+)/.exec(block);
    const tx = /TX-packets:\s+(\d+)/.exec(block);
    if (rx === null || tx === null) throw new Error(`no statistics in:\n${block}`);
    return { rx: Number(rx[1]), tx: Number(tx[1]) };
  }

  async quit(): Promise<void> {
    this.send('quit');
    if (!(await waitFor(() => this.exited, 20_000))) this.child.kill('SIGKILL');
  }
}

/** The back-end's closing line of counters, e.g. "sank 10 frames, 640 bytes". */
async function backendCount(b: LoggedProcess, verb: RegExp): Promise<number> {
  await stopProcess(b);
  const m = verb.exec(b.log.join(''));
  if (m === null) throw new Error(`no counters in the back-end's output:\n${b.log.join('')}`);
  return Number(m[1]);
}

async function session(
  args: string[],
  devargs: string,
  mode: string,
  drive: (pmd: Testpmd) => Promise<void>,
  queues = 1,
  extra: string[] = [],
): Promise<{ pmd: Testpmd; backend: LoggedProcess; counts: { rx: number; tx: number } }> {
  const socket = path.join(workDir, `net${runs}.sock`);
  const backend = startBackend(socket, args);
  const up = await waitFor(
    () =>
      backend.log.join('').includes('virtq vhost-user-net: serving') ||
      backend.exitCode !== undefined,
    30_000,
  );
  if (!up || backend.exitCode !== undefined) {
    throw new Error(`the back-end (${cli.what}) did not start:\n${backend.log.join('')}`);
  }
  const pmd = new Testpmd(socket, devargs, mode, queues, extra);
  try {
    await pmd.prompt();
    await drive(pmd);
    const counts = await pmd.stop();
    await pmd.quit();
    return { pmd, backend, counts };
  } catch (e) {
    pmd.child.kill('SIGKILL');
    await stopProcess(backend);
    throw e;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const RINGS = [
  ...[false, true].flatMap((packed) =>
    [0, 1].flatMap((inOrder) =>
      [0, 1].map((mrg) => ({
        name: `${packed ? 'packed' : 'split'} in_order=${inOrder} mrg_rxbuf=${mrg}`,
        devargs: `packed_vq=${packed ? 1 : 0},in_order=${inOrder},mrg_rxbuf=${mrg}`,
        poll: [] as string[],
      })),
    ),
  ),
  // Polling mode: the same counts, with the rings served by polling (driver notifications off).
  ...[false, true].map((packed) => ({
    name: `${packed ? 'packed' : 'split'} in_order=1 mrg_rxbuf=1 --poll 200`,
    devargs: `packed_vq=${packed ? 1 : 0},in_order=1,mrg_rxbuf=1`,
    poll: ['--poll', '200'],
  })),
];

/** With `--poll`, the back-end's counters show rings served by polling. */
function expectPolled(backend: LoggedProcess, poll: readonly string[]): void {
  if (poll.length > 0) expect(backend.log.join('')).toMatch(/"pollTurns":[1-9]/);
}

describe.skipIf(missing.length > 0 && !inCi)(
  'virtq vhost-user-net with DPDK testpmd (net_virtio_user)',
  () => {
    it('has testpmd and its drivers (CI installs them)', () => {
      expect(missing).toEqual([]);
    });

    describe.each(RINGS)('$name', ({ devargs, poll }) => {
      it('sink: counts exactly the packets testpmd sent', async () => {
        const { backend, counts } = await session(
          [...poll, '--backend', 'sink'],
          devargs,
          'txonly',
          async (pmd) => {
            pmd.send('start');
            await sleep(1000);
          },
        );
        const sank = await backendCount(backend, /sank (\d+) frames/);
        expect(counts.tx).toBeGreaterThan(1000);
        expect(sank).toBe(counts.tx);
        expectPolled(backend, poll);
      }, 90_000);

      it('reflect: every packet comes back (received = sent = reflected)', async () => {
        const { backend, counts } = await session(
          [...poll, '--backend', 'reflect'],
          devargs,
          'rxonly',
          async (pmd) => {
            pmd.send('start tx_first 10');
            await sleep(1500);
          },
        );
        const reflected = await backendCount(backend, /reflected (\d+) frames/);
        expect(counts.tx).toBeGreaterThan(0);
        expect(reflected).toBe(counts.tx);
        expect(counts.rx).toBe(counts.tx);
        expectPolled(backend, poll);
      }, 90_000);

      it(`generate: testpmd receives exactly --count ${GENERATE_COUNT} packets`, async () => {
        const { backend, counts } = await session(
          [
            ...poll,
            '--backend',
            'generate',
            '--count',
            String(GENERATE_COUNT),
            '--frame-size',
            '64',
          ],
          devargs,
          'rxonly',
          async (pmd) => {
            pmd.send('start');
            await sleep(1500);
          },
        );
        const generated = await backendCount(backend, /generated (\d+) of/);
        expect(generated).toBe(GENERATE_COUNT);
        expect(counts.rx).toBe(GENERATE_COUNT);
        expectPolled(backend, poll);
      }, 90_000);
    });
  },
);

// ---- Disconnect and reconnect mid-traffic (issue 13) ----
//
// One back-end, two testpmd sessions on its socket. The first ends while packets are in flight:
// killed (SIGKILL, so no vhost-user teardown at all) or quit without a `stop` first. The back-end
// must stay up, reset its device, accept the second session and count that one exactly.

/** Waits until the back-end's log holds `text` at least `times` times, or fails with the log. */
async function untilLogged(b: LoggedProcess, text: string, times = 1): Promise<void> {
  const seen = () => b.log.join('').split(text).length - 1;
  if (!(await waitFor(() => seen() >= times || b.exitCode !== undefined, 20_000)) || seen() < times)
    throw new Error(
      `the back-end did not log ${JSON.stringify(text)} ${times}x:\n${b.log.join('')}`,
    );
}

/** A back-end that says it is serving, and its socket. */
async function servingBackend(args: string[]): Promise<{ socket: string; backend: LoggedProcess }> {
  const socket = path.join(workDir, `reconnect${runs}.sock`);
  const backend = startBackend(socket, args);
  await untilLogged(backend, 'virtq vhost-user-net: serving');
  return { socket, backend };
}

/**
 * SIGKILL to testpmd itself: `timeout` runs it as its child (stdbuf execs it), and a kill of
 * `timeout` alone would leave testpmd running.
 */
async function killTestpmd(pmd: Testpmd): Promise<void> {
  const pid = pmd.child.pid;
  if (pid !== undefined && !pmd.exited) {
    let children = '';
    try {
      children = await fs.readFile(`/proc/${pid}/task/${pid}/children`, 'utf8');
    } catch {
      // `timeout` already gone.
    }
    for (const c of children.split(' ')) if (c.trim() !== '') process.kill(Number(c), 'SIGKILL');
  }
  if (!(await waitFor(() => pmd.exited, 20_000))) pmd.child.kill('SIGKILL');
}

interface Session {
  mode: string;
  /** The command that starts traffic. */
  start: string;
}

/**
 * Serves `first` for about a second, ends it abruptly (`kill`) or with `quit` while traffic
 * runs, then serves `second` for `ms` and stops it cleanly. Returns the back-end (still running),
 * the second session's counts and, after a `quit`, the first session's TX count.
 */
async function reconnectMidTraffic(
  args: string[],
  devargs: string,
  first: Session & { end: 'kill' | 'quit' },
  second: Session & { ms: number },
): Promise<{ backend: LoggedProcess; counts: { rx: number; tx: number }; firstTx: number | null }> {
  const { socket, backend } = await servingBackend(args);
  const pmds: Testpmd[] = [];
  try {
    const one = new Testpmd(socket, devargs, first.mode);
    pmds.push(one);
    await one.prompt();
    one.send(first.start);
    await sleep(1000);
    let firstTx: number | null = null;
    if (first.end === 'kill') await killTestpmd(one);
    else {
      // testpmd stops forwarding on its way out and prints its statistics.
      const from = one.out.length;
      await one.quit();
      const tx = /TX-packets:\s+(\d+)/.exec(one.out.slice(from));
      if (tx !== null) firstTx = Number(tx[1]);
    }
    await untilLogged(backend, 'front-end left', 1);
    expect(backend.exitCode).toBeUndefined();

    const two = new Testpmd(socket, devargs, second.mode);
    pmds.push(two);
    await two.prompt();
    two.send(second.start);
    await sleep(second.ms);
    const counts = await two.stop();
    await two.quit();
    await untilLogged(backend, 'front-end left', 2);
    expect(backend.exitCode).toBeUndefined();
    return { backend, counts, firstTx };
  } catch (e) {
    for (const p of pmds) await killTestpmd(p);
    await stopProcess(backend);
    throw e;
  }
}

/** What every reconnection case checks in the stopped back-end's log. */
function expectServedTwice(backend: LoggedProcess, poll: readonly string[]): void {
  const log = backend.log.join('');
  expect(log.split('front-end connected').length - 1).toBe(2);
  expect(log).toMatch(/stopping; \{"connections":2,/);
  // The device was reset at each disconnect, never left in DEVICE_NEEDS_RESET.
  expect(log).not.toContain('needs a reset');
  expect(log).not.toContain('internal error');
  expectPolled(backend, poll);
}

const RECONNECT_RINGS = [
  { name: 'split', devargs: 'packed_vq=0,in_order=0,mrg_rxbuf=1', poll: [] as string[] },
  { name: 'packed', devargs: 'packed_vq=1,in_order=0,mrg_rxbuf=1', poll: [] as string[] },
  {
    name: 'split --poll 200',
    devargs: 'packed_vq=0,in_order=1,mrg_rxbuf=1',
    poll: ['--poll', '200'],
  },
];

describe.skipIf(missing.length > 0 && !inCi)('disconnect and reconnect mid-traffic', () => {
  describe.each(RECONNECT_RINGS)('$name', ({ devargs, poll }) => {
    it('sink: testpmd killed mid-traffic; the back-end survives and counts a new session', async () => {
      const { backend, counts } = await reconnectMidTraffic(
        [...poll, '--backend', 'sink'],
        devargs,
        { mode: 'txonly', start: 'start', end: 'kill' },
        { mode: 'txonly', start: 'start', ms: 1000 },
      );
      const sank = await backendCount(backend, /sank (\d+) frames/);
      expect(counts.tx).toBeGreaterThan(1000);
      // The first session's share is unknown (its testpmd died with its counters) but not zero.
      expect(sank).toBeGreaterThan(counts.tx);
      expectServedTwice(backend, poll);
    }, 120_000);

    it('reflect: testpmd killed while packets bounce; the new session gets back all it sends', async () => {
      const { backend, counts } = await reconnectMidTraffic(
        [...poll, '--backend', 'reflect'],
        devargs,
        // `io` sends every reflected packet out again: the first bursts bounce until the kill.
        { mode: 'io', start: 'start tx_first 4', end: 'kill' },
        { mode: 'rxonly', start: 'start tx_first 10', ms: 1500 },
      );
      const reflected = await backendCount(backend, /reflected (\d+) frames/);
      expect(counts.tx).toBeGreaterThan(0);
      expect(counts.rx).toBe(counts.tx);
      expect(reflected).toBeGreaterThan(counts.tx);
      expectServedTwice(backend, poll);
    }, 120_000);

    it('sink: testpmd quits mid-traffic (no stop first); a new session is counted', async () => {
      const { backend, counts, firstTx } = await reconnectMidTraffic(
        [...poll, '--backend', 'sink'],
        devargs,
        { mode: 'txonly', start: 'start', end: 'quit' },
        { mode: 'txonly', start: 'start', ms: 1000 },
      );
      const sank = await backendCount(backend, /sank (\d+) frames/);
      expect(counts.tx).toBeGreaterThan(1000);
      expect(firstTx).toBeGreaterThan(1000);
      // Exact but for what the first testpmd queued and stopped its ring on (one ring at most).
      expect(sank).toBeLessThanOrEqual(firstTx! + counts.tx);
      expect(sank).toBeGreaterThanOrEqual(firstTx! + counts.tx - 256);
      expectServedTwice(backend, poll);
    }, 120_000);
  });
});

// ---- Two queue pairs (issue 13): virtio-user serves the control queue and enables pair 2 ----
//
// `queues=2` in the vdev and `--rxq=2 --txq=2`: testpmd's virtio-user negotiates MQ, reads
// max_virtqueue_pairs, answers its own VQ_PAIRS_SET by enabling rings 2 and 3
// (SET_VRING_ENABLE), and forwards on both queues. virtq serves the four data rings.

const MQ_RINGS = [
  { name: 'split', devargs: 'packed_vq=0,in_order=0,mrg_rxbuf=1' },
  { name: 'packed', devargs: 'packed_vq=1,in_order=0,mrg_rxbuf=1' },
];

/** Packets testpmd's per-stream statistics show for receive queue `q` of port 0. */
function rxOnQueue(out: string, q: number): number {
  const at = out.lastIndexOf(`Forward Stats for RX Port= 0/Queue= ${q} `);
  if (at < 0) return 0;
  const m = /RX-packets:\s+(\d+)/.exec(out.slice(at));
  return m === null ? 0 : Number(m[1]);
}

describe.skipIf(missing.length > 0 && !inCi)('two queue pairs (--queues 2, queues=2)', () => {
  describe.each(MQ_RINGS)('$name', ({ devargs }) => {
    it('sink: counts exactly the packets testpmd sent on both queues', async () => {
      const { backend, counts, pmd } = await session(
        ['--backend', 'sink', '--queues', '2'],
        devargs,
        'txonly',
        async (p) => {
          p.send('start');
          await sleep(1000);
        },
        2,
      );
      const sank = await backendCount(backend, /sank (\d+) frames/);
      expect(pmd.out).toMatch(/TX Port= 0\/Queue= 1/);
      expect(counts.tx).toBeGreaterThan(1000);
      expect(sank).toBe(counts.tx);
    }, 90_000);

    it('reflect: every packet comes back, spread over both receive queues by flow', async () => {
      const { backend, counts, pmd } = await session(
        ['--backend', 'reflect', '--queues', '2'],
        devargs,
        'rxonly',
        async (p) => {
          // Multi-flow: each packet has its own source address, so flows go to both queues.
          p.send('start tx_first 10');
          await sleep(1500);
        },
        2,
        ['--txonly-multi-flow'],
      );
      const reflected = await backendCount(backend, /reflected (\d+) frames/);
      expect(counts.tx).toBeGreaterThan(0);
      expect(reflected).toBe(counts.tx);
      expect(counts.rx).toBe(counts.tx);
      expect(rxOnQueue(pmd.out, 0)).toBeGreaterThan(0);
      expect(rxOnQueue(pmd.out, 1)).toBeGreaterThan(0);
    }, 90_000);

    it(`generate: testpmd receives exactly --count ${GENERATE_COUNT} packets`, async () => {
      const { backend, counts } = await session(
        ['--backend', 'generate', '--queues', '2', '--count', String(GENERATE_COUNT)],
        devargs,
        'rxonly',
        async (p) => {
          p.send('start');
          await sleep(1500);
        },
        2,
      );
      const generated = await backendCount(backend, /generated (\d+) of/);
      expect(generated).toBe(GENERATE_COUNT);
      expect(counts.rx).toBe(GENERATE_COUNT);
    }, 90_000);
  });
});
