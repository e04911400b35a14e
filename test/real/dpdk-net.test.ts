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
  exited = false;

  constructor(socket: string, devargs: string, mode: string) {
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
        `net_virtio_user0,path=${socket},queues=1,${devargs}`,
        '--',
        '-i',
        '--nb-cores=1',
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
    });
    this.child.stderr!.on('data', (s: string) => {
      this.out += s;
    });
    this.child.on('exit', () => {
      this.exited = true;
    });
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
    await this.expect('++++++++++\n', at);
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
  const pmd = new Testpmd(socket, devargs, mode);
  try {
    await pmd.expect('testpmd> ');
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
