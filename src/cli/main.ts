#!/usr/bin/env node
import { SingleBar } from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
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

function powerOfTwo(what: string): (v: string) => number {
  const base = intIn(1, 32768, what);
  return (v) => {
    const n = base(v);
    if ((n & (n - 1)) !== 0) throw new InvalidArgumentError(`${what} must be a power of two.`);
    return n;
  };
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
      'Run a simulated guest driver against a virtq device on built-in defaults and print what happened',
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
    .action((opts: DemoOptions) => demo(opts));

  return program;
}

interface DemoOptions {
  chains: number;
  queueSize: number;
  batch: number;
  requestBytes: number;
  responseBytes: number;
  eventIdx: boolean;
  indirect: boolean;
  progress: boolean;
}

function demo(opts: DemoOptions): void {
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
  console.log('virtq demo: a driver and a device exchanging chains through a split virtqueue');
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
}

const isMain =
  process.argv[1] !== undefined &&
  import.meta.url.endsWith(process.argv[1].replace(/.*\/(dist|src)\//, '/$1/'));
if (isMain) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => {
      console.error(`virtq: ${e instanceof Error ? e.message : String(e)}`);
      process.exitCode = 1;
    });
}
