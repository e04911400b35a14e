/**
 * The package as a user gets it: `npm pack` of this checkout, and a fresh project that installs
 * the tarball. Each is made once per test process.
 *
 * The tarball is packed with `--ignore-scripts`: `prepare` would rebuild dist/ while other test
 * files run from it. So it holds what `npm test` just built (dist/) and the native prebuilds in
 * prebuilds/ (`npm ci` makes this Node's, `.ci/run` every supported Node's); the tests check
 * that both are there.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '../..');

const run = promisify(execFile);

let tarball: Promise<string> | undefined;

/** Packs the checkout into a temporary folder and returns the tarball's path. */
export function packTarball(): Promise<string> {
  tarball ??= (async () => {
    const dest = mkdtempSync(join(tmpdir(), 'virtq-pack-'));
    const { stdout } = await run(
      'npm',
      ['pack', '--ignore-scripts', '--json', '--pack-destination', dest],
      { cwd: repoRoot, encoding: 'utf8', env: userEnv(), timeout: 120_000 },
    );
    const [info] = JSON.parse(stdout) as { filename: string }[];
    if (info === undefined) throw new Error(`npm pack printed no file: ${stdout}`);
    return join(dest, info.filename);
  })();
  return tarball;
}

/** What installing the tarball into a fresh project printed, and where that project is. */
export interface FreshProject {
  dir: string;
  /** npm install's stdout and stderr together. */
  installOutput: string;
}

let project: Promise<FreshProject> | undefined;

/**
 * A new project in a temporary folder (`npm init -y`, then `npm install <tarball>`), installed
 * with a PATH that holds node and npm and nothing else: no compiler, no make, no python.
 */
export function freshProject(): Promise<FreshProject> {
  project ??= (async () => {
    const tgz = await packTarball();
    const dir = realpathSync(mkdtempSync(join(tmpdir(), 'virtq-user-')));
    writeFileSync(
      join(dir, 'package.json'),
      `${JSON.stringify({ name: 'virtq-user', version: '1.0.0', private: true, type: 'module' }, null, 2)}\n`,
    );
    const { stdout } = await run(
      '/bin/sh',
      ['-c', `npm install --no-audit --no-fund "${tgz}" 2>&1`],
      { cwd: dir, encoding: 'utf8', env: bareEnv(), timeout: 300_000 },
    );
    return { dir, installOutput: stdout };
  })();
  return project;
}

/**
 * A user's environment: this one without the npm_* variables that `npm test` sets for its
 * scripts (they would tell npx and npm about this checkout instead of the user's project).
 */
export function userEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.toLowerCase().startsWith('npm_') || k === 'npm_config_cache') env[k] = v;
  }
  return env;
}

/**
 * The environment of a user's shell with only node, npm, npx and sh on PATH, so any attempt to
 * compile during install would fail visibly.
 */
export function bareEnv(): NodeJS.ProcessEnv {
  tools ??= bareTools();
  const env: NodeJS.ProcessEnv = {};
  for (const k of ['HOME', 'TMPDIR', 'LANG', 'USER', 'npm_config_cache']) {
    if (process.env[k] !== undefined) env[k] = process.env[k];
  }
  env.PATH = tools;
  return env;
}

let tools: string | undefined;

/** A folder holding node, npm, npx and sh, and nothing else. */
function bareTools(): string {
  const dir = mkdtempSync(join(tmpdir(), 'virtq-path-'));
  symlinkSync(process.execPath, join(dir, 'node'));
  symlinkSync('/bin/sh', join(dir, 'sh'));
  const npmCli = realpathSync(
    execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim(),
  );
  const npxCli = join(dirname(npmCli), 'npx-cli.js');
  for (const [name, cli] of [
    ['npm', npmCli],
    ['npx', npxCli],
  ] as const) {
    writeFileSync(join(dir, name), `#!/bin/sh\nexec "${process.execPath}" "${cli}" "$@"\n`, {
      mode: 0o755,
    });
  }
  return dir;
}
