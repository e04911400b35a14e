/**
 * vhost-user-blk throughput, guest-measured: the same Linux guest (test/real/guest.ts) on the
 * same raw image, once against `virtq vhost-user-blk` and once against QEMU's
 * `qemu-storage-daemon`, alternating, N rounds.
 *
 *   npm run bench -- vhost-user-blk [--rounds=N] [options]
 *   bench/vhost-user-blk.sh [--rounds=N] [options]
 *   node --import tsx bench/vhost-user-blk.ts [--rounds=N] [options]
 *
 * Every boot runs four `dd` workloads with direct I/O inside the guest (busybox only), each
 * timed by the guest's own monotonic clock (`now at ... nsecs` of /proc/timer_list, read with
 * shell built-ins only, so no process start falls between the two reads):
 *
 * - `seq-write`: `dd if=/dev/zero of=/dev/vda bs=1M count=<image> oflag=direct`, repeated
 *   until `--seq-mib` MiB have moved
 * - `seq-read`:  `dd if=/dev/vda of=/dev/null bs=1M count=<image> iflag=direct`, the same
 * - `4k-write`:  `dd if=/dev/zero of=/dev/vda bs=4096 count=<small> oflag=direct`
 * - `4k-read`:   `dd if=/dev/vda of=/dev/null bs=4096 count=<small> iflag=direct`
 *
 * `dd` has one request in flight at a time (queue depth 1), so each figure is a round-trip
 * rate: guest block layer, QEMU's front-end notification, the back-end's service of the
 * request, and the interrupt back. The guest runs under TCG and is slow; both back-ends face
 * the same guest, so the ratio virtq / qemu-storage-daemon is the figure to read.
 *
 * Both back-ends get one request queue; the guest uses the split ring (qemu-storage-daemon
 * never offers the packed one), the PCI machine (`vhost-user-blk-pci`, queue size 128) and
 * 512 MiB of shared memory. The image is a file of `--image-mib` MiB filled with
 * pseudo-random bytes and fsynced before the first boot, so reads hit written blocks in the
 * host's page cache; neither back-end opens it with O_DIRECT (qemu-storage-daemon's
 * `driver=file` default is cache.direct=off, aio=threads as REAL-DRIVERS.md gives it).
 *
 * Options (also from the environment, `VIRTQ_BENCH_<NAME>` with dashes as underscores,
 * e.g. VIRTQ_BENCH_ROUNDS=5):
 *   --rounds=N         rounds of (virtq, qemu-storage-daemon) boots (default 5)
 *   --image-mib=N      image size (default 256)
 *   --seq-mib=N        MiB moved by each 1 MiB workload (default 2048: passes over the
 *                      image, so at most the image size or a multiple of it)
 *   --small-count=N    4 KiB requests of each 4 KiB workload (default 6000)
 *   --backends=LIST    `virtq,qsd` (default), or any of virtq, virtq-main (no ring threads),
 *                      virtq-async (--async-io), virtq-poll (--poll 50), qsd
 *   --dist             run the back-end from dist/ (`npm run build` first) instead of tsx
 *   --node-args=ARGS   extra node flags for the virtq back-end, space-separated
 *                      (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`)
 *   --verbose          console output of every boot and the back-ends' logs on stderr
 */
import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  buildGuest,
  type LoggedProcess,
  type QemuResult,
  runQemu,
  sharedMemoryArgs,
  spawnLogged,
  stopProcess,
  vhostUserBlkArgs,
  waitFor,
} from '../test/real/guest.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const MEM_MIB = 512;
const MIB = 1 << 20;
const SMALL = 4096;
/** Queues of both back-ends and of the QEMU device (qemu-storage-daemon's default is 1). */
const NUM_QUEUES = 1;
const BOOT_TIMEOUT_MS = 240_000;

export const WORKLOADS = ['seq-write', 'seq-read', '4k-write', '4k-read'] as const;
export type Workload = (typeof WORKLOADS)[number];
export const BACKENDS = ['virtq', 'virtq-main', 'virtq-async', 'virtq-poll', 'qsd'] as const;
export type Backend = (typeof BACKENDS)[number];

const BACKEND_LABEL: Record<Backend, string> = {
  virtq: 'virtq',
  'virtq-main': 'virtq --no-ring-threads',
  'virtq-async': 'virtq --async-io',
  'virtq-poll': 'virtq --poll 50',
  qsd: 'qemu-storage-daemon',
};

export interface Options {
  rounds: number;
  imageMiB: number;
  seqMiB: number;
  smallCount: number;
  backends: Backend[];
  dist: boolean;
  nodeArgs: string[];
  verbose: boolean;
}

