/**
 * The benchmark corpus' shared pieces: what a case looks like, and the timing rule of
 * shared/BENCH.md (a warm-up, then the best of 5 runs of at least 0.5 s each).
 *
 * tinybench times each call of a task separately and has no notion of "units of work per
 * call", while BENCH.md asks for the wall time of whole rounds divided by the chains they
 * carried; this module measures exactly that, with a clock read only every `chunk` rounds.
 */

import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';

/** What a case gets from the runner. */
export interface BenchContext {
  /** `--verbose` was given: cases may print per-run details through {@link log}. */
  readonly verbose: boolean;
  /** Writes a detail line to stderr (only when verbose), so stdout keeps one line per case. */
  log(message: string): void;
}

/** One benchmark of the corpus. */
export interface BenchCase {
  /** Unique name; the runner's filter argument matches it as a substring. */
  readonly name: string;
  /** Runs the case and returns its one output line. */
  run(ctx: BenchContext): string | Promise<string>;
}

/** The timing rule of BENCH.md. */
export interface TimingOptions {
  /** Runs to keep the best of (default 5). */
  runs?: number;
  /** Minimum length of each run in ms (default 500). */
  minRunMs?: number;
  /** Warm-up length in ms before the first run (default 500). */
  warmupMs?: number;
  /** Rounds between two reads of the clock (default 256). */
  chunk?: number;
}

/** The result of one timed run. */
export interface Run {
  /** Rounds the run executed (a multiple of the chunk). */
  rounds: number;
  /** Wall time of the run, in ns. */
  ns: number;
}

/** The runs of a measurement and the best of them. */
export interface Measurement {
  runs: Run[];
  /** The run with the lowest time per round. */
  best: Run;
}

/** A function that executes `rounds` whole rounds of a workload. */
export type Step = (rounds: number) => void;

const DEFAULTS = { runs: 5, minRunMs: 500, warmupMs: 500, chunk: 256 } as const;

function resolve(o: TimingOptions): Required<TimingOptions> {
  return {
    runs: o.runs ?? DEFAULTS.runs,
    minRunMs: o.minRunMs ?? DEFAULTS.minRunMs,
    warmupMs: o.warmupMs ?? DEFAULTS.warmupMs,
    chunk: o.chunk ?? DEFAULTS.chunk,
  };
}

/** Runs `step` in chunks until at least `minMs` have passed; the clock is read between chunks. */
export function timedRun(step: Step, minMs: number, chunk: number): Run {
  let rounds = 0;
  const t0 = performance.now();
  let t = t0;
  do {
    step(chunk);
    rounds += chunk;
    t = performance.now();
  } while (t - t0 < minMs);
  return { rounds, ns: (t - t0) * 1e6 };
}

function nsPerRound(r: Run): number {
  return r.ns / r.rounds;
}

function pickBest(runs: Run[]): Run {
  let best = runs[0]!;
  for (const r of runs) if (nsPerRound(r) < nsPerRound(best)) best = r;
  return best;
}

/** Warm-up, then the best of `runs` timed runs. */
export function bestOf(step: Step, options: TimingOptions = {}): Measurement {
  const o = resolve(options);
  timedRun(step, o.warmupMs, o.chunk);
  const runs: Run[] = [];
  for (let i = 0; i < o.runs; i++) runs.push(timedRun(step, o.minRunMs, o.chunk));
  return { runs, best: pickBest(runs) };
}

/**
 * Side by side: warms every step up, then runs them in turn (a, b, c, a, b, c, ...) `runs`
 * times, so drifting machine load affects all of them alike. Returns one measurement per step.
 */
export function alternate(steps: readonly Step[], options: TimingOptions = {}): Measurement[] {
  const o = resolve(options);
  for (const s of steps) timedRun(s, o.warmupMs, o.chunk);
  const all: Run[][] = steps.map(() => []);
  for (let i = 0; i < o.runs; i++) {
    steps.forEach((s, k) => {
      all[k]!.push(timedRun(s, o.minRunMs, o.chunk));
    });
  }
  return all.map((runs) => ({ runs, best: pickBest(runs) }));
}

/** Nanoseconds per unit in the best run, with `unitsPerRound` units (chains) in each round. */
export function nsPerUnit(m: Measurement, unitsPerRound: number): number {
  return m.best.ns / (m.best.rounds * unitsPerRound);
}

/** "min..max (spread x%)" of the per-unit times of every run, for the verbose log. */
export function describeRuns(m: Measurement, unitsPerRound: number): string {
  const xs = m.runs.map((r) => r.ns / (r.rounds * unitsPerRound));
  const lo = Math.min(...xs);
  const hi = Math.max(...xs);
  return `runs ${xs.map((x) => x.toFixed(2)).join(' ')} ns/unit; spread ${(((hi - lo) / lo) * 100).toFixed(1)}%`;
}

/** Formats a float for an output line: two decimals. */
export function fmt(x: number): string {
  return x.toFixed(2);
}

/** The header lines: node version, CPU, date, and the load the machine was under. */
export function header(): string[] {
  const cpu = cpus();
  const model = cpu[0]?.model.trim() ?? 'unknown CPU';
  return [
    `# virtq bench`,
    `# node ${process.version} (${process.platform}-${process.arch}), V8 ${process.versions.v8}`,
    `# cpu ${model}, ${cpu.length} logical CPUs`,
    `# date ${new Date().toISOString()}`,
    `# load average ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')} (1, 5, 15 min): other work on the machine skews the figures`,
  ];
}
