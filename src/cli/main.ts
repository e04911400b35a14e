#!/usr/bin/env node
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SingleBar } from 'cli-progress';
import { Command, Option } from 'commander';
import {
  blockSize,
  imageFile,
  intIn,
  listOf,
  oneOrBoth,
  onlyWith,
  powerOfTwo,
  readableFile,
  seconds,
} from './args.js';
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
import {
  RNG_MAX_PERIOD_MS,
  type VhostUserBlkOptions,
  type VhostUserRngOptions,
  vhostUserBlk,
  vhostUserRng,
} from './vhost-user.js';
import {
  DEFAULT_TAP,
  macAddress,
  NET_BACKEND_KINDS,
  NET_MAX_QUEUE_PAIRS,
  tapName,
  type VhostUserNetOptions,
  vhostUserNet,
} from './vhost-user-net.js';

/** The options every vhost-user back-end command takes: where it meets its front-end. */
function withSocket(command: Command): Command {
  return command
    .requiredOption('--socket-path <path>', 'Unix socket to listen on (a stale socket is replaced)')
    .option(
      '--connect',
      'connect to a front-end listening at --socket-path (QEMU -chardev socket,server=on) instead of listening; exits when it leaves',
      false,
    )
    .addOption(
      new Option(
        '--poll <microseconds>',
        'polling mode: serve a busy ring at every event-loop turn, driver notifications off, until it has been idle this long; 0: kicks only',
      )
        .default(0)
        .argParser(intIn(0, 1_000_000, '--poll')),
    );
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

  withSocket(program.command('vhost-user-blk'))
    .description(
      'Serve a disk image as a vhost-user-blk back-end on a Unix socket (for QEMU -device vhost-user-blk-pci)',
    )
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

  withSocket(program.command('vhost-user-rng'))
    .description(
      'Serve an entropy device as a vhost-user-rng back-end on a Unix socket (for QEMU -device vhost-user-rng-pci)',
    )
    .addOption(
      new Option(
        '--max-bytes <n>',
        'at most this many bytes per period (default: no limit); requests beyond wait for the next period',
      ).argParser(intIn(1, Number.MAX_SAFE_INTEGER, '--max-bytes')),
    )
    .addOption(
      new Option('--period <ms>', 'length of a rate-limit period in milliseconds')
        .default(RNG_MAX_PERIOD_MS)
        .argParser(intIn(1, RNG_MAX_PERIOD_MS, '--period')),
    )
    .option(
      '--source <file>',
      'read entropy from this file (a device such as /dev/urandom or /dev/hwrng; a regular file is served in a loop, for tests) instead of the platform generator',
    )
    .action((opts: VhostUserRngOptions, command: Command) => {
      onlyWith(command, opts.maxBytes !== undefined, '--max-bytes (a rate limit)', [
        ['period', '--period'],
      ]);
      vhostUserRng(opts);
    });

  withSocket(program.command('vhost-user-net'))
    .description(
      'Serve a network device as a vhost-user back-end on a Unix socket (for DPDK net_virtio_user or QEMU -netdev vhost-user), with a frame backend for tests',
    )
    .addOption(
      new Option(
        '--backend <kind>',
        'reflect: every frame back, MAC addresses swapped; sink: count and drop; generate: --count frames of --frame-size bytes; pair: a second device on --peer-socket-path, cable-connected to the first; tap: the Linux tap interface --tap (needs CAP_NET_ADMIN)',
      )
        .choices(NET_BACKEND_KINDS)
        .default('reflect'),
    )
    .addOption(
      new Option(
        '--mac <address>',
        'MAC address offered (default: a random locally administered one)',
      ).argParser(macAddress),
    )
    .addOption(
      new Option('--queue-size <n>', 'largest ring size a front-end may set (power of two)')
        .default(1024)
        .argParser(powerOfTwo('--queue-size')),
    )
    .addOption(
      new Option(
        '--queues <n>',
        `receive/transmit queue pairs (1..${NET_MAX_QUEUE_PAIRS}); above 1 the device offers VIRTIO_NET_F_MQ and the control queue, which the front-end serves`,
      )
        .default(1)
        .argParser(intIn(1, NET_MAX_QUEUE_PAIRS, '--queues')),
    )
    .addOption(
      new Option('--count <n>', 'generate: frames in all')
        .default(1000)
        .argParser(intIn(0, Number.MAX_SAFE_INTEGER, '--count')),
    )
    .addOption(
      new Option('--frame-size <bytes>', 'generate: bytes per frame, Ethernet header included')
        .default(64)
        .argParser(intIn(60, 1514, '--frame-size')),
    )
    .option(
      '--peer-socket-path <path>',
      'pair: Unix socket of the second device, cable-connected to the first',
    )
    .addOption(
      new Option(
        '--peer-mac <address>',
        'pair: MAC address of the second device (default: --mac plus one, else random)',
      ).argParser(macAddress),
    )
    .addOption(
      new Option(
        '--tap <name>',
        `tap: the interface to create or attach to (default ${DEFAULT_TAP}; "%d" in the name: the first free number)`,
      ).argParser(tapName),
    )
    .action((opts: VhostUserNetOptions, command: Command) => {
      onlyWith(command, opts.backend === 'generate', '--backend generate', [
        ['count', '--count'],
        ['frameSize', '--frame-size'],
      ]);
      vhostUserNet(opts);
    });

  return program;
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