function option(args: readonly string[], name: string): string | undefined {
  const flag = `--${name}=`;
  const given = args.find((a) => a.startsWith(flag));
  if (given !== undefined) return given.slice(flag.length);
  const env = process.env[`VIRTQ_BENCH_${name.toUpperCase().replaceAll('-', '_')}`];
  return env === undefined || env === '' ? undefined : env;
}

function intOption(args: readonly string[], name: string, def: number, min: number): number {
  const v = option(args, name);
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min)
    throw new Error(`--${name} must be an integer >= ${min}`);
  return n;
}

export function parseOptions(args: readonly string[]): Options {
  const known = ['rounds', 'image-mib', 'seq-mib', 'small-count', 'backends', 'node-args'];
  for (const a of args) {
    if (a === '--dist' || a === '--verbose' || a === '-v') continue;
    if (!known.some((k) => a.startsWith(`--${k}=`))) throw new Error(`unknown argument ${a}`);
  }
  const imageMiB = intOption(args, 'image-mib', 256, 16);
  const seqMiB = intOption(args, 'seq-mib', 2048, 1);
  if (seqMiB > imageMiB && seqMiB % imageMiB !== 0) {
    throw new Error('--seq-mib must be at most --image-mib or a multiple of it');
  }
  const smallCount = intOption(args, 'small-count', 6000, 1);
  if (smallCount * SMALL > imageMiB * MIB) throw new Error('--small-count exceeds the image');
  const backends = (option(args, 'backends') ?? 'virtq,qsd').split(',').map((b) => {
    if (!(BACKENDS as readonly string[]).includes(b)) throw new Error(`unknown back-end ${b}`);
    return b as Backend;
  });
  const nodeArgs = (option(args, 'node-args') ?? '').split(' ').filter((a) => a !== '');
  return {
    rounds: intOption(args, 'rounds', 5, 1),
    imageMiB,
    seqMiB,
    smallCount,
    backends,
    dist: args.includes('--dist'),
    nodeArgs,
    verbose: args.includes('--verbose') || args.includes('-v'),
  };
}

/** The guest's script: device facts, then the four timed workloads. */
export function guestScript(o: Pick<Options, 'seqMiB' | 'smallCount' | 'imageMiB'>): string {
  // A sequential workload larger than the disk is several passes over it.
  const count = Math.min(o.seqMiB, o.imageMiB);
  const passes = o.seqMiB / count;
  return `set -e
wait_for /dev/vda
q=/sys/block/vda/queue
echo "VIRTQ-BENCH-INFO sectors=$(cat /sys/block/vda/size) max_segments=$(cat $q/max_segments) max_sectors_kb=$(cat $q/max_sectors_kb) hw_queues=$(ls /sys/block/vda/mq | wc -l) features=$(cat /sys/block/vda/device/features)"
# The monotonic clock in ns: the third line of /proc/timer_list is "now at <ns> nsecs".
now() {
  { read -r _l; read -r _l; read -r _l; } < /proc/timer_list
  set -- $_l
  T=$3
}
# passes N COMMAND...: runs COMMAND N times.
passes() {
  _n=$1; shift
  while [ "$_n" -gt 0 ]; do "$@"; _n=$((_n - 1)); done
}
# run NAME BYTES COMMAND...: times COMMAND and prints the result line.
run() {
  _name=$1; _bytes=$2; shift 2
  now; _t0=$T
  "$@" 2>/dev/null
  now
  echo "VIRTQ-BENCH $_name bytes=$_bytes t0=$_t0 t1=$T"
}
run seq-write ${o.seqMiB * MIB} passes ${passes} dd if=/dev/zero of=/dev/vda bs=1M count=${count} oflag=direct
run seq-read ${o.seqMiB * MIB} passes ${passes} dd if=/dev/vda of=/dev/null bs=1M count=${count} iflag=direct
run 4k-write ${o.smallCount * SMALL} dd if=/dev/zero of=/dev/vda bs=4096 count=${o.smallCount} oflag=direct
run 4k-read ${o.smallCount * SMALL} dd if=/dev/vda of=/dev/null bs=4096 count=${o.smallCount} iflag=direct
`;
}

/** One boot's figures. */
export interface RunResult {
  readonly backend: Backend;
  readonly round: number;
  /** Bytes per second of each workload. */
  readonly rate: Record<Workload, number>;
  /** Seconds each workload took. */
  readonly seconds: Record<Workload, number>;
  readonly info: string;
  readonly bootMs: number;
}

