/**
 * vhost-user-net packet rates, virtq's back-end against DPDK's native one, side by side: the
 * same driver (DPDK testpmd's `net_virtio_user`, a userspace virtio-net driver) talks to
 * `virtq vhost-user-net` and to testpmd's `net_vhost`, alternating, N rounds.
 *
 *   npm run bench -- vhost-user-net [--rounds=N] [--seconds=S] [--dist] [--poll=MICROS]
 *     [--dirs=tx,rx,reflect] [--rings=split,packed] [--sizes=64,1500] [--node-args=ARGS]
 *     [--backends=virtq,native]
 *
 * Configurations: direction x ring (split, packed) x frame size (64, 1500 bytes):
 * - `tx`: the driver sends (`txonly`) into virtq's `sink`, or into native `rxonly`;
 * - `rx`: virtq's `generate` (or native `txonly`) sends, the driver receives (`rxonly`);
 * - `reflect`: the driver forwards what it receives back (`macswap`, started with four bursts
 *   in flight) through virtq's `reflect`, or through native `macswap`: a round-trip rate.
 * Each run forwards for `--seconds` (default 3) between testpmd's `start` and `stop`; the rate
 * is the driver's own packet count (TX for `tx`, RX otherwise) over that time, in Mpps. The
 * driver runs on CPU 1, the back-end (virtq's Node process with `taskset -c 0`, or the native
 * testpmd's lcores) on CPU 0.
 *
 * Output: `virtq vhost-user-net dir=<d> ring=<r> size=<n> virtq_mpps=<f> native_mpps=<f>
 * ratio=<virtq/native>` per configuration, each rate the best of its rounds.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const TESTPMD = '/usr/bin/dpdk-testpmd';

function option(name: string, fallback: string): string {
  const flag = process.argv.find((a) => a.startsWith(`--${name}=`));
  if (flag !== undefined) return flag.slice(name.length + 3);
  return process.env[`VIRTQ_BENCH_${name.toUpperCase().replace(/-/g, '_')}`] ?? fallback;
}
const ROUNDS = Number(option('rounds', '2'));
const SECONDS = Number(option('seconds', '3'));
const DIST = process.argv.includes('--dist');
/** virtq's `--poll` (microseconds; 0: kicks only). */
const POLL = Number(option('poll', '0'));
/** Which directions, rings and sizes to run (comma-separated; default all). */
const DIRS = option('dirs', 'tx,rx,reflect').split(',');
const RINGS = option('rings', 'split,packed').split(',');
const SIZES = option('sizes', '64,1500').split(',').map(Number);
/** Which back-ends to run (say, `virtq` alone to compare two builds or flags of it). */
const BACKENDS = option('backends', 'virtq,native').split(',');
for (const b of BACKENDS) {
  if (b !== 'virtq' && b !== 'native') throw new Error(`unknown back-end ${b} (virtq, native)`);
}
/** Extra node flags for virtq's back-end, space-separated (say, `--cpu-prof`). */
const NODE_ARGS = option('node-args', '')
  .split(' ')
  .filter((a) => a !== '');

type Direction = 'tx' | 'rx' | 'reflect';
interface Config {
  dir: Direction;
  packed: boolean;
  size: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A process whose output is collected, with a line-by-line stdin for testpmd. */
class Proc {
  readonly child: ChildProcess;
  /** Both streams, as they came (for error messages). */
  out = '';
  /** Standard output alone: testpmd's prompt, which a line on stderr may otherwise split. */
  stdout = '';
  exited = false;
  constructor(cmd: string, args: string[]) {
    this.child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], cwd: repoRoot });
    for (const s of [this.child.stdout!, this.child.stderr!]) {
      s.setEncoding('utf8');
      const isStdout = s === this.child.stdout;
      s.on('data', (d: string) => {
        this.out += d;
        if (isStdout) this.stdout += d;
      });
    }
    this.child.on('exit', () => {
      this.exited = true;
    });
  }
  /** testpmd's first prompt, on standard output (a line on stderr may split it in `out`). */
  async waitForPrompt(ms = 30_000): Promise<void> {
    const end = Date.now() + ms;
    while (!this.stdout.includes('testpmd> ')) {
      if (this.exited || Date.now() > end) {
        throw new Error(`no "testpmd> " from ${this.child.spawnargs[0]}:\n${this.out}`);
      }
      await sleep(20);
    }
  }
  /** Waits for `text` in the output after offset `from`; returns the offset after it. */
  async waitFor(text: string, from = 0, ms = 30_000): Promise<number> {
    const end = Date.now() + ms;
    for (;;) {
      const at = this.out.indexOf(text, from);
      if (at >= 0) return at + text.length;
      if (this.exited || Date.now() > end) {
        throw new Error(`no ${JSON.stringify(text)} from ${this.child.spawnargs[0]}:\n${this.out}`);
      }
      await sleep(20);
    }
  }
  send(line: string): void {
    this.child.stdin!.write(`${line}\n`);
  }
  async stop(): Promise<void> {
    if (this.exited) return;
    this.child.kill('SIGTERM');
    const end = Date.now() + 5000;
    while (!this.exited && Date.now() < end) await sleep(20);
    if (!this.exited) this.child.kill('SIGKILL');
  }
}

