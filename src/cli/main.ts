#!/usr/bin/env node
import { accessSync, constants, realpathSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SingleBar } from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
import { VhostUserBackend } from '../vhost-user/backend.js';
import type { VhostUserMessage } from '../vhost-user/codec.js';
import { type BlkDeviceOptions, createBlkDevice } from './blk-device.js';
import {
  DEMO_DEVICES,
  DEMO_FEATURES,
  type DemoConfig,
  type DemoDevice,
  type DemoFeature,
  type Placement,
  type Ring,
} from './demo-protocol.js';
import { runDemo, summary } from './device-demo.js';
import { runQueueDemo } from './queue-demo.js';

/** A commander parser for an integer within [min, max]. */
export function intIn(min: number, max: number, what: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v.trim())) throw new InvalidArgumentError(`${what} must be a whole number.`);
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${what} must be between ${min} and ${max}.`);
    }
    return n;
  };
}

/** A commander parser for a number of seconds in (0, max]. */
function seconds(max: number, what: string): (v: string) => number {
  return (v) => {
    const n = v.trim() === '' ? Number.NaN : Number(v);
    if (!Number.isFinite(n)) {
      throw new InvalidArgumentError(
        `${what} must be a number of seconds (got ${JSON.stringify(v)}).`,
      );
    }
    if (!(n > 0) || n > max) {
      throw new InvalidArgumentError(
        `${what} must be more than 0 and at most ${max} seconds (got ${v}).`,
      );
    }
    return n;
  };
}

/** A commander parser for a comma-separated list of names from `choices` (no repeats). */
function listOf<T extends string>(
  choices: readonly T[],
  what: string,
  none?: string,
): (v: string) => T[] {
  return (v) => {
    const items = v
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '');
    if (none !== undefined && items.length === 1 && items[0] === none) return [];
    if (items.length === 0)
      throw new InvalidArgumentError(`${what} needs at least one of ${choices.join(', ')}.`);
    const out: T[] = [];
    for (const item of items) {
      if (!(choices as readonly string[]).includes(item)) {
        throw new InvalidArgumentError(
          `${what}: unknown ${JSON.stringify(item)} (choose from ${choices.join(', ')}${none !== undefined ? `, or ${none}` : ''}).`,
        );
      }
      if (!out.includes(item as T)) out.push(item as T);
    }
    return out;
  };
}

/** A commander parser for one of `choices` or "both" (the first two). */
function oneOrBoth<T extends string>(choices: readonly [T, T], what: string): (v: string) => T[] {
  return (v) => {
    if (v === 'both') return [...choices];
    if ((choices as readonly string[]).includes(v)) return [v as T];
    throw new InvalidArgumentError(`${what} must be ${choices[0]}, ${choices[1]} or both.`);
  };
}

/** The demo's block workload moves 4 KiB blocks: a smaller image has nothing to drive. */
const DEMO_MIN_IMAGE_BYTES = 4096;

function readableFile(v: string): string {
  let size: number;
  try {
    const st = statSync(v);
    if (!st.isFile()) throw new InvalidArgumentError(`--disk-image ${v} is not a regular file.`);
    accessSync(v, constants.R_OK);
    size = st.size;
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw e;
    throw new InvalidArgumentError(
      `--disk-image ${v} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
    );
  }
  if (size < DEMO_MIN_IMAGE_BYTES) {
    throw new InvalidArgumentError(
      `--disk-image ${v} is ${size} bytes; the demo reads and writes 4 KiB blocks, so it needs at least ${DEMO_MIN_IMAGE_BYTES} bytes.`,
    );
  }
  return v;
}

function powerOfTwo(what: string): (v: string) => number {
  const base = intIn(1, 32768, what);
  return (v) => {
    const n = base(v);
    if ((n & (n - 1)) !== 0) throw new InvalidArgumentError(`${what} must be a power of two.`);
    return n;
  };
}

