/**
 * `virtq demo`: starts the simulated guest (demo-guest.ts) in a worker thread, shows its
 * progress, and prints what each device did.
 */
import { SingleBar } from 'cli-progress';
import { startModuleWorker } from '../node/device-worker.js';
import type {
  DemoConfig,
  DeviceReport,
  GuestMessage,
  PhaseReport,
  PhaseSpec,
} from './demo-protocol.js';

export interface DemoOutput {
  /** Where progress goes (stderr). */
  err: NodeJS.WritableStream & { isTTY?: boolean };
  /** Show progress: a bar when `err` is a terminal, periodic lines otherwise. */
  progress: boolean;
}

export interface DemoResult {
  phases: PhaseReport[];
  /** Every device failure, as "device (ring, placement): reason". */
  failures: string[];
}

function guestModule(): URL {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./demo-guest${ext}`, import.meta.url);
}

const PHASE_LABEL = (p: PhaseSpec) =>
  `${p.ring}/${p.placement === 'worker' ? 'device worker' : 'same thread'}`;

/** Runs the guest worker to completion; progress goes to `output`. Rejects if the guest crashes. */
export function runDemo(config: DemoConfig, output: DemoOutput): Promise<DemoResult> {
  const worker = startModuleWorker(guestModule(), { workerData: config, name: 'virtq demo guest' });
  const progress = new Progress(config, output);
  const phases: PhaseReport[] = [];
  return new Promise<DemoResult>((resolve, reject) => {
    let settled = false;
    const finish = (error: Error | null): void => {
      if (settled) return;
      settled = true;
      progress.stop();
      void worker.terminate();
      if (error !== null) reject(error);
      else resolve({ phases, failures: failuresOf(phases) });
    };
    worker.on('message', (m: GuestMessage) => {
      switch (m.type) {
        case 'phase':
          progress.phase(m.index, m.of, m.phase, m.seconds);
          break;
        case 'progress':
          progress.update(m.elapsed, m.devices);
          break;
        case 'phase-done':
          phases.push(m.report);
          progress.phaseDone(m.report);
          break;
        case 'done':
          finish(null);
          break;
        case 'fatal':
          finish(new Error(`the simulated guest failed: ${m.message}`));
          break;
      }
    });
    worker.on('error', (e: Error) =>
      finish(new Error(`the simulated guest crashed: ${e.message}`)),
    );
    worker.on('exit', (code) =>
      finish(new Error(`the simulated guest exited early (code ${code})`)),
    );
  });
}

function failuresOf(phases: PhaseReport[]): string[] {
  const out: string[] = [];
  for (const p of phases) {
    for (const d of p.devices) {
      if (d.failure !== null) out.push(`${d.device} (${PHASE_LABEL(p)}): ${d.failure}`);
    }
  }
  return out;
}

/** Progress: a cli-progress bar on a terminal, a plain line a second otherwise. */
class Progress {
  private bar: SingleBar | null = null;
  private phaseIndex = 0;
  private phaseCount = 1;
  private phaseSeconds = 0;
  private label = '';
  private lastLine = 0;

  constructor(
    private readonly config: DemoConfig,
    private readonly output: DemoOutput,
  ) {
    if (output.progress && output.err.isTTY === true) {
      this.bar = new SingleBar({
        format: ' {bar} {percentage}% | {label} | {stats}',
        stream: output.err,
        hideCursor: true,
        clearOnComplete: true,
      });
      this.bar.start(Math.round(config.duration * 10), 0, { label: 'starting', stats: '' });
    }
  }

  phase(index: number, of: number, phase: PhaseSpec, seconds: number): void {
    this.phaseIndex = index;
    this.phaseCount = of;
    this.phaseSeconds = seconds;
    this.label = `phase ${index + 1}/${of} ${PHASE_LABEL(phase)}`;
    this.bar?.update(Math.round(index * seconds * 10), { label: this.label, stats: '' });
  }

  update(elapsed: number, devices: DeviceReport[]): void {
    const stats = devices
      .map((d) => `${d.device} ${d.requests.toLocaleString('en-US')}`)
      .join('  ');
    const done = Math.min(this.phaseIndex * this.phaseSeconds + elapsed, this.config.duration);
    if (this.bar !== null) {
      this.bar.update(Math.round(done * 10), { label: this.label, stats: `requests: ${stats}` });
      return;
    }
    if (!this.output.progress) return;
    const now = performance.now();
    if (now - this.lastLine < 1000) return;
    this.lastLine = now;
    this.output.err.write(`virtq demo: ${done.toFixed(1)} s, ${this.label}: ${stats}\n`);
  }

  phaseDone(report: PhaseReport): void {
    if (this.bar !== null || !this.output.progress) return;
    const total = report.devices.reduce((n, d) => n + d.requests, 0);
    this.output.err.write(
      `virtq demo: phase ${this.phaseIndex + 1}/${this.phaseCount} (${PHASE_LABEL(report)}) done: ${total.toLocaleString('en-US')} requests\n`,
    );
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}

// ---- the summary table ----

function int(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
  return `${(n / (1024 * 1024 * 1024)).toFixed(2)} GiB`;
}

/** Lines of a table with left-aligned text columns and right-aligned number columns. */
export function table(header: string[], rows: string[][], numeric: boolean[]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric[i] === true ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

/** The summary printed at the end of `virtq demo`. */
export function summary(config: DemoConfig, result: DemoResult): string[] {
  const header = [
    'ring',
    'devices on',
    'device',
    'features',
    'requests',
    'bytes',
    'errors',
    'requests/s',
    'MiB/s',
  ];
  const numeric = [false, false, false, false, true, true, true, true, true];
  const rows: string[][] = [];
  const notes = new Map<string, string>();
  for (const p of result.phases) {
    for (const d of p.devices) {
      const s = p.seconds > 0 ? p.seconds : 1;
      rows.push([
        d.ring === 'none' ? p.ring : d.ring === p.ring ? d.ring : `${d.ring}*`,
        p.placement === 'worker' ? 'device worker' : 'guest thread',
        d.device,
        d.features,
        int(d.requests),
        bytes(d.bytes),
        int(d.errors),
        int(d.requests / s),
        (d.bytes / s / (1024 * 1024)).toFixed(1),
      ]);
      if (d.note !== '') notes.set(d.device, d.note);
    }
  }
  const totalSeconds = result.phases.reduce((n, p) => n + p.seconds, 0);
  const lines = [
    `virtq demo: a simulated guest drove ${config.devices.join(', ')} through virtio-mmio for ${totalSeconds.toFixed(1)} s`,
    '',
    ...table(header, rows, numeric),
    '',
  ];
  if (rows.some((r) => r[0]!.endsWith('*'))) {
    lines.push('* the device does not offer that ring format; the driver used the one shown');
  }
  for (const [device, note] of notes) lines.push(`${device}: ${note}`);
  lines.push(
    result.failures.length === 0
      ? 'verified: every request completed once, with the answer the guest expected'
      : `FAILED: ${result.failures.length} device run(s) failed (see above)`,
  );
  return lines;
}