/** Parses the guest's result lines out of its console output. */
export function parseGuestOutput(out: string): {
  rate: Partial<Record<Workload, number>>;
  seconds: Partial<Record<Workload, number>>;
  info: string;
} {
  const rate: Partial<Record<Workload, number>> = {};
  const seconds: Partial<Record<Workload, number>> = {};
  for (const m of out.matchAll(/VIRTQ-BENCH (\S+) bytes=(\d+) t0=(\d+) t1=(\d+)/g)) {
    const name = m[1] as Workload;
    const ns = Number(m[4]) - Number(m[3]);
    seconds[name] = ns / 1e9;
    rate[name] = (Number(m[2]) / ns) * 1e9;
  }
  const info = /VIRTQ-BENCH-INFO (.*)/.exec(out)?.[1]?.trim() ?? '';
  return { rate, seconds, info };
}

/** The back-end's command line (socket and image filled in). */
export function backendCommand(
  backend: Backend,
  socket: string,
  image: string,
  o: Pick<Options, 'dist' | 'nodeArgs'>,
): string[] {
  if (backend === 'qsd') {
    return [
      'qemu-storage-daemon',
      '--blockdev',
      `driver=file,node-name=f,filename=${image},aio=threads`,
      '--export',
      `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${socket},writable=on,num-queues=${NUM_QUEUES}`,
    ];
  }
  const entry = o.dist
    ? [path.join(root, 'dist/cli/main.js')]
    : ['--import', 'tsx', path.join(root, 'src/cli/main.ts')];
  return [
    process.execPath,
    ...o.nodeArgs,
    ...entry,
    'vhost-user-blk',
    '--socket-path',
    socket,
    '--blk-file',
    image,
    '--num-queues',
    String(NUM_QUEUES),
    // Every ring on the main thread; or ring threads with large transfers on the thread pool.
    ...(backend === 'virtq-main' ? ['--no-ring-threads'] : []),
    ...(backend === 'virtq-async' ? ['--async-io'] : []),
    ...(backend === 'virtq-poll' ? ['--poll', '50'] : []),
  ];
}

function startBackend(command: readonly string[]): LoggedProcess {
  return spawnLogged(command[0]!, command.slice(1));
}

