/**
 * An experiment, not part of the test suite (see docs/REAL-GUEST.md, "Live migration"):
 *
 *   npm run build && node --import tsx scripts/vhost-user-blk-migration.ts [--runs N] [--qemu-blk]
 *
 * Live migration with `virtq vhost-user-blk` on both sides (LOG_SHMFD): a Linux guest reads a
 * pattern back from the disk with direct I/O in a loop, and QEMU migrates it, mid-loop, to a
 * second QEMU served by a second back-end on the same image. While QEMU copies memory, the
 * first back-end logs every page its device writes (read data, statuses, the used ring); the
 * guest must go on reading correct data on the destination, and the destination back-end must
 * resume each ring where the source stopped it (VRING_BASE), split and packed.
 *
 * `--qemu-blk` runs the same with QEMU's own virtio-blk instead, as the reference. Prints one
 * line per run and the diagnostics of failed runs; exits non-zero when any run failed.
 */
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  buildGuest,
  createRawImage,
  GUEST_DEPS_INSTALL,
  type LoggedProcess,
  missingGuestDeps,
  runQemu,
  sharedMemoryArgs,
  spawnLogged,
  stopProcess,
  virtqCliArgs,
  waitFor,
} from '../test/real/guest.js';

const missing = await missingGuestDeps();
if (missing.length > 0) {
  console.error(`missing: ${missing.join('; ')}. Install with: ${GUEST_DEPS_INSTALL}`);
  process.exit(2);
}
const qemuBlk = process.argv.includes('--qemu-blk');
const runsAt = process.argv.indexOf('--runs');
const RUNS = runsAt < 0 ? 1 : Number(process.argv[runsAt + 1]);

const MEM_MIB = 256;
const PATTERN_BYTES = 4 << 20;
const LOOPS = 60;
const LINE = 'virtq-live-migration-0123456789';

const GUEST_SCRIPT = `set -e
wait_for /dev/vda
yes ${LINE} | head -c ${PATTERN_BYTES} > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=65536 oflag=direct conv=fsync 2>/dev/null
echo "MIGRATE-NOW"
i=0
while [ $i -lt ${LOOPS} ]; do
  dd if=/dev/vda of=/tmp/back bs=65536 count=${PATTERN_BYTES / 65536} iflag=direct 2>/dev/null
  cmp -s /tmp/pattern /tmp/back || { echo "MISMATCH in loop $i"; cmp -l /tmp/pattern /tmp/back | wc -l; cmp -l /tmp/pattern /tmp/back | head -3; cmp -l /tmp/pattern /tmp/back | tail -2; exit 1; }
  i=$((i + 1))
done
echo "reads ok after ${LOOPS} loops"
`;

/** Sends HMP commands to a QEMU monitor socket and returns everything it printed. */
async function monitor(socket: string, commands: readonly string[]): Promise<string> {
  return new Promise((resolve) => {
    const c = net.createConnection(socket);
    let out = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => {
      out += d;
    });
    c.on('error', (e) => resolve(`${out}\n(monitor: ${e.message})`));
    c.on('connect', () => {
      for (const cmd of commands) c.write(`${cmd}\n`);
      setTimeout(() => c.end(), 300);
    });
    c.on('close', () => resolve(out));
  });
}

/** One migration; returns null when it went right, else what went wrong with diagnostics. */
async function migrateOnce(dir: string, packed: boolean): Promise<string | null> {
  const image = path.join(dir, `disk-${packed}.raw`);
  await createRawImage(image, 32 << 20);
  const cli = await virtqCliArgs();
  const sockA = path.join(dir, `a-${packed}.sock`);
  const sockB = path.join(dir, `b-${packed}.sock`);
  const mon = path.join(dir, `mon-${packed}.sock`);
  const mig = path.join(dir, `mig-${packed}.sock`);
  const start = (sock: string): LoggedProcess =>
    spawnLogged(process.execPath, [
      ...cli.args,
      'vhost-user-blk',
      '--socket-path',
      sock,
      '--blk-file',
      image,
    ]);
  const a = start(sockA);
  const b = start(sockB);
  try {
    if (!(await waitFor(() => existsSync(sockA) && existsSync(sockB), 20_000))) {
      return 'the back-ends did not start';
    }
    const guest = await buildGuest({ script: GUEST_SCRIPT });
    const device = (sock: string) =>
      qemuBlk
        ? [
            ...sharedMemoryArgs(MEM_MIB, 'pc'),
            '-drive',
            `file=${image},if=none,id=dr,format=raw,cache=none,aio=threads`,
            '-device',
            `virtio-blk-pci,drive=dr${packed ? ',packed=on' : ''}`,
          ]
        : [
            ...sharedMemoryArgs(MEM_MIB, 'pc'),
            '-chardev',
            `socket,id=c0,path=${sock}`,
            '-device',
            `vhost-user-blk-pci,chardev=c0,id=d0${packed ? ',packed=on' : ''}`,
          ];
    let migrated = false;
    let sourceOut = '';
    const source = runQemu({
      ...guest,
      memMiB: MEM_MIB,
      timeoutMs: 90_000,
      args: [...device(sockA), '-monitor', `unix:${mon},server=on,wait=off`],
      onOutput: (chunk) => {
        sourceOut += chunk;
        if (!migrated && sourceOut.includes('MIGRATE-NOW')) {
          migrated = true;
          void monitor(mon, [`migrate -d unix:${mig}`]);
        }
      },
    });
    const destination = runQemu({
      ...guest,
      memMiB: MEM_MIB,
      timeoutMs: 90_000,
      args: [...device(sockB), '-incoming', `unix:${mig}`],
    });
    const d = await destination;
    const info = await monitor(mon, ['info migrate', 'quit']);
    const s = await source;
    await stopProcess(a);
    await stopProcess(b);
    const ok =
      migrated &&
      /Migration status: completed/.test(info) &&
      d.guestRc === 0 &&
      d.stdout.includes(`reads ok after ${LOOPS} loops`);
    if (ok) return null;
    return `--- source ---\n${s.stdout}\n--- destination ---\n${d.stdout}\n--- monitor ---\n${info}\n--- back-end A ---\n${a.log.join('')}\n--- back-end B ---\n${b.log.join('')}`;
  } finally {
    await stopProcess(a);
    await stopProcess(b);
  }
}

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-migrate-'));
let failures = 0;
try {
  for (let run = 1; run <= RUNS; run++) {
    for (const packed of [false, true]) {
      const why = await migrateOnce(dir, packed);
      console.log(
        `${why === null ? 'PASS' : 'FAIL'} run ${run} ${packed ? 'packed' : 'split'}${qemuBlk ? ' (QEMU virtio-blk)' : ''}`,
      );
      if (why !== null) {
        failures++;
        console.log(why);
      }
    }
  }
} finally {
  await fs.rm(dir, { recursive: true, force: true });
}
process.exitCode = failures === 0 ? 0 : 1;
