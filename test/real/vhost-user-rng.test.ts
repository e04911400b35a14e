/**
 * `virtq vhost-user-rng` against a real Linux guest under QEMU (TCG, always under `timeout`):
 * QEMU's vhost-user-rng device (PCI on pc, virtio-mmio on microvm) on the back-end's socket,
 * and the kernel's own `virtio_rng` driver behind `/dev/hwrng`. The back-end reads a regular
 * file of known bytes (`--source`), so what the guest reads can be checked byte for byte
 * against it. Checked:
 * - the driver binds to the device and the hw_random core picks it;
 * - `/dev/hwrng` reads return exactly the bytes asked for, and they are the source's bytes;
 * - `--max-bytes` / `--period` hold, measured with the guest's own clock;
 * - a back-end that is killed and started again is survived (`reconnect=1`): reads carry on.
 *
 * When QEMU, the kernel or busybox is missing the tests are skipped with a loud warning, or
 * fail when CI is set. See docs/REAL-GUEST.md.
 */
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildGuest,
  guestDepsFor,
  type LoggedProcess,
  type Machine,
  parseFacts,
  type QemuResult,
  runQemu,
  sharedMemoryArgs,
  spawnLogged,
  stopProcess,
  vhostUserRngArgs,
  virtqCliArgs,
  waitFor,
} from './guest.js';

const { missing, inCi } = await guestDepsFor('test/real/vhost-user-rng.test.ts');

const MEM_MIB = 256;
const BOOT_TIMEOUT_MS = 90_000;
/** The source file: a pseudo-random sequence long enough that a window of it is unique. */
const SOURCE_BYTES = 1 << 20;
/** Bytes the guest asks for in one read of /dev/hwrng (the hw_random core splits it). */
const READ_BYTES = 4000;
/** The guest prints this when the host should kill the back-end (restart test). */
const KILL_MARK = 'VIRTQ-KILL-NOW';

function sourceBytes(): Buffer {
  // xorshift32: deterministic, and no 8-byte window repeats within the file.
  const out = Buffer.alloc(SOURCE_BYTES);
  let x = 0x9e3779b9;
  for (let i = 0; i < SOURCE_BYTES; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.writeUInt32LE(x, i);
  }
  return out;
}

const SOURCE = sourceBytes();

/** Guest shell: facts about the device and driver, then `reads` reads of /dev/hwrng. */
function guestScript(o: { reads: number; killBetween?: boolean; timed?: boolean }): string {
  const read = (i: number) =>
    [
      `t0=$(cut -d' ' -f1 /proc/uptime)`,
      `head -c ${READ_BYTES} /dev/hwrng > /tmp/r${i}; fact read${i}_rc $?`,
      `t1=$(cut -d' ' -f1 /proc/uptime)`,
      `fact read${i}_bytes "$(wc -c < /tmp/r${i})"`,
      `fact read${i}_seconds "$t0 $t1"`,
      // The first and the last 64 bytes (short lines: the console interleaves kernel output).
      `fact read${i}_head "$(head -c 64 /tmp/r${i} | hexdump -v -e '/1 "%02x"')"`,
      `fact read${i}_tail "$(tail -c 64 /tmp/r${i} | hexdump -v -e '/1 "%02x"')"`,
    ].join('\n');
  const lines = [
    'fact() { echo "FACT $1=$2"; }',
    'wait_for /dev/hwrng 100 || exit 1',
    'fact rng_current "$(cat /sys/class/misc/hw_random/rng_current)"',
    'fact rng_available "$(cat /sys/class/misc/hw_random/rng_available)"',
    'for d in /sys/bus/virtio/devices/*; do',
    '  if [ "$(cat $d/device)" = 0x0004 ]; then',
    '    fact driver "$(basename "$(readlink $d/driver)")"',
    '    fact features "$(cat $d/features)"',
    '  fi',
    'done',
  ];
  for (let i = 0; i < o.reads; i++) {
    if (o.killBetween === true && i === 1) {
      lines.push(`echo ${KILL_MARK}`, 'sleep 4');
    }
    lines.push(read(i));
  }
  lines.push('echo VIRTQ-GUEST-SCRIPT-DONE');
  return `${lines.join('\n')}\n`;
}