function blockSize(v: string): number {
  const n = intIn(512, 65536, '--block-size')(v);
  if ((n & (n - 1)) !== 0) throw new InvalidArgumentError('--block-size must be a power of two.');
  return n;
}

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('virtq')
    .description('virtq: the device side of VIRTIO virtqueues in TypeScript')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({ outputError: (str, write) => write(str) });

  program
    .command('demo')
    .description(
      'Run a simulated guest that drives virtio devices (rng, block, console, net) through virtio-mmio, and print what each device did',
    )
    .addOption(
      new Option(
        '--devices <list>',
        `devices to drive, comma-separated (${DEMO_DEVICES.join(', ')})`,
      )
        .default([...DEMO_DEVICES], DEMO_DEVICES.join(','))
        .argParser(listOf(DEMO_DEVICES, '--devices')),
    )
    .addOption(
      new Option('--ring <format>', 'ring format: split, packed or both')
        .default(['split', 'packed'], 'both')
        .argParser(oneOrBoth<Ring>(['split', 'packed'], '--ring')),
    )
    .addOption(
      new Option(
        '--placement <where>',
        'where devices run: same-thread (as the guest), worker (one device thread) or both',
      )
        .default(['same-thread', 'worker'], 'both')
        .argParser(oneOrBoth<Placement>(['same-thread', 'worker'], '--placement')),
    )
    .addOption(
      new Option(
        '--features <list>',
        `ring features the guest asks for, comma-separated (${DEMO_FEATURES.join(', ')}), or none`,
      )
        .default(['event-idx', 'indirect'], 'event-idx,indirect')
        .argParser(listOf(DEMO_FEATURES, '--features', 'none')),
    )
    .addOption(
      new Option('--duration <seconds>', 'seconds of driving, over all phases')
        .default(5)
        .argParser(seconds(3600, '--duration')),
    )
    .addOption(
      new Option(
        '--disk-image <file>',
        'disk image for the block device, opened read-only (default: a built-in 8 MiB image)',
      ).argParser(readableFile),
    )
    .option('--no-progress', 'no progress display')
    .action((opts: DeviceDemoOptions) => deviceDemo(opts));

  program
    .command('queue-demo')
    .description(
      'Run a driver and a device exchanging chains through one split queue on this thread, and print what happened',
    )
    .addOption(
      new Option('--chains <n>', 'request/response chains to exchange')
        .default(200_000)
        .argParser(intIn(1, 1e9, '--chains')),
    )
    .addOption(
      new Option('--queue-size <n>', 'queue size (power of two)')
        .default(256)
        .argParser(powerOfTwo('--queue-size')),
    )
    .addOption(
      new Option('--batch <n>', 'chains the driver publishes per notification')
        .default(32)
        .argParser(intIn(1, 32768, '--batch')),
    )
    .addOption(
      new Option('--request-bytes <n>', 'device-readable bytes per chain')
        .default(512)
        .argParser(intIn(1, 1 << 20, '--request-bytes')),
    )
    .addOption(
      new Option('--response-bytes <n>', 'device-writable bytes per chain')
        .default(64)
        .argParser(intIn(4, 1 << 20, '--response-bytes')),
    )
    .option('--no-event-idx', 'do not negotiate VIRTIO_F_EVENT_IDX')
    .option('--indirect', 'send every chain through an indirect descriptor table', false)
    .option('--no-progress', 'no progress bar')
    .action((opts: QueueDemoOptions) => queueDemo(opts));

  program
    .command('vhost-user-blk')
    .description(
      'Serve a disk image as a vhost-user-blk back-end on a Unix socket (for QEMU -device vhost-user-blk-pci)',
    )
    .requiredOption('--socket-path <path>', 'Unix socket to listen on (a stale socket is replaced)')
    .addOption(
      new Option('--blk-file <file>', 'raw disk image to serve')
        .makeOptionMandatory()
        .argParser(imageFile),
    )
    .option('--read-only', 'serve the image read-only (VIRTIO_BLK_F_RO)', false)
    .addOption(
      new Option('--num-queues <n>', 'request queues (more than one offers VIRTIO_BLK_F_MQ)')
        .default(1)
        .argParser(intIn(1, 256, '--num-queues')),
    )
    .addOption(
      // QEMU's virtio-mmio transport offers the guest its own maximum (1024) whatever the
      // back-end's, and Linux takes it: a smaller default would refuse microvm guests.
      new Option(
        '--queue-size <n>',
        'largest ring size a front-end may set (power of two; QEMU may ask for up to 1024)',
      )
        .default(1024)
        .argParser(powerOfTwo('--queue-size')),
    )
    .addOption(
      new Option(
        '--block-size <bytes>',
        'logical block size the guest sees (a power of two, 512-65536)',
      )
        .default(512)
        .argParser(blockSize),
    )
    .option('--no-ring-threads', 'serve every ring on the main thread instead of one thread each')
    .option(
      '--async-io',
      'with ring threads: transfers of 64 KiB or more (and flushes) on the thread pool, several under way per ring',
      false,
    )
    .action((opts: VhostUserBlkOptions) => vhostUserBlk(opts));

  return program;
}

