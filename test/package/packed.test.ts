/**
 * virtq as a user gets it: the packed tarball installed into a fresh project with no compiler
 * on PATH, the `virtq` command run through `npx`, and every command line the README shows.
 */
import { execFile, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { freshProject, packTarball, repoRoot, userEnv } from './pack.js';

/** Runs a shell command line in `cwd` as a user would, without blocking the test's thread. */
function sh(
  line: string,
  cwd: string,
  timeout = 120_000,
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      '/bin/sh',
      ['-c', line],
      { cwd, env: userEnv(), encoding: 'utf8', timeout, maxBuffer: 64 << 20 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
        resolve({ status: code, stdout, stderr });
      },
    );
  });
}

const started: number[] = [];
// Whatever a failed test left running goes with the file.
afterAll(() => {
  for (const pid of started) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {}
  }
});

/** Starts a long-running command line, collecting its stderr. */
function start(line: string, cwd: string) {
  // Its own process group, as a shell gives a job: `interrupt()` signals the whole group, as
  // Ctrl-C in a terminal does (npx does not pass a SIGINT sent to it alone on to the CLI).
  const child = spawn('/bin/sh', ['-c', `exec ${line}`], {
    cwd,
    env: userEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  if (child.pid !== undefined) started.push(child.pid);
  const interrupt = () => {
    if (child.pid !== undefined && !exited) process.kill(-child.pid, 'SIGINT');
  };
  let err = '';
  let exited = false;
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  child.stdout.resume();
  // npx ends by the signal itself after its child has exited (so `code` is null then); what the
  // CLI did is in its output.
  const exit = new Promise<number | null>((resolve) =>
    child.on('exit', (code, signal) => {
      exited = true;
      resolve(signal === 'SIGINT' ? 0 : code);
    }),
  );
  /** Waits until `text` appears on stderr; false if the process ended first or time ran out. */
  const waitForText = async (text: RegExp, ms: number): Promise<boolean> => {
    const deadline = Date.now() + ms;
    while (!text.test(err)) {
      if (exited || Date.now() > deadline) return false;
      await delay(50);
    }
    return true;
  };
  return { child, err: () => err, exit, interrupt, waitForText };
}

function tarEntries(tgz: string): string[] {
  return spawnSync('tar', ['tzf', tgz], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
}

describe('the packed tarball', () => {
  it('holds the bin entry, the built library, the licence and no install script', async () => {
    const entries = tarEntries(await packTarball());
    for (const f of [
      'package/bin/virtq.js',
      'package/dist/index.js',
      'package/dist/cli/main.js',
      'package/LICENSE',
    ]) {
      expect(entries).toContain(f);
    }
    const manifest = JSON.parse(
      spawnSync('tar', ['xzf', await packTarball(), '-O', 'package/package.json'], {
        encoding: 'utf8',
      }).stdout,
    ) as { scripts?: Record<string, string>; bin?: Record<string, string> };
    for (const hook of ['preinstall', 'install', 'postinstall']) {
      expect(
        manifest.scripts?.[hook],
        `a ${hook} script runs on every consumer's machine`,
      ).toBeUndefined();
    }
    expect(manifest.bin).toEqual({ virtq: './bin/virtq.js' });
  });

  it('ships the native addon prebuilt for linux-x64 on this Node (and on every supported one under CI)', async () => {
    const entries = tarEntries(await packTarball());
    const prebuilds = entries.filter((e) => e.startsWith('package/prebuilds/linux-x64/'));
    expect(
      prebuilds,
      'prebuilds/ is missing: run `npm ci` (or native/prebuild.mjs) first',
    ).not.toEqual([]);
    const abis = [process.versions.modules];
    // .ci/run builds for Node 20, 22 and 24 (native/prebuild.mjs --all): a package made there
    // must work on each without a compiler.
    if (process.env.CI === 'true') abis.push('115', '127', '137');
    for (const abi of abis) {
      expect(prebuilds).toContain(`package/prebuilds/linux-x64/virtq_native.abi${abi}.glibc.node`);
    }
    expect(entries.filter((e) => e.includes('/build/'))).toEqual([]);
  });
});

describe('the package manifest', () => {
  it('is ESM-only with top-level types, no side effects and ./package.json exported', () => {
    const pkg = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8'));
    expect(pkg.type).toBe('module');
    expect(pkg.sideEffects).toBe(false);
    expect(pkg.types).toBe('./dist/index.d.ts');
    expect(pkg.exports['./package.json']).toBe('./package.json');
  });

  it('@arethetypeswrong/cli finds no problem for an ESM-only package', async () => {
    const attw = join(repoRoot, 'node_modules', '.bin', 'attw');
    const r = await sh(`"${attw}" "${await packTarball()}" --profile esm-only`, repoRoot);
    expect(r.status, `${r.stdout}\n${r.stderr}`).toBe(0);
  }, 120_000);
});

describe('a fresh project that installs the tarball (no compiler on PATH)', () => {
  it('installs without running or printing anything of virtq, and compiles nothing', async () => {
    const { dir, installOutput } = await freshProject();
    expect(installOutput).not.toMatch(/gyp|virtq:|install-scripts|WARNING/i);
    expect(existsSync(join(dir, 'node_modules/virtq/native/build'))).toBe(false);
    expect(existsSync(join(dir, 'node_modules/.bin/virtq'))).toBe(true);
  }, 300_000);

  it('imports the browser-safe core and the Node-only vhost-user part', async () => {
    const { dir } = await freshProject();
    const r = await sh(
      `node --input-type=module -e "const core = await import('virtq'); const vu = await import('virtq/vhost-user'); console.log(typeof core.SplitQueue, vu.isNativeAvailable())"`,
      dir,
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('function true');
  }, 300_000);

  it("virtq/node's raiseInliningBudget raises the budget, and leaves one given to node alone", async () => {
    const { dir } = await freshProject();
    const script = `const { raiseInliningBudget } = await import('virtq/node'); console.log(raiseInliningBudget())`;
    const raised = await sh(`node --input-type=module -e "${script}"`, dir);
    expect(raised.stderr).toBe('');
    expect(raised.stdout.trim()).toBe('--max-inlined-bytecode-size-cumulative=3000');
    const given = await sh(
      `node --max-inlined-bytecode-size-cumulative=920 --input-type=module -e "${script}"`,
      dir,
    );
    expect(given.stdout.trim()).toBe('null');
  }, 300_000);

  it('npx virtq --help prints the help', async () => {
    const r = await sh('npx virtq --help', (await freshProject()).dir);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^Usage: virtq \[options\] \[command\]/);
    for (const command of ['demo', 'queue-demo', 'vhost-user-blk'])
      expect(r.stdout).toContain(command);
  }, 300_000);

  it('npx virtq demo --duration 1 runs the demo and prints its table', async () => {
    const r = await sh('npx virtq demo --duration 1 --no-progress', (await freshProject()).dir);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/block/);
    expect(r.stdout).toMatch(/rng/);
  }, 300_000);

  it('a bad argument prints what is wrong and exits with status 1', async () => {
    const r = await sh('npx virtq demo --ring diagonal', (await freshProject()).dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/--ring must be split, packed or both/);
    expect(r.stdout).toBe('');
  }, 300_000);

  it('npx virtq vhost-user-blk serves until SIGINT, then prints its counters and removes its socket', async () => {
    const { dir } = await freshProject();
    expect((await sh('truncate -s 64M user.img', dir)).status).toBe(0);
    const sock = join(dir, 'user.sock');
    const backend = start(
      `npx virtq vhost-user-blk --socket-path ${sock} --blk-file user.img`,
      dir,
    );
    try {
      expect(await backend.waitForText(/serving/, 60_000), backend.err()).toBe(true);
      expect(backend.err()).toContain('(67108864 bytes, 1 queue, one thread each)');
      expect(existsSync(sock)).toBe(true);
    } finally {
      backend.interrupt();
    }
    expect(await backend.exit).toBe(0);
    expect(backend.err()).toMatch(/stopping; \{"connections":0/);
    expect(existsSync(sock)).toBe(false);
  }, 300_000);
});

/** The README's shell blocks, one command line each (comments and continuations joined). */
function readmeCommands(): string[] {
  const text = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const lines: string[] = [];
  for (const block of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    let pending = '';
    for (const raw of block[1]!.split('\n')) {
      const line = raw.replace(/\s+#.*$/, '').trimEnd();
      if (line.endsWith('\\')) {
        pending += `${line.slice(0, -1).trim()} `;
        continue;
      }
      const whole = (pending + line.trim()).trim();
      pending = '';
      if (whole !== '' && !whole.startsWith('#')) lines.push(whole);
    }
  }
  return lines;
}

/**
 * README commands that this file does not run, and where they are run instead. Anything else the
 * README shows must be run here: adding a command to the README without a test fails.
 */
const RUN_ELSEWHERE: Record<string, string> = {
  'npm test': '.ci/run runs it: it is the command that runs this test',
  'npm run bench':
    'every benchmark case takes many minutes; each case is run by name with a filter',
};

/**
 * The tap recipe needs root and changes the host's interfaces: test/node/net-tap.test.ts runs
 * its lines as written inside a network namespace it creates.
 */
function runInNamespace(c: string): boolean {
  return c.includes('--backend tap') || /^ip (addr|link) .* virtq0\b/.test(c);
}

describe('every command line in the README', () => {
  const commands = readmeCommands();

  it('is known to this test', async () => {
    expect(commands.length).toBeGreaterThan(5);
    for (const c of commands) {
      const known =
        c in RUN_ELSEWHERE ||
        runInNamespace(c) ||
        c.startsWith('npx virtq ') ||
        c.startsWith('truncate ') ||
        c.startsWith('qemu-system-x86_64 ') ||
        c.startsWith('dpdk-testpmd ') ||
        c === 'npm install && npm start' ||
        c.startsWith('npm run bench -- ');
      expect(known, `README command not covered by a test: ${c}`).toBe(true);
    }
  });

  it('npx virtq ... lines run as written in a fresh project', async () => {
    const { dir } = await freshProject();
    // The README's `truncate` line makes the disk.img the demo line reads.
    for (const c of commands.filter((x) => x.startsWith('truncate '))) {
      expect((await sh(c, dir)).status, c).toBe(0);
    }
    for (const c of commands.filter((x) => x.startsWith('npx virtq ') && !runInNamespace(x))) {
      if (c.endsWith('&')) {
        // A server started in the background: it must come up, then stop cleanly on SIGINT.
        const server = start(c.slice(0, -1).trim(), dir);
        try {
          expect(await server.waitForText(/serving/, 60_000), `${c}: ${server.err()}`).toBe(true);
        } finally {
          server.interrupt();
        }
        expect(await server.exit, c).toBe(0);
        continue;
      }
      const r = await sh(c, dir, 240_000);
      expect(r.status, `${c}\n${r.stderr}`).toBe(0);
      expect(r.stdout, c).not.toBe('');
    }
    rmSync(join(dir, 'disk.img'), { force: true });
  }, 600_000);

  it('the testpmd command line is the one the DPDK tests run', () => {
    const pmds = commands.filter((c) => c.startsWith('dpdk-testpmd '));
    expect(pmds).toHaveLength(1);
    const harness = readFileSync(join(repoRoot, 'test/real/dpdk-net.test.ts'), 'utf8');
    for (const opt of [
      '--no-huge',
      '--no-pci',
      'net_virtio_user0,path=',
      ',queues=1',
      '-i',
      '--no-flush-rx',
      '--forward-mode=rxonly',
    ]) {
      expect(pmds[0]).toContain(opt);
    }
    for (const opt of [
      "'--no-huge'",
      "'--no-pci'",
      'net_virtio_user0,path=',
      ',queues=1',
      "'-i'",
      "'--no-flush-rx'",
      '--forward-mode=',
      "'rxonly'",
    ]) {
      expect(harness).toContain(opt);
    }
  });

  it('the QEMU command lines are the ones the real-guest tests boot', async () => {
    const qemus = commands.filter((c) => c.startsWith('qemu-system-x86_64 '));
    expect(qemus).toHaveLength(3);
    const harness = (files: string[]) =>
      files.map((f) => readFileSync(join(repoRoot, f), 'utf8')).join('\n');
    // Every option of each README recipe appears in its harness with the same value shape.
    const recipes: [string, string[], string[]][] = [
      [
        'vhost-user-blk-pci',
        ['test/real/guest.ts', 'test/real/vhost-user-blk-reconnect.test.ts'],
        ['memory-backend-memfd', 'share=on', 'reconnect=1', 'vhost-user-blk-pci', '-numa'],
      ],
      [
        'vhost-user-rng-pci',
        ['test/real/guest.ts', 'test/real/vhost-user-rng.test.ts'],
        ['memory-backend-memfd', 'share=on', 'vhost-user-rng-pci', '-numa'],
      ],
      [
        'virtio-net-pci',
        ['test/real/guest.ts', 'test/real/net-guest.ts'],
        [
          'memory-backend-memfd',
          'share=on',
          '-numa',
          '-netdev',
          'vhost-user,id=',
          'virtio-net-pci',
          ',netdev=',
          ',mac=',
          ',vectors=0',
        ],
      ],
    ];
    for (const [model, files, opts] of recipes) {
      const qemu = qemus.find((c) => c.includes(model));
      expect(qemu, model).toBeDefined();
      const guest = harness(files);
      for (const opt of opts) {
        expect(qemu).toContain(opt);
        expect(guest).toContain(opt);
      }
    }
  });

  it('npm start and npm run bench -- W1 run as written in the checkout', async () => {
    expect(commands).toContain('npm install && npm start');
    const s = await sh('npm start', repoRoot);
    expect(s.status, s.stderr).toBe(0);
    expect(s.stdout).toMatch(/rng/);
    for (const c of commands.filter((x) => x.startsWith('npm run bench -- '))) {
      const b = await sh(c, repoRoot, 300_000);
      expect(b.status, `${c}\n${b.stderr}`).toBe(0);
      expect(b.stdout).toMatch(/^virtq W1 L=1 evidx=1 ns_per_chain=\d/m);
    }
  }, 600_000);
});