async function createImage(file: string, mib: number): Promise<void> {
  const h = await fs.open(file, 'w');
  try {
    const chunk = Buffer.alloc(MIB);
    for (let i = 0; i < mib; i++) {
      randomFillSync(chunk);
      await h.write(chunk, 0, MIB, i * MIB);
    }
    await h.datasync();
  } finally {
    await h.close();
  }
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** MB/s (10^6 bytes) for the 1 MiB workloads, IOPS for the 4 KiB ones. */
function figure(w: Workload, bytesPerSecond: number): number {
  return w.startsWith('4k') ? bytesPerSecond / SMALL : bytesPerSecond / 1e6;
}

function unit(w: Workload): string {
  return w.startsWith('4k') ? 'IOPS' : 'MB/s';
}

function fmt(n: number, digits = 1): string {
  return n.toFixed(digits);
}

async function oneRun(
  backend: Backend,
  round: number,
  o: Options,
  dir: string,
  image: string,
  guest: { kernel: string; initrd: string },
): Promise<RunResult> {
  const socket = path.join(dir, `${backend}.sock`);
  const command = backendCommand(backend, socket, image, o);
  const started = startBackend(command);
  try {
    if (
      !(await waitFor(() => existsSync(socket) || started.exitCode !== undefined, 30_000)) ||
      started.exitCode !== undefined
    ) {
      throw new Error(`${BACKEND_LABEL[backend]} did not start:\n${started.log.join('')}`);
    }
    const args = [
      ...sharedMemoryArgs(MEM_MIB, 'pc'),
      ...vhostUserBlkArgs({ socket, machine: 'pc', numQueues: NUM_QUEUES }),
    ];
    const r: QemuResult = await runQemu({
      ...guest,
      args,
      timeoutMs: BOOT_TIMEOUT_MS,
      memMiB: MEM_MIB,
    });
    if (o.verbose) {
      process.stderr.write(`# ${r.command.join(' ')}\n${r.stdout}\n`);
      process.stderr.write(`# --- ${BACKEND_LABEL[backend]} log ---\n${started.log.join('')}\n`);
    }
    const parsed = parseGuestOutput(r.stdout);
    const missing = WORKLOADS.filter((w) => parsed.rate[w] === undefined);
    if (r.guestRc !== 0 || r.timedOut || missing.length > 0 || started.exitCode !== undefined) {
      throw new Error(
        `${BACKEND_LABEL[backend]} round ${round}: guest rc=${r.guestRc}, timedOut=${r.timedOut}, ` +
          `missing ${missing.join(',') || 'nothing'}${started.exitCode !== undefined ? ', back-end exited' : ''}\n` +
          `${r.stdout}\n--- back-end log ---\n${started.log.join('')}`,
      );
    }
    return {
      backend,
      round,
      rate: parsed.rate as Record<Workload, number>,
      seconds: parsed.seconds as Record<Workload, number>,
      info: parsed.info,
      bootMs: r.readyMs ?? Number.NaN,
    };
  } finally {
    await stopProcess(started, 10_000);
  }
}

function runLine(r: RunResult): string {
  const parts = WORKLOADS.map((w) => {
    const key = `${w.replace('-', '_')}_${unit(w) === 'IOPS' ? 'iops' : 'mb_s'}`;
    return `${key}=${fmt(figure(w, r.rate[w]))}`;
  });
  const secs = WORKLOADS.map((w) => fmt(r.seconds[w], 2)).join('/');
  return `virtq vhost-user-blk backend=${r.backend} round=${r.round} ${parts.join(' ')} seconds=${secs} ready_ms=${fmt(r.bootMs, 0)}`;
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string[] {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    `| ${cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join(' | ')} |`;
  return [
    line(header),
    `|${w.map((n, i) => (i === 0 ? `${'-'.repeat(n + 1)}-` : `${'-'.repeat(n + 1)}:`)).join('|')}|`,
    ...rows.map(line),
  ];
}

export async function main(argv: readonly string[]): Promise<number> {
  const o = parseOptions(argv);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vub-bench-'));
  const results: RunResult[] = [];
  try {
    const image = path.join(dir, 'disk.raw');
    await createImage(image, o.imageMiB);
    const guest = await buildGuest({ script: guestScript(o) });
    const [l1, l5, l15] = os.loadavg();
    console.log('# virtq bench vhost-user-blk');
    console.log(`# node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu?'} x${os.cpus().length}`);
    console.log(`# date ${new Date().toISOString()}`);
    console.log(
      `# load average ${fmt(l1!, 2)} ${fmt(l5!, 2)} ${fmt(l15!, 2)} (1, 5, 15 min) at the start`,
    );
    console.log(
      `# guest kernel ${guest.kernelVersion}, TCG, 1 vCPU, ${MEM_MIB} MiB; image ${o.imageMiB} MiB; ` +
        `seq ${o.seqMiB} MiB per workload, 4 KiB x ${o.smallCount}`,
    );
    console.log(`# command: bench/vhost-user-blk.ts ${argv.join(' ')}`.trimEnd());
    for (const b of o.backends) {
      console.log(`# ${BACKEND_LABEL[b]}: ${backendCommand(b, 'SOCK', 'IMG', o).join(' ')}`);
    }
    for (let round = 1; round <= o.rounds; round++) {
      for (const b of o.backends) {
        const r = await oneRun(b, round, o, dir, image, guest);
        results.push(r);
        console.log(runLine(r));
        if (round === 1) console.log(`#   ${BACKEND_LABEL[b]} guest sees: ${r.info}`);
      }
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }

  // Medians per back-end, and virtq / qsd ratios (of the medians and per round).
  const of = (b: Backend) => results.filter((r) => r.backend === b);
  const med = (b: Backend, w: Workload) => median(of(b).map((r) => figure(w, r.rate[w])));
  const compared = o.backends.includes('qsd') ? o.backends.filter((b) => b !== 'qsd') : [];
  console.log('');
  const header = ['workload', ...o.backends.map((b) => `${BACKEND_LABEL[b]} (median)`)];
  for (const b of compared) header.push(`${b} / qsd`, 'per-round ratios');
  const rows = WORKLOADS.map((w) => {
    const row = [`${w} (${unit(w)})`, ...o.backends.map((b) => fmt(med(b, w)))];
    const q = of('qsd');
    for (const b of compared) {
      row.push(fmt(med(b, w) / med('qsd', w), 2));
      row.push(
        of(b)
          .map((r, i) => fmt(r.rate[w] / q[i]!.rate[w], 2))
          .join(' '),
      );
    }
    return row;
  });
  for (const l of table(header, rows)) console.log(l);
  const [l1] = os.loadavg();
  console.log(`\n# load average ${fmt(l1!, 2)} (1 min) at the end`);
  return 0;
}

const isMain = process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1];
if (isMain) {
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (e) {
    console.error(`# vhost-user-blk bench failed: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 1;
  }
}