function imageFile(v: string): string {
  try {
    if (!statSync(v).isFile())
      throw new InvalidArgumentError(`--blk-file ${v} is not a regular file.`);
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw e;
    throw new InvalidArgumentError(
      `--blk-file ${v} cannot be opened (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
    );
  }
  return v;
}

interface VhostUserBlkOptions {
  socketPath: string;
  blkFile: string;
  readOnly: boolean;
  numQueues: number;
  queueSize: number;
  blockSize: number;
  ringThreads: boolean;
  asyncIo: boolean;
}

/** Bytes of one virtio-blk sector: capacity is counted in these whatever the block size. */
const SECTOR = 512;

function vhostUserBlk(opts: VhostUserBlkOptions): void {
  if (opts.asyncIo && !opts.ringThreads) {
    throw new InvalidArgumentError(
      '--async-io needs ring threads (they wait for transfers under way before a ring stops); it cannot be combined with --no-ring-threads.',
    );
  }
  const size = statSync(opts.blkFile).size;
  // FileBackend serves the file padded with zeroes to a whole sector (a write there lengthens
  // the file); a guest addresses whole logical blocks of the disk that makes.
  const disk = Math.ceil(size / SECTOR) * SECTOR;
  if (size === 0 || disk < opts.blockSize) {
    throw new InvalidArgumentError(
      `--blk-file ${opts.blkFile} is ${size} bytes, less than one ${opts.blockSize}-byte block: there is nothing to serve (make it larger, e.g. truncate -s 1G ${opts.blkFile}).`,
    );
  }
  if (disk !== size) {
    console.error(
      `virtq vhost-user-blk: note: ${opts.blkFile} is ${size} bytes, not a whole number of ${SECTOR}-byte sectors; the guest sees ${disk / SECTOR} sectors (${disk} bytes): the last sector's missing ${disk - size} bytes read as zeroes, and a write there makes the file ${disk} bytes long.`,
    );
  }
  const reach = Math.floor(disk / opts.blockSize) * opts.blockSize;
  if (reach !== disk) {
    console.error(
      `virtq vhost-user-blk: note: with ${opts.blockSize}-byte blocks the guest uses whole blocks only (${reach} bytes); the last ${disk - reach} bytes of the disk are out of its reach.`,
    );
  }
  const blk: BlkDeviceOptions = {
    file: opts.blkFile,
    readOnly: opts.readOnly,
    numQueues: opts.numQueues,
    queueSize: opts.queueSize,
    blockSize: opts.blockSize,
    // Ring workers drain transfers under way before a ring stops; the main thread cannot.
    asyncIo: opts.ringThreads && opts.asyncIo,
  };
  const device = createBlkDevice(blk);
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  const backend = new VhostUserBackend(device, {
    onConnect: () => console.error('virtq vhost-user-blk: front-end connected'),
    onDisconnect: (why) => console.error(`virtq vhost-user-blk: front-end left (${why})`),
    // Each ring on its own thread, with its own handle on the image.
    ...(opts.ringThreads
      ? {
          ringWorkers: {
            spec: {
              kind: 'module',
              module: new URL(`./blk-device${ext}`, import.meta.url).href,
              export: 'createBlkDevice',
              options: blk,
            },
          },
        }
      : {}),
    // VIRTQ_VHOST_TRACE=1 prints every request (a debugging aid, not an interface).
    ...(process.env.VIRTQ_VHOST_TRACE === '1'
      ? {
          onMessage: (m: VhostUserMessage) =>
            console.error(
              `virtq vhost-user-blk: ${m.kind} ${JSON.stringify(m, (k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : k === 'payload' ? undefined : v))}`,
            ),
        }
      : {}),
  });
  try {
    backend.listen(opts.socketPath);
  } catch (e) {
    backend.close();
    throw new InvalidArgumentError(`cannot listen on ${opts.socketPath}: ${(e as Error).message}`);
  }
  console.error(
    `virtq vhost-user-blk: serving ${opts.blkFile} (${device.backend.size} bytes${opts.readOnly ? ', read-only' : ''}, ${opts.numQueues} queue${opts.numQueues > 1 ? 's' : ''}${opts.ringThreads ? ', one thread each' : ''}) on ${opts.socketPath}`,
  );
  const stop = (): void => {
    console.error(`virtq vhost-user-blk: stopping; ${JSON.stringify(backend.stats)}`);
    backend.close();
    process.exit(0);
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

interface DeviceDemoOptions {
  devices: DemoDevice[];
  ring: Ring[];
  placement: Placement[];
  features: DemoFeature[];
  duration: number;
  diskImage?: string;
  progress: boolean;
}

async function deviceDemo(opts: DeviceDemoOptions): Promise<void> {
  const config: DemoConfig = {
    devices: opts.devices,
    rings: opts.ring,
    placements: opts.placement,
    features: opts.features,
    duration: opts.duration,
    diskImage: opts.diskImage ?? null,
  };
  const result = await runDemo(config, {
    err: process.stderr,
    progress: opts.progress,
  });
  for (const line of summary(config, result)) console.log(line);
  for (const f of result.failures) console.error(`virtq demo: ${f}`);
  if (result.failures.length > 0) process.exitCode = 1;
}

interface QueueDemoOptions {
  chains: number;
  queueSize: number;
  batch: number;
  requestBytes: number;
  responseBytes: number;
  eventIdx: boolean;
  indirect: boolean;
  progress: boolean;
}

function queueDemo(opts: QueueDemoOptions): void {
  const showBar = opts.progress && process.stderr.isTTY === true;
  const bar = showBar
    ? new SingleBar({
        format: ' {bar} {percentage}% | {value}/{total} chains',
        stream: process.stderr,
      })
    : null;
  bar?.start(opts.chains, 0);
  const r = runQueueDemo({
    chains: opts.chains,
    queueSize: opts.queueSize,
    batch: opts.batch,
    requestBytes: opts.requestBytes,
    responseBytes: opts.responseBytes,
    eventIdx: opts.eventIdx,
    indirect: opts.indirect,
    onProgress: (n) => bar?.update(n),
  });
  bar?.stop();
  const rate = r.chains / r.seconds;
  const rows: [string, string][] = [
    [
      'ring',
      `split, size ${opts.queueSize}, EVENT_IDX ${opts.eventIdx ? 'on' : 'off'}, indirect ${opts.indirect ? 'on' : 'off'}`,
    ],
    ['chains exchanged', r.chains.toLocaleString('en-US')],
    ['bytes the device read', r.bytesRead.toLocaleString('en-US')],
    ['bytes the device wrote', r.bytesWritten.toLocaleString('en-US')],
    ['driver notifications', `${r.kicksSent} sent, ${r.kicksSuppressed} suppressed`],
    ['device interrupts', `${r.interruptsSent} sent, ${r.interruptsSuppressed} suppressed`],
    ['elapsed', `${r.seconds.toFixed(3)} s (${Math.round(rate).toLocaleString('en-US')} chains/s)`],
    ['verified', 'every chain came back once, with the right length and answer'],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log(
    'virtq queue-demo: a driver and a device exchanging chains through a split virtqueue',
  );
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
}

/**
 * Runs the command line with `argv` (as in `process.argv`) and sets `process.exitCode`. The
 * package's bin entry (bin/virtq.js) calls this, so the program runs however it is started:
 * through npm's bin symlink, `npx`, or `node dist/cli/main.js`.
 */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  try {
    await buildProgram().parseAsync([...argv]);
  } catch (e) {
    console.error(`virtq: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 1;
  }
}

/** True when this module is the program Node was started with (symlinks resolved). */
function startedDirectly(): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (startedDirectly()) await main();
