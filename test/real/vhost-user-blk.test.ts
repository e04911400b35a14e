/**
 * `virtq vhost-user-blk` against a real Linux guest: the CLI back-end serves a fresh raw image,
 * QEMU (TCG, always under `timeout`) boots Debian's 6.1 kernel with a busybox initramfs
 * (test/real/guest.ts) and a vhost-user-blk device on the back-end's socket, and a script in
 * the guest reports what the kernel's virtio-blk driver sees and does. The host then checks
 * those facts against what the back-end advertises, and the image's bytes against what the
 * guest wrote.
 *
 * One boot per configuration, one QEMU at a time. When QEMU, the kernel or busybox is missing
 * the tests are skipped with a loud warning, or fail when CI is set. See docs/REAL-GUEST.md.
 */
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBlkDevice } from '../../src/cli/blk-device.js';
import { BLK_CONFIG } from '../../src/devices/index.js';
import {
  buildGuest,
  createRawImage,
  FALLOC_FL_KEEP_SIZE,
  FALLOC_FL_PUNCH_HOLE,
  fallocateProgram,
  GUEST_DEPS_INSTALL,
  guestDepsFor,
  type LoggedProcess,
  type Machine,
  parseFacts,
  type QemuResult,
  runQemu,
  sharedMemoryArgs,
  spawnLogged,
  stopProcess,
  vhostUserBlkArgs,
  virtqCliArgs,
  waitFor,
} from './guest.js';

// ---------------------------------------------------------------------------------------------
// Presence check: loud skip locally, failure under CI.

const { missing, inCi } = await guestDepsFor('test/real/vhost-user-blk.test.ts');

// ---------------------------------------------------------------------------------------------
// The layout of what the guest writes.

const MiB = 1 << 20;
const KiB = 1 << 10;
/** Not a power of two, so a capacity read as the wrong unit or field shows. */
const IMAGE_BYTES = 24 * MiB + 512 * KiB;
const MEM_MIB = 256;
/** The pattern lives at [1 MiB, 2 MiB). */
const PATTERN_AT = MiB;
const PATTERN_BYTES = MiB;
const PATTERN_LINE = 'virtq-vhost-user-blk-real-guest-0123456789';
/** Write-zeroes range inside the pattern. */
const ZEROES_AT = PATTERN_AT + 256 * KiB;
const ZEROES_BYTES = 64 * KiB;
/** Discard range inside the pattern (after the write-zeroes range). */
const DISCARD_AT = PATTERN_AT + 512 * KiB;
const DISCARD_BYTES = 64 * KiB;
const BS = 4096;
/** The back-end's default `--queue-size`, so the mirror device below matches the CLI's. */
const CLI_QUEUE_SIZE = 1024;
/** A boot takes 3-10 s under TCG; a dead back-end hangs the guest until this limit. */
const BOOT_TIMEOUT_MS = 60_000;

/** Feature bits as `/sys/block/vda/device/features` shows them (bit N is character N + 1). */
const BIT = {
  SEG_MAX: 2,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  VERSION_1: 32,
  RING_PACKED: 34,
} as const;

interface Config {
  readonly name: string;
  readonly machine: Machine;
  readonly packed: boolean;
  readonly numQueues: number;
  readonly readOnly: boolean;
  /** `--no-ring-threads`: every ring served on the back-end's main thread. */
  readonly noRingThreads?: boolean;
  /** `--block-size` (default 512). */
  readonly blockSize?: number;
  /** `--async-io`: large transfers on the thread pool. */
  readonly asyncIo?: boolean;
  /** Bytes past the last whole sector of the image (served padded to a whole sector). */
  readonly imageTail?: number;
}

/** The image's length in bytes, as created on the host. */
const imageBytes = (c: Config): number => IMAGE_BYTES + (c.imageTail ?? 0);
/** The disk the guest sees: the image rounded up to a whole sector. */
const diskSectors = (c: Config): number => Math.ceil(imageBytes(c) / 512);

