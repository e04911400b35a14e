/**
 * The benchmark runner: `node --import tsx bench/run.ts [--verbose] [--same-process] [filter]`
 * (`npm run bench -- [options] [filter]`).
 *
 * Every module in bench/cases/ exports `cases: BenchCase[]`; the runner loads them all (in
 * file-name order), keeps the cases whose name contains the filter, and prints a header then
 * one line per case. Adding a benchmark is adding a file to bench/cases/.
 *
 * Each case runs in a fresh Node process (this script again, with `--case=<name>`), so the
 * optimised code and type feedback one case leaves behind cannot speed up or slow down the
 * next. `--same-process` runs them all in this process instead.
 *
 * Benchmarks that are whole programs rather than cases (they boot guests under QEMU and take
 * minutes) are listed in {@link PROGRAMS}: `npm run bench -- <name> [options]` runs one, with
 * every other argument passed on; a filter never selects them, and neither does a bare
 * `npm run bench`.
 */

import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { type BenchCase, type BenchContext, header } from './lib/harness.js';

/** Benchmark programs run by exact name (see the module comment), with their script. */
const PROGRAMS: Readonly<Record<string, string>> = {
  // Guest-measured vhost-user-blk throughput, virtq against qemu-storage-daemon.
  'vhost-user-blk': './vhost-user-blk.ts',
  // Packet rates of the net back-end driven by DPDK testpmd, virtq against DPDK's net_vhost.
  'vhost-user-net': './vhost-user-net.ts',
};

/** Runs a benchmark program in a child process with `args`; resolves with its exit code. */
function runProgram(script: string, args: readonly string[]): Promise<number> {
  const file = fileURLToPath(new URL(script, import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, file, ...args], {
      stdio: 'inherit',
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
  });
}

/** Every case of every module in bench/cases/; a module that fails to load is reported. */
async function loadCases(): Promise<BenchCase[]> {
  const dir = new URL('./cases/', import.meta.url);
  const files = (await readdir(dir)).filter((f) => f.endsWith('.ts')).sort();
  const all: BenchCase[] = [];
  const seen = new Set<string>();
  for (const file of files) {
    let mod: { cases?: unknown };
    try {
      mod = (await import(new URL(file, dir).href)) as { cases?: unknown };
    } catch (e) {
      process.exitCode = 1;
      console.error(`# bench/cases/${file} failed to load: ${describe(e)}`);
      continue;
    }
    if (!Array.isArray(mod.cases)) throw new Error(`bench/cases/${file} exports no cases array`);
    for (const c of mod.cases as BenchCase[]) {
      if (seen.has(c.name)) throw new Error(`two benchmark cases are named ${c.name}`);
      seen.add(c.name);
      all.push(c);
    }
  }
  return all;
}

function describe(e: unknown): string {
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

async function runHere(c: BenchCase, ctx: BenchContext): Promise<void> {
  try {
    console.log(await c.run(ctx));
  } catch (e) {
    process.exitCode = 1;
    console.error(`# ${c.name} failed: ${describe(e)}`);
  }
}

/** Runs one case in a child process that shares this one's stdout and stderr. */
function runInChild(name: string, verbose: boolean): Promise<void> {
  const args = [...process.execArgv, fileURLToPath(import.meta.url), `--case=${name}`];
  if (verbose) args.push('--verbose');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (code !== 0) {
        process.exitCode = 1;
        console.error(`# ${name}: child process ended with ${signal ?? `code ${code}`}`);
      }
      resolve();
    });
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const program = args.find((a) => !a.startsWith('-') && Object.hasOwn(PROGRAMS, a));
  if (program !== undefined) {
    process.exitCode = await runProgram(
      PROGRAMS[program]!,
      args.filter((a) => a !== program),
    );
    return;
  }
  const verbose = args.includes('--verbose') || args.includes('-v');
  const sameProcess = args.includes('--same-process');
  const only = args.find((a) => a.startsWith('--case='))?.slice('--case='.length);
  const filters = args.filter((a) => !a.startsWith('-'));
  if (filters.length > 1) {
    throw new Error('usage: bench/run.ts [--verbose] [--same-process] [filter]');
  }
  const ctx: BenchContext = {
    verbose,
    log: (message) => {
      if (verbose) process.stderr.write(`# ${message}\n`);
    },
  };
  const all = await loadCases();

  if (only !== undefined) {
    const c = all.find((x) => x.name === only);
    if (c === undefined) throw new Error(`no benchmark case is named ${only}`);
    await runHere(c, ctx);
    return;
  }

  // Case names are lower case (`w1/l=4`) while output lines name workloads as BENCH.md does
  // (`W1`): the filter ignores case so that either spelling selects.
  const filter = (filters[0] ?? '').toLowerCase();
  const selected = all.filter((c) => c.name.toLowerCase().includes(filter));
  if (selected.length === 0) {
    console.error(
      `bench: no benchmark case name contains "${filters[0]}". Cases:\n  ${all.map((c) => c.name).join('\n  ')}`,
    );
    process.exitCode = 1;
    return;
  }
  for (const line of header()) console.log(line);
  for (const c of selected) {
    if (sameProcess) await runHere(c, ctx);
    else await runInChild(c.name, verbose);
  }
}

await main();