let runs = 0;

function testpmd(cpu: number, vdev: string, mode: string, extra: string[] = []): Proc {
  return new Proc('stdbuf', [
    '-oL',
    TESTPMD,
    '--lcores',
    `0@${cpu},1@${cpu}`,
    '--no-huge',
    '-m',
    '1024',
    '--no-pci',
    `--file-prefix=vqbench${process.pid}x${runs++}`,
    '--vdev',
    vdev,
    '--',
    '-i',
    '--nb-cores=1',
    '--no-flush-rx',
    `--forward-mode=${mode}`,
    ...extra,
  ]);
}

function virtqBackend(socket: string, c: Config): Proc {
  const cli = DIST ? ['dist/cli/main.js'] : ['--import', 'tsx', 'src/cli/main.ts'];
  const backend =
    c.dir === 'tx'
      ? ['--backend', 'sink']
      : c.dir === 'rx'
        ? [
            '--backend',
            'generate',
            '--count',
            String(1e12),
            '--frame-size',
            String(Math.min(c.size, 1514)),
          ]
        : ['--backend', 'reflect'];
  return new Proc('taskset', [
    '-c',
    '0',
    process.execPath,
    ...NODE_ARGS,
    ...cli,
    'vhost-user-net',
    '--socket-path',
    socket,
    '--poll',
    String(POLL),
    ...backend,
  ]);
}

/** One run: the driver's packet rate in Mpps against one back-end. */
async function run(c: Config, kind: 'virtq' | 'native', dir: string): Promise<number> {
  const socket = path.join(dir, `net${runs}.sock`);
  const txpkts = [`--txpkts=${c.size}`];
  let backend: Proc;
  if (kind === 'virtq') {
    backend = virtqBackend(socket, c);
    await backend.waitFor('serving');
  } else {
    const mode = c.dir === 'tx' ? 'rxonly' : c.dir === 'rx' ? 'txonly' : 'macswap';
    backend = testpmd(0, `net_vhost0,iface=${socket},queues=1`, mode, txpkts);
    await backend.waitForPrompt();
    backend.send('start');
  }
  const devargs = `net_virtio_user0,path=${socket},queues=1,packed_vq=${c.packed ? 1 : 0}`;
  const mode = c.dir === 'tx' ? 'txonly' : c.dir === 'rx' ? 'rxonly' : 'macswap';
  const driver = testpmd(1, devargs, mode, txpkts);
  try {
    await driver.waitForPrompt();
    const t0 = performance.now();
    driver.send(c.dir === 'reflect' ? 'start tx_first 4' : 'start');
    await sleep(SECONDS * 1000);
    const from = driver.out.length;
    driver.send('stop');
    const t1 = performance.now();
    const at = await driver.waitFor('Accumulated forward statistics', from);
    // Its heading ends in '+' signs too: the block is complete once the TX line is.
    await driver.waitFor('\n', await driver.waitFor('TX-total:', at));
    const block = driver.out.slice(at);
    const m = (c.dir === 'tx' ? /TX-packets:\s+(\d+)/ : /RX-packets:\s+(\d+)/).exec(block);
    if (m === null) throw new Error(`no statistics:\n${block}`);
    driver.send('quit');
    return Number(m[1]) / ((t1 - t0) * 1000);
  } finally {
    await driver.stop();
    await backend.stop();
  }
}

async function main(): Promise<void> {
  if (!existsSync(TESTPMD)) {
    console.error(`# vhost-user-net: ${TESTPMD} is missing (sudo scripts/install-dpdk.sh)`);
    process.exitCode = 1;
    return;
  }
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-bench-net-'));
  console.log(
    `# vhost-user-net: ${ROUNDS} rounds of ${SECONDS} s, ${new Date().toISOString()}, node ${process.version}, load ${os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  );
  try {
    for (const d of (['tx', 'rx', 'reflect'] as const).filter((x) => DIRS.includes(x))) {
      for (const packed of [false, true].filter((p) => RINGS.includes(p ? 'packed' : 'split'))) {
        for (const size of [64, 1500].filter((s) => SIZES.includes(s))) {
          const c: Config = { dir: d, packed, size };
          const best = { virtq: 0, native: 0 };
          for (let r = 0; r < ROUNDS; r++) {
            for (const kind of (['virtq', 'native'] as const).filter((k) => BACKENDS.includes(k))) {
              const mpps = await run(c, kind, dir);
              console.error(
                `# round ${r + 1} ${kind} dir=${d} ring=${packed ? 'packed' : 'split'} size=${size}: ${mpps.toFixed(3)} Mpps`,
              );
              best[kind] = Math.max(best[kind], mpps);
            }
          }
          console.log(
            `virtq vhost-user-net dir=${d} ring=${packed ? 'packed' : 'split'} size=${size} virtq_mpps=${best.virtq.toFixed(3)} native_mpps=${best.native.toFixed(3)} ratio=${best.virtq > 0 && best.native > 0 ? (best.virtq / best.native).toFixed(2) : '-'}`,
          );
        }
      }
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

await main();