const CONFIGS: readonly Config[] = [
  { name: 'pci (MSI-X), split ring', machine: 'pc', packed: false, numQueues: 1, readOnly: false },
  {
    name: 'pci (MSI-X), split ring, --no-ring-threads',
    machine: 'pc',
    packed: false,
    numQueues: 1,
    readOnly: false,
    noRingThreads: true,
  },
  {
    name: 'pci (MSI-X), packed ring, 2 queues',
    machine: 'pc',
    packed: true,
    numQueues: 2,
    readOnly: false,
  },
  {
    name: 'microvm (virtio-mmio), split ring, 2 queues',
    machine: 'microvm',
    packed: false,
    numQueues: 2,
    readOnly: false,
  },
  {
    name: 'microvm (virtio-mmio), packed ring',
    machine: 'microvm',
    packed: true,
    numQueues: 1,
    readOnly: false,
  },
  {
    name: 'pci (MSI-X), split ring, --async-io',
    machine: 'pc',
    packed: false,
    numQueues: 1,
    readOnly: false,
    asyncIo: true,
  },
  {
    name: 'pci (MSI-X), split ring, 4 KiB logical blocks',
    machine: 'pc',
    packed: false,
    numQueues: 1,
    readOnly: false,
    blockSize: 4096,
  },
  {
    // As qemu-storage-daemon serves it: 49153 sectors, the last one half padding.
    name: 'pci (MSI-X), split ring, image not a whole number of sectors',
    machine: 'pc',
    packed: false,
    numQueues: 1,
    readOnly: false,
    imageTail: 100,
  },
  {
    name: 'pci (MSI-X), split ring, read-only',
    machine: 'pc',
    packed: false,
    numQueues: 1,
    readOnly: true,
  },
];

function pattern(): Buffer {
  const line = Buffer.from(`${PATTERN_LINE}\n`);
  const out = Buffer.alloc(PATTERN_BYTES);
  for (let i = 0; i < PATTERN_BYTES; i += line.length) line.copy(out, i);
  return out;
}

// ---------------------------------------------------------------------------------------------
// What the back-end advertises: the device the CLI builds (src/cli/blk-device.ts), built here
// over the same image.

const has = (features: bigint, bit: number): boolean => ((features >> BigInt(bit)) & 1n) === 1n;

interface Advertised {
  readonly features: bigint;
  readonly capacitySectors: number;
  readonly blkSize: number;
  readonly physicalBlockExp: number;
}

function advertised(image: string, c: Config): Advertised {
  const dev = createBlkDevice({
    file: image,
    readOnly: c.readOnly,
    numQueues: c.numQueues,
    queueSize: CLI_QUEUE_SIZE,
    blockSize: c.blockSize ?? 512,
    asyncIo: false,
  });
  try {
    const cfg = new Uint8Array(64);
    dev.readConfig(0, cfg);
    const v = new DataView(cfg.buffer);
    const features = dev.offeredFeatures;
    const lo = v.getUint32(BLK_CONFIG.CAPACITY, true);
    const hi = v.getUint32(BLK_CONFIG.CAPACITY + 4, true);
    return {
      features,
      capacitySectors: hi * 2 ** 32 + lo,
      blkSize: has(features, BIT.BLK_SIZE) ? v.getUint32(BLK_CONFIG.BLK_SIZE, true) : 512,
      physicalBlockExp: has(features, BIT.TOPOLOGY) ? v.getUint8(BLK_CONFIG.PHYSICAL_BLOCK_EXP) : 0,
    };
  } finally {
    (dev.backend as { close?: () => void }).close?.();
  }
}

// ---------------------------------------------------------------------------------------------
// The guest script: it reports facts (`FACT name=value`); the host judges them.