/** Where `bytes` sits in the source served in a loop, or -1 when it is not a window of it. */
function offsetInSource(bytes: Buffer): number {
  const twice = Buffer.concat([SOURCE, SOURCE.subarray(0, bytes.length)]);
  return twice.indexOf(bytes);
}

let workDir = '';
let cli: { args: string[]; what: string } = { args: [], what: '' };

function startBackend(socket: string, extra: string[]): LoggedProcess {
  return spawnLogged(process.execPath, [
    ...cli.args,
    'vhost-user-rng',
    '--socket-path',
    socket,
    '--source',
    path.join(workDir, 'source.bin'),
    ...extra,
  ]);
}

async function started(b: LoggedProcess, socket: string): Promise<void> {
  const up = await waitFor(
    () => b.log.join('').includes('virtq vhost-user-rng: serving') || b.exitCode !== undefined,
    30_000,
  );
  if (!up || b.exitCode !== undefined || !existsSync(socket)) {
    throw new Error(`the back-end (${cli.what}) did not start:\n${b.log.join('')}`);
  }
}

interface Boot {
  qemu: QemuResult;
  facts: Map<string, string>;
  log: string;
  diagnostics: string;
}

/**
 * One boot. Normally the back-end listens and QEMU connects. With `restart`, QEMU listens
 * (`server=on`: QEMU 7.2's vhost-user-rng cannot start on a `reconnect=1` chardev, whose first
 * connection is made in the background) and the back-end connects (`--connect`); at the
 * guest's mark the back-end is killed and a new one connects.
 */
async function boot(
  name: string,
  machine: Machine,
  packed: boolean,
  script: string,
  backendArgs: string[],
  restart = false,
): Promise<Boot> {
  const socket = path.join(workDir, `${name}.sock`);
  const backends: LoggedProcess[] = [];
  let out = '';
  let watcher: ReturnType<typeof setInterval> | undefined;
  try {
    const guest = await buildGuest({ script });
    let qemuRun: Promise<QemuResult>;
    const launch = () =>
      runQemu({
        ...guest,
        memMiB: MEM_MIB,
        timeoutMs: BOOT_TIMEOUT_MS,
        onOutput: (chunk) => {
          out += chunk;
        },
        args: [
          ...sharedMemoryArgs(MEM_MIB, machine),
          ...vhostUserRngArgs({ socket, machine, packed, server: restart }),
        ],
      });
    if (!restart) {
      backends.push(startBackend(socket, backendArgs));
      await started(backends[0]!, socket);
      qemuRun = launch();
    } else {
      qemuRun = launch();
      const connectArgs = [...backendArgs, '--connect'];
      if (!(await waitFor(() => existsSync(socket), 30_000)))
        throw new Error('QEMU made no socket');
      backends.push(startBackend(socket, connectArgs));
      await started(backends[0]!, socket);
      watcher = setInterval(() => {
        if (backends.length > 1 || !out.includes(KILL_MARK)) return;
        backends[0]!.child.kill('SIGKILL');
        backends.push(startBackend(socket, connectArgs));
      }, 25);
    }
    const qemu = await qemuRun;
    await stopProcess(backends[backends.length - 1]!);
    const log = backends
      .map((b, i) => `${i > 0 ? '--- second back-end ---\n' : ''}${b.log.join('')}`)
      .join('');
    return {
      qemu,
      facts: parseFacts(qemu.stdout),
      log,
      diagnostics: `===== ${name}: ${qemu.command.join(' ')}\n--- guest ---\n${qemu.stdout}\n--- back-end (${cli.what}) ---\n${log}`,
    };
  } finally {
    if (watcher !== undefined) clearInterval(watcher);
    for (const b of backends) b.child.kill('SIGKILL');
  }
}

