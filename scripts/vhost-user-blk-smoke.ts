/**
 * Boots a real Linux guest (test/real/guest.ts) against `virtq vhost-user-blk`:
 *
 *   node --import tsx scripts/vhost-user-blk-smoke.ts [--verbose] [--only <name part>]
 *
 * For each case, starts the CLI back-end as a child process on a fresh raw image, boots QEMU
 * with shared guest memory and a vhost-user-blk device on the back-end's socket, lets the guest
 * write a pattern with direct I/O, read it back and compare, then checks the image on the host.
 * Exits non-zero on any failure. The test suite's version, with many more checks, is
 * test/real/vhost-user-blk.test.ts; this script is for a quick look (`--verbose` prints every
 * console and back-end log). Microvm guests get `tsc_early_khz=` from runQemu (see
 * docs/REAL-GUEST.md: without it they hang whenever the host is busy).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  buildGuest,
  createRawImage,
  type Machine,
  runQemu,
  sharedMemoryArgs,
  vhostUserBlkArgs,
} from '../test/real/guest.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const IMAGE_BYTES = 16 << 20;
const OFFSET_BLOCKS = 256;
const PATTERN_BYTES = 1 << 20;
const PATTERN_LINE = 'virtq-vhost-user-blk-smoke-0123456789';
const MEM_MIB = 256;

function guestScript(expectPacked: boolean): string {
  return `set -e
wait_for /dev/vda
echo "vda size_sectors=$(cat /sys/block/vda/size)"
features=$(cat /sys/block/vda/device/features)
packed=$(echo "$features" | cut -c35)
echo "vda features=$features VIRTIO_F_RING_PACKED=$packed"
[ "$packed" = ${expectPacked ? 1 : 0} ] || { echo "FAIL: packed ring bit is $packed"; exit 1; }
yes ${PATTERN_LINE} | head -c ${PATTERN_BYTES} > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 seek=${OFFSET_BLOCKS} oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=4096 skip=${OFFSET_BLOCKS} count=${PATTERN_BYTES / 4096} iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo "readback ok"
`;
}

interface Case {
  readonly name: string;
  readonly machine: Machine;
  readonly packed: boolean;
  readonly numQueues?: number;
}

const ALL_CASES: readonly Case[] = [
  { name: 'pci split', machine: 'pc', packed: false },
  { name: 'microvm split', machine: 'microvm', packed: false },
  { name: 'pci packed', machine: 'pc', packed: true },
  { name: 'microvm packed', machine: 'microvm', packed: true },
  { name: 'pci split, 2 queues', machine: 'pc', packed: false, numQueues: 2 },
];

/** `--only <substring>` runs the cases whose name contains it. */
const only = process.argv.indexOf('--only');
const CASES =
  only < 0 ? ALL_CASES : ALL_CASES.filter((c) => c.name.includes(process.argv[only + 1] ?? ''));

function expectedPattern(): Buffer {
  const line = Buffer.from(`${PATTERN_LINE}\n`);
  const out = Buffer.alloc(PATTERN_BYTES);
  for (let i = 0; i < PATTERN_BYTES; i += line.length) line.copy(out, i);
  return out;
}

function startBackend(
  socket: string,
  image: string,
  numQueues: number,
): { child: ChildProcess; log: string[] } {
  const log: string[] = [];
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(root, 'src/cli/main.ts'),
      'vhost-user-blk',
      '--socket-path',
      socket,
      '--blk-file',
      image,
      '--num-queues',
      String(numQueues),
    ],
    { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout?.on('data', (d: Buffer) => log.push(d.toString()));
  child.stderr?.on('data', (d: Buffer) => log.push(d.toString()));
  return { child, log };
}

async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

async function main(): Promise<number> {
  const verbose = process.argv.includes('--verbose');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vub-smoke-'));
  const expected = expectedPattern();
  let failures = 0;
  try {
    for (const c of CASES) {
      const image = path.join(dir, 'disk.raw');
      const socket = path.join(dir, 'vub.sock');
      await createRawImage(image, IMAGE_BYTES);
      const { child, log } = startBackend(socket, image, c.numQueues ?? 1);
      let exited = false;
      child.on('exit', () => {
        exited = true;
      });
      try {
        if (!(await waitFor(() => existsSync(socket) || exited, 15_000)) || exited) {
          failures++;
          console.log(`FAIL ${c.name}: the back-end did not start\n${log.join('')}`);
          continue;
        }
        const guest = await buildGuest({ script: guestScript(c.packed) });
        const args = [
          ...sharedMemoryArgs(MEM_MIB, c.machine),
          ...vhostUserBlkArgs({
            socket,
            machine: c.machine,
            packed: c.packed,
            ...(c.numQueues !== undefined ? { numQueues: c.numQueues } : {}),
          }),
        ];
        // Linux drives at most one queue per CPU.
        const smp = c.numQueues ?? 1;
        const r = await runQemu({ ...guest, args, timeoutMs: 60_000, memMiB: MEM_MIB, smp });
        const bytes = await fs.readFile(image);
        const start = OFFSET_BLOCKS * 4096;
        const hostOk = bytes.subarray(start, start + PATTERN_BYTES).equals(expected);
        const ok = r.guestRc === 0 && !r.timedOut && hostOk && !exited;
        if (!ok) failures++;
        const info = r.stdout
          .split(/\r?\n/)
          .filter((l) => l.startsWith('vda ') || l.startsWith('readback') || l.includes('FAIL'))
          .map((l) => `    ${l}`)
          .join('\n');
        console.log(
          `${ok ? 'PASS' : 'FAIL'} ${c.name}: ready after ${r.readyMs?.toFixed(0) ?? '-'} ms, ` +
            `total ${r.durationMs.toFixed(0)} ms; guest rc=${r.guestRc}, qemu exit=${r.exitCode}, ` +
            `timedOut=${r.timedOut}, host bytes ${hostOk ? 'match' : 'DIFFER'}` +
            `${exited ? ', BACK-END EXITED' : ''}`,
        );
        if (info !== '') console.log(info);
        if (!ok || verbose) {
          console.log(r.stdout);
          console.log(`--- back-end log ---\n${log.join('')}`);
        }
      } finally {
        child.kill('SIGTERM');
        await waitFor(() => exited, 5_000);
      }
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  return failures === 0 ? 0 : 1;
}

process.exitCode = await main();