function guestScript(c: Config): string {
  const blocks = (bytes: number) => bytes / BS;
  const lines: string[] = [
    'fact() { echo "FACT $1=$2"; }',
    'wait_for /dev/vda 100 || exit 1',
    'B=/sys/block/vda',
    'fact size "$(cat $B/size)"',
    'fact ro "$(cat $B/ro)"',
    'fact logical_block_size "$(cat $B/queue/logical_block_size)"',
    'fact physical_block_size "$(cat $B/queue/physical_block_size)"',
    'fact features "$(cat $B/device/features)"',
    'fact mq_entries "$(ls $B/mq | wc -l)"',
    'fact discard_max_bytes "$(cat $B/queue/discard_max_bytes)"',
    'fact write_zeroes_max_bytes "$(cat $B/queue/write_zeroes_max_bytes)"',
    'fact cpus "$(grep -c ^processor /proc/cpuinfo)"',
    `yes ${PATTERN_LINE} | head -c ${PATTERN_BYTES} > /tmp/pattern`,
  ];
  // With several CPUs, each half of the pattern is written from its own CPU (so through its own
  // queue) and read back from the other one.
  const cpus = c.numQueues > 1 ? [0, 1] : [null];
  const on = (cpu: number | null) => (cpu === null ? '' : `taskset -c ${cpu} `);
  const part = PATTERN_BYTES / cpus.length;
  if (c.readOnly) {
    // The host put the pattern there before the boot.
    lines.push(
      `dd if=/dev/vda of=/tmp/back bs=${BS} skip=${blocks(PATTERN_AT)} count=${blocks(PATTERN_BYTES)} iflag=direct 2>/dev/null`,
      'fact read_rc $?',
      'cmp -s /tmp/pattern /tmp/back; fact readback_cmp $?',
      `head -c ${64 * KiB} /dev/zero > /tmp/zeros`,
      `dd if=/tmp/zeros of=/dev/vda bs=${BS} seek=${blocks(PATTERN_AT)} oflag=direct conv=fsync 2>/tmp/err`,
      'fact write_rc $?',
      'fact write_err "$(head -c 200 /tmp/err | tr "\\n" " ")"',
      '/bin/virtq-write-zeroes; fact write_zeroes_rc $?',
    );
  } else {
    lines.push('fact write_rc 0', 'fact read_rc 0');
    cpus.forEach((cpu, i) => {
      const from = blocks(part * i);
      lines.push(
        `${on(cpu)}dd if=/tmp/pattern of=/dev/vda bs=${BS} skip=${from} seek=${blocks(PATTERN_AT) + from} count=${blocks(part)} oflag=direct conv=fsync 2>/tmp/err || { fact write_rc $?; cat /tmp/err; }`,
      );
    });
    cpus.forEach((_writer, i) => {
      const from = blocks(part * i);
      const reader = cpus[(i + 1) % cpus.length]!;
      lines.push(
        `${on(reader)}dd if=/dev/vda of=/tmp/back bs=${BS} skip=${blocks(PATTERN_AT) + from} seek=${from} count=${blocks(part)} iflag=direct conv=notrunc 2>/tmp/err || { fact read_rc $?; cat /tmp/err; }`,
      );
    });
    if (c.imageTail !== undefined) {
      // The last sector, padding included: written from the pattern, then read back.
      lines.push(
        'head -c 512 /tmp/pattern > /tmp/p512',
        `dd if=/tmp/p512 of=/dev/vda bs=512 seek=${diskSectors(c) - 1} count=1 oflag=direct conv=fsync 2>/dev/null; fact tail_write_rc $?`,
        `dd if=/dev/vda of=/tmp/tail bs=512 skip=${diskSectors(c) - 1} count=1 iflag=direct 2>/dev/null; fact tail_read_rc $?`,
        'cmp -s /tmp/p512 /tmp/tail; fact tail_readback_cmp $?',
      );
    }
    lines.push(
      'cmp -s /tmp/pattern /tmp/back; fact readback_cmp $?',
      // The same bytes again in large requests (hundreds of KiB each: the --async-io path).
      `dd if=/tmp/pattern of=/dev/vda bs=${PATTERN_BYTES / 2} seek=${PATTERN_AT / (PATTERN_BYTES / 2)} count=2 oflag=direct conv=fsync 2>/dev/null; fact big_write_rc $?`,
      `dd if=/dev/vda of=/tmp/big bs=${PATTERN_BYTES} skip=${PATTERN_AT / PATTERN_BYTES} count=1 iflag=direct 2>/dev/null; fact big_read_rc $?`,
      'cmp -s /tmp/pattern /tmp/big; fact big_readback_cmp $?',
      // VIRTIO_BLK_T_WRITE_ZEROES with no fallback to plain writes (see fallocateProgram).
      '/bin/virtq-write-zeroes; fact write_zeroes_rc $?',
      `head -c ${ZEROES_BYTES} /dev/zero > /tmp/zeros`,
      `dd if=/dev/vda bs=${BS} skip=${blocks(ZEROES_AT)} count=${blocks(ZEROES_BYTES)} iflag=direct 2>/dev/null | cmp -s - /tmp/zeros`,
      'fact zeroes_readback_cmp $?',
      `blkdiscard -o ${DISCARD_AT} -l ${DISCARD_BYTES} /dev/vda 2>/tmp/err; fact discard_rc $?`,
      'fact discard_err "$(head -c 200 /tmp/err | tr "\\n" " ")"',
      `dd if=/dev/vda bs=${BS} skip=${blocks(DISCARD_AT)} count=${blocks(DISCARD_BYTES)} iflag=direct 2>/dev/null | cmp -s - /tmp/zeros`,
      'fact discard_readback_zero $?',
    );
  }
  // Interrupts per request queue (MSI-X gives each queue its own vector; virtio-mmio has one).
  lines.push(
    `awk '/virtio[0-9]+-req\\.[0-9]+$/ { s = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i; q = $NF; sub(/.*-/, "", q); print "FACT irq_" q "=" s }' /proc/interrupts`,
    'dmesg | grep -i -E "blk_update_request|I/O error|virtio_blk|vda" | sed "s/^/dmesg: /"',
    'sync',
    'echo VIRTQ-GUEST-SCRIPT-DONE',
  );
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------------------------------------
// The back-end process.

type Backend = LoggedProcess;

function startBackend(cmd: string[], socket: string, image: string, c: Config): Backend {
  return spawnLogged(process.execPath, [
    ...cmd,
    'vhost-user-blk',
    '--socket-path',
    socket,
    '--blk-file',
    image,
    '--num-queues',
    String(c.numQueues),
    ...(c.readOnly ? ['--read-only'] : []),
    ...(c.noRingThreads === true ? ['--no-ring-threads'] : []),
    ...(c.blockSize !== undefined ? ['--block-size', String(c.blockSize)] : []),
    ...(c.asyncIo === true ? ['--async-io'] : []),
  ]);
}

/** `virtq vhost-user-blk: stopping; {counters}`, printed on SIGTERM. */
const STOP_LINE = /^virtq vhost-user-blk: stopping; (\{.*\})$/;

/** Back-end output lines that a normal boot produces. Anything else is reported. */
const EXPECTED_BACKEND_LINES = [
  /^virtq vhost-user-blk: serving .* on .*$/,
  /^virtq vhost-user-blk: front-end connected$/,
  /^virtq vhost-user-blk: front-end left \(.*\)$/,
  // An image that is not a whole number of sectors is padded, and says so.
  /^virtq vhost-user-blk: note: .* is \d+ bytes, not a whole number of 512-byte sectors; the guest sees \d+ sectors .*$/,
  STOP_LINE,
];

/** The counters of the stop line, or null when there is none or it does not parse. */
function stopCounters(log: string): Record<string, unknown> | null {
  for (const line of log.split(/\r?\n/)) {
    const m = STOP_LINE.exec(line);
    if (m === null) continue;
    try {
      return JSON.parse(m[1]!) as Record<string, unknown>;
    } catch {
      return null;
    }
  }
  return null;
}

function unexpectedBackendLines(log: string): string[] {
  return log
    .split(/\r?\n/)
    .filter((l) => l.trim() !== '')
    .filter((l) => !EXPECTED_BACKEND_LINES.some((re) => re.test(l)));
}

// ---------------------------------------------------------------------------------------------
// One configuration: back-end + one boot.

interface Run {
  readonly qemu: QemuResult;
  readonly facts: Map<string, string>;
  readonly backendLog: string;
  readonly backendExitCode: number | null | undefined;
  readonly backendDiedEarly: boolean;
  readonly image: Buffer;
  readonly advertised: Advertised;
  readonly backendWhat: string;
}

let workDir = '';
let backendCmd: { args: string[]; what: string } = { args: [], what: '' };

async function runConfig(c: Config, index: number): Promise<Run> {
  const image = path.join(workDir, `disk-${index}.raw`);
  const socket = path.join(workDir, `vub-${index}.sock`);
  await createRawImage(image, imageBytes(c));
  if (c.readOnly) {
    const fh = await fs.open(image, 'r+');
    try {
      await fh.write(pattern(), 0, PATTERN_BYTES, PATTERN_AT);
    } finally {
      await fh.close();
    }
  }
  const adv = advertised(image, c);
  const guest = await buildGuest({
    script: guestScript(c),
    extraFiles: {
      '/bin/virtq-write-zeroes': fallocateProgram({
        path: '/dev/vda',
        mode: FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        offset: ZEROES_AT,
        length: ZEROES_BYTES,
      }),
    },
  });
  const backend = startBackend(backendCmd.args, socket, image, c);
  let qemu: QemuResult;
  let diedEarly = false;
  try {
    const up = await waitFor(() => isServing(backend) || backend.exitCode !== undefined, 30_000);
    if (!up || backend.exitCode !== undefined || !existsSync(socket)) {
      throw new Error(
        `the back-end (${backendCmd.what}) did not start (exit ${String(backend.exitCode)}):\n${backend.log.join('')}`,
      );
    }
    qemu = await runQemu({
      ...guest,
      memMiB: MEM_MIB,
      smp: c.numQueues,
      timeoutMs: BOOT_TIMEOUT_MS,
      args: [
        ...sharedMemoryArgs(MEM_MIB, c.machine),
        ...vhostUserBlkArgs({
          socket,
          machine: c.machine,
          packed: c.packed,
          numQueues: c.numQueues,
        }),
      ],
    });
    diedEarly = backend.exitCode !== undefined;
  } finally {
    await stopProcess(backend);
  }
  return {
    qemu,
    facts: parseFacts(qemu.stdout),
    backendLog: backend.log.join(''),
    backendExitCode: backend.exitCode,
    backendDiedEarly: diedEarly,
    image: await fs.readFile(image),
    advertised: adv,
    backendWhat: backendCmd.what,
  };
}

function isServing(b: Backend): boolean {
  return b.log.join('').includes('virtq vhost-user-blk: serving');
}

function diagnostics(c: Config, r: Run): string {
  return [
    `===== ${c.name}: QEMU ${r.qemu.command.join(' ')}`,
    `exit ${r.qemu.exitCode}, timedOut ${r.qemu.timedOut}, guest rc ${r.qemu.guestRc}, ` +
      `ready after ${r.qemu.readyMs?.toFixed(0) ?? '(never)'} ms, total ${r.qemu.durationMs.toFixed(0)} ms`,
    '----- guest console',
    r.qemu.stdout,
    `----- back-end log (${r.backendWhat}, exit ${String(r.backendExitCode)})`,
    r.backendLog,
    '=====',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// The checks.

function judge(c: Config, r: Run): string[] {
  const failures: string[] = [];
  const f = r.facts;
  const check = (name: string, actual: unknown, expected: unknown): void => {
    if (actual !== expected)
      failures.push(`${name}: got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
  };
  const checkThat = (name: string, ok: boolean, detail: string): void => {
    if (!ok) failures.push(`${name}: ${detail}`);
  };
  const q = r.qemu;
  check('QEMU timed out', q.timedOut, false);
  check('guest script exit status', q.guestRc, 0);
  checkThat(
    'guest script ran to the end',
    q.stdout.includes('VIRTQ-GUEST-SCRIPT-DONE'),
    'no end marker',
  );
  check('back-end exited while QEMU ran', r.backendDiedEarly, false);
  check('back-end exit status after SIGTERM', r.backendExitCode, 0);
  const unexpected = unexpectedBackendLines(r.backendLog);
  checkThat(
    'back-end log has only serving/connected/left/stopping lines',
    unexpected.length === 0,
    `unexpected lines:\n    ${unexpected.join('\n    ')}`,
  );
  // The counters the back-end prints when stopped: nothing refused, nothing replayed, and the
  // guest's requests went through kicks and calls.
  const counters = stopCounters(r.backendLog);
  checkThat('back-end printed its counters when stopped', counters !== null, 'no stop line');
  if (counters !== null) {
    check('back-end counter rejected (refused or malformed messages)', counters.rejected, 0);
    check('back-end counter resubmitted (inflight replays)', counters.resubmitted, 0);
    check('back-end counter connections', counters.connections, 1);
    checkThat(
      'back-end counter kicks > 0',
      Number(counters.kicks) > 0,
      `got ${String(counters.kicks)}`,
    );
    checkThat(
      'back-end counter calls > 0',
      Number(counters.calls) > 0,
      `got ${String(counters.calls)}`,
    );
  }

  const adv = r.advertised;
  // Capacity, read-only flag and block sizes, as the guest's block layer sees them.
  check(
    'capacity advertised (sectors) = image bytes / 512, rounded up',
    adv.capacitySectors,
    diskSectors(c),
  );
  check('/sys/block/vda/size', f.get('size'), String(diskSectors(c)));
  check('/sys/block/vda/ro', f.get('ro'), c.readOnly ? '1' : '0');
  check('logical_block_size', f.get('logical_block_size'), String(adv.blkSize));
  check(
    'physical_block_size',
    f.get('physical_block_size'),
    String(adv.blkSize * 2 ** adv.physicalBlockExp),
  );

  // Negotiated features: what the back-end offers of what QEMU and Linux know.
  const features = f.get('features') ?? '';
  check('features string length', features.length, 64);
  const bit = (n: number) => features.charAt(n);
  check('VIRTIO_F_VERSION_1 (bit 32)', bit(BIT.VERSION_1), '1');
  check('VIRTIO_F_RING_PACKED (bit 34)', bit(BIT.RING_PACKED), c.packed ? '1' : '0');
  check('the back-end offers VIRTIO_F_RING_PACKED', has(adv.features, BIT.RING_PACKED), true);
  for (const [name, n] of [
    ['VIRTIO_BLK_F_SEG_MAX', BIT.SEG_MAX],
    ['VIRTIO_BLK_F_RO', BIT.RO],
    ['VIRTIO_BLK_F_BLK_SIZE', BIT.BLK_SIZE],
    ['VIRTIO_BLK_F_FLUSH', BIT.FLUSH],
    ['VIRTIO_BLK_F_MQ', BIT.MQ],
    ['VIRTIO_BLK_F_DISCARD', BIT.DISCARD],
    ['VIRTIO_BLK_F_WRITE_ZEROES', BIT.WRITE_ZEROES],
    ['VIRTIO_RING_F_INDIRECT_DESC', BIT.INDIRECT_DESC],
    ['VIRTIO_RING_F_EVENT_IDX', BIT.EVENT_IDX],
  ] as const) {
    check(`${name} (bit ${n}) negotiated as offered`, bit(n), has(adv.features, n) ? '1' : '0');
  }
  check('VIRTIO_BLK_F_RO offered', has(adv.features, BIT.RO), c.readOnly);
  check('VIRTIO_BLK_F_MQ offered', has(adv.features, BIT.MQ), c.numQueues > 1);

  // Queues.
  check('guest CPUs', f.get('cpus'), String(c.numQueues));
  check(
    '/sys/block/vda/mq entries (request queues in use)',
    f.get('mq_entries'),
    String(c.numQueues),
  );
  if (c.machine === 'pc') {
    // One MSI-X vector per request queue: every queue completed requests.
    for (let i = 0; i < c.numQueues; i++) {
      const n = Number(f.get(`irq_req.${i}`) ?? 'NaN');
      checkThat(
        `interrupts on request queue ${i} (virtioN-req.${i})`,
        n > 0,
        `count ${f.get(`irq_req.${i}`)}`,
      );
    }
    check(
      `no interrupt line for a request queue ${c.numQueues}`,
      f.get(`irq_req.${c.numQueues}`),
      undefined,
    );
  }

  // Data.
  const expected = pattern();
  const at = (off: number, len: number) => r.image.subarray(off, off + len);
  if (c.imageTail === undefined) {
    check('image size unchanged', r.image.length, IMAGE_BYTES);
  } else {
    // Writing the padded last sector made the file a whole number of sectors long.
    check('guest write of the last sector status', f.get('tail_write_rc'), '0');
    check('guest read of the last sector status', f.get('tail_read_rc'), '0');
    check(
      'guest readback of the last sector equals what it wrote',
      f.get('tail_readback_cmp'),
      '0',
    );
    check('image grew to whole sectors', r.image.length, diskSectors(c) * 512);
    checkThat(
      'image: the last sector holds what the guest wrote',
      r.image.subarray(r.image.length - 512).equals(expected.subarray(0, 512)),
      'differs',
    );
  }
  check('guest read of the pattern (dd iflag=direct) status', f.get('read_rc'), '0');
  check('guest readback equals the pattern (cmp)', f.get('readback_cmp'), '0');
  const zeroes = Buffer.alloc(Math.max(ZEROES_BYTES, DISCARD_BYTES));
  const beforeZ = ZEROES_AT - PATTERN_AT;
  if (c.readOnly) {
    checkThat(
      'guest write to a read-only disk fails',
      f.get('write_rc') !== '0',
      `dd status ${f.get('write_rc')}`,
    );
    checkThat(
      'guest write-zeroes on a read-only disk fails',
      f.get('write_zeroes_rc') !== '0' && f.has('write_zeroes_rc'),
      `status ${f.get('write_zeroes_rc')}`,
    );
    checkThat(
      'image still holds the host-written pattern',
      at(PATTERN_AT, PATTERN_BYTES).equals(expected),
      'differs',
    );
  } else {
    check('guest write of the pattern (dd oflag=direct) status', f.get('write_rc'), '0');
    // Write-zeroes: advertised (FileBackend writes zeroes), used by Linux, zeroes on disk.
    check(
      'VIRTIO_BLK_F_WRITE_ZEROES offered (read-write image)',
      has(adv.features, BIT.WRITE_ZEROES),
      true,
    );
    checkThat(
      'write_zeroes_max_bytes > 0',
      Number(f.get('write_zeroes_max_bytes') ?? '0') > 0,
      `got ${f.get('write_zeroes_max_bytes')}`,
    );
    check(
      'fallocate(PUNCH_HOLE|KEEP_SIZE) on /dev/vda (write-zeroes, no fallback) status',
      f.get('write_zeroes_rc'),
      '0',
    );
    check('large direct write (512 KiB requests) status', f.get('big_write_rc'), '0');
    check('large direct read (1 MiB) status', f.get('big_read_rc'), '0');
    check('large readback equals the pattern (cmp)', f.get('big_readback_cmp'), '0');
    check('guest reads zeroes after write-zeroes', f.get('zeroes_readback_cmp'), '0');
    checkThat(
      'image: pattern before the write-zeroes range',
      at(PATTERN_AT, beforeZ).equals(expected.subarray(0, beforeZ)),
      'differs',
    );
    checkThat(
      'image: zeroes in the write-zeroes range',
      at(ZEROES_AT, ZEROES_BYTES).equals(zeroes.subarray(0, ZEROES_BYTES)),
      'not all zero',
    );
    // Discard: the guest sees exactly what the back-end advertises.
    const discard = has(adv.features, BIT.DISCARD);
    const discardOff = DISCARD_AT - PATTERN_AT;
    if (discard) {
      checkThat(
        'discard_max_bytes > 0',
        Number(f.get('discard_max_bytes') ?? '0') > 0,
        `got ${f.get('discard_max_bytes')}`,
      );
      check('blkdiscard status', f.get('discard_rc'), '0');
      check('guest reads zeroes after discard', f.get('discard_readback_zero'), '0');
      checkThat(
        'image: zeroes in the discarded range',
        at(DISCARD_AT, DISCARD_BYTES).equals(zeroes.subarray(0, DISCARD_BYTES)),
        'not all zero',
      );
    } else {
      check('discard_max_bytes (discard not offered)', f.get('discard_max_bytes'), '0');
      checkThat(
        'blkdiscard fails (discard not offered)',
        f.get('discard_rc') !== '0' && f.has('discard_rc'),
        `status ${f.get('discard_rc')}`,
      );
      checkThat(
        'image: the pattern survives the refused discard',
        at(DISCARD_AT, DISCARD_BYTES).equals(
          expected.subarray(discardOff, discardOff + DISCARD_BYTES),
        ),
        'differs',
      );
    }
    const afterZ = beforeZ + ZEROES_BYTES;
    const tail = discard ? discardOff + DISCARD_BYTES : afterZ;
    checkThat(
      'image: rest of the pattern intact',
      at(PATTERN_AT + tail, PATTERN_BYTES - tail).equals(expected.subarray(tail)) &&
        (discard
          ? at(PATTERN_AT + afterZ, discardOff - afterZ).equals(
              expected.subarray(afterZ, discardOff),
            )
          : true),
      'differs',
    );
  }
  // Nothing outside the pattern (and the padded last sector the guest wrote) was touched.
  const end = c.imageTail === undefined ? r.image.length : r.image.length - 512;
  checkThat(
    'image: zero outside the pattern',
    r.image.subarray(0, PATTERN_AT).every((x) => x === 0) &&
      r.image.subarray(PATTERN_AT + PATTERN_BYTES, end).every((x) => x === 0),
    'non-zero bytes outside [1 MiB, 2 MiB)',
  );
  return failures;
}

// ---------------------------------------------------------------------------------------------

describe('virtq vhost-user-blk with a real Linux guest (QEMU TCG, Debian 6.1 kernel)', () => {
  if (missing.length > 0 && inCi) {
    it('has QEMU, a kernel and busybox (CI is set: their absence is a failure)', () => {
      expect.fail(`missing: ${missing.join('; ')}. Install them with: ${GUEST_DEPS_INSTALL}`);
    });
    return;
  }

  beforeAll(async () => {
    if (missing.length > 0) return;
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vub-test-'));
    backendCmd = await virtqCliArgs();
  });
  afterAll(async () => {
    if (workDir !== '') await fs.rm(workDir, { recursive: true, force: true });
  });

  CONFIGS.forEach((c, index) => {
    it.skipIf(missing.length > 0)(
      c.name,
      async () => {
        const r = await runConfig(c, index);
        const failures = judge(c, r);
        if (failures.length > 0 || process.env.VIRTQ_REAL_VERBOSE === '1') {
          console.error(diagnostics(c, r));
        }
        expect(failures).toEqual([]);
      },
      2 * BOOT_TIMEOUT_MS + 30_000,
    );
  });
});