/** The checks every boot makes: the guest ran, the driver bound, each read is whole and real. */
function expectReads(b: Boot, reads: number): void {
  const d = b.diagnostics;
  expect(b.qemu.timedOut, d).toBe(false);
  expect(b.qemu.guestRc, d).toBe(0);
  expect(b.qemu.stdout, d).toContain('VIRTQ-GUEST-SCRIPT-DONE');
  expect(b.facts.get('driver'), d).toBe('virtio_rng');
  expect(b.facts.get('rng_current'), d).toMatch(/^virtio_rng\.\d+$/);
  for (let i = 0; i < reads; i++) {
    expect(b.facts.get(`read${i}_rc`), d).toBe('0');
    expect(b.facts.get(`read${i}_bytes`), d).toBe(String(READ_BYTES));
    // The device fills each request from the source in order, so both ends of a read are
    // windows of the source.
    for (const end of ['head', 'tail']) {
      const got = Buffer.from(b.facts.get(`read${i}_${end}`) ?? '', 'hex');
      expect(got.length, d).toBe(64);
      expect(
        offsetInSource(got),
        `read ${i} (${end}): not the source's bytes\n${d}`,
      ).toBeGreaterThanOrEqual(0);
    }
  }
  expect(b.log, d).not.toMatch(/failed|error|Error/);
}

describe('real guest: virtq vhost-user-rng', () => {
  it('has what it needs', () => {
    if (inCi) expect(missing).toEqual([]);
  });

  beforeAll(async () => {
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vu-rng-'));
    await fs.writeFile(path.join(workDir, 'source.bin'), SOURCE);
    cli = await virtqCliArgs();
  });
  afterAll(async () => {
    if (workDir !== '') await fs.rm(workDir, { recursive: true, force: true });
  });

  const layouts: [Machine, boolean][] = [
    ['pc', false],
    ['pc', true],
    ['microvm', false],
    ['microvm', true],
  ];
  it.skipIf(missing.length > 0).each(layouts)(
    '%s, packed=%s: virtio_rng binds and /dev/hwrng returns the bytes asked for, from the source',
    async (machine, packed) => {
      const b = await boot(
        `plain-${machine}-${packed}`,
        machine,
        packed,
        guestScript({ reads: 2 }),
        [],
      );
      expectReads(b, 2);
      // VIRTIO_F_RING_PACKED is bit 34 of the negotiated features string.
      expect(b.facts.get('features')?.charAt(34), b.diagnostics).toBe(packed ? '1' : '0');
      expect(b.facts.get('features')?.charAt(32), b.diagnostics).toBe('1');
    },
    120_000,
  );

  it.skipIf(missing.length > 0)(
    'the rate limit holds, measured in the guest (--max-bytes 1000 --period 500)',
    async () => {
      const b = await boot('rate', 'pc', false, guestScript({ reads: 1 }), [
        '--max-bytes',
        process.env.RNG_MAX ?? '1000',
        '--period',
        '500',
      ]);
      expectReads(b, 1);
      const [t0, t1] = (b.facts.get('read0_seconds') ?? '').split(' ').map(Number);
      const seconds = t1! - t0!;
      // 4000 bytes at 1000 per 500 ms: whatever the first period had left, at least three more
      // periods must start before the read is complete; the guest's clock ticks in 10 ms.
      expect(seconds, b.diagnostics).toBeGreaterThanOrEqual(1.5 - 0.02);
      // And the limit does not starve the guest: well within twice what the quota allows.
      expect(seconds, b.diagnostics).toBeLessThan(4);
      const rate = READ_BYTES / seconds;
      expect(rate, b.diagnostics).toBeLessThanOrEqual((1000 / 0.5) * (4 / 3) + 1);
    },
    120_000,
  );

  it.skipIf(missing.length > 0)(
    'a back-end that is killed and started again is survived (QEMU listens, the back-end connects)',
    async () => {
      const b = await boot(
        'restart',
        'pc',
        false,
        guestScript({ reads: 2, killBetween: true }),
        [],
        true,
      );
      expect(b.log, b.diagnostics).toContain('--- second back-end ---');
      expect(b.log.split('front-end connected').length - 1, b.diagnostics).toBe(2);
      expectReads(b, 2);
    },
    120_000,
  );
});
