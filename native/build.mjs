#!/usr/bin/env node
// Builds virtq's native addon (native/build/Release/virtq_native.node) with node-gyp.
//
// Runs as the package's "install" script. Only virtq/vhost-user needs the addon, so a failed
// build never fails the install: it prints a loud warning and exits 0, and the core library
// works as before. Set VIRTQ_NATIVE_REQUIRED=1 to make a failed build fail the install, or
// VIRTQ_SKIP_NATIVE=1 to skip the build.
//
// Nothing is downloaded: node-gyp is the copy bundled with npm, and the Node headers are the
// ones npm is configured with (npm_config_nodedir) or the ones installed beside this node.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const addon = join(here, 'build', 'Release', 'virtq_native.node');
const required = process.env.VIRTQ_NATIVE_REQUIRED === '1';

function fail(reason, output = '') {
  const bar = '!'.repeat(78);
  if (output) process.stderr.write(`${output.trimEnd()}\n`);
  process.stderr.write(
    `\n${bar}\n` +
      'virtq: WARNING: the native addon was NOT built.\n' +
      `  reason: ${reason}\n` +
      '  The core library (virtq, virtq/memory, virtq/queue, ...) works without it;\n' +
      '  virtq/vhost-user does not. It needs Linux, python3, make, a C++ compiler and the\n' +
      '  Node headers (npm config nodedir). Fix that, then run `npm run build:native` in a\n' +
      '  checkout of virtq, or `npm rebuild virtq` in a project that depends on it.\n' +
      `${bar}\n\n`,
  );
  process.exit(required ? 1 : 0);
}

// node-gyp: the path npm gives its lifecycle scripts, else the copy inside npm itself, else one
// installed in the project.
function findNodeGyp() {
  const candidates = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  const npmDirs = [];
  if (process.env.npm_execpath) npmDirs.push(join(dirname(process.env.npm_execpath), '..'));
  npmDirs.push(join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm'));
  for (const dir of npmDirs) {
    try {
      candidates.push(createRequire(join(dir, 'package.json')).resolve('node-gyp/bin/node-gyp.js'));
    } catch {}
  }
  try {
    candidates.push(createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'));
  } catch {}
  return candidates.find((p) => existsSync(p));
}

// --nodedir for headers installed with this node (e.g. /usr/include/node), when npm did not
// name a directory: otherwise node-gyp would try to download them.
function localNodeDir() {
  if (process.env.npm_config_nodedir) return undefined;
  const prefix = join(dirname(process.execPath), '..');
  const header = join(prefix, 'include', 'node', 'node_version.h');
  if (!existsSync(header)) return undefined;
  const text = readFileSync(header, 'utf8');
  const part = (name) => text.match(new RegExp(`#define NODE_${name}_VERSION (\\d+)`))?.[1];
  const version = `${part('MAJOR')}.${part('MINOR')}.${part('PATCH')}`;
  return version === process.versions.node ? prefix : undefined;
}

if (process.env.VIRTQ_SKIP_NATIVE === '1') {
  process.stderr.write('virtq: VIRTQ_SKIP_NATIVE=1: native addon not built\n');
  process.exit(0);
}
if (process.platform !== 'linux') {
  fail(`virtq/vhost-user is Linux only (this is ${process.platform})`);
}
const nodeGyp = findNodeGyp();
if (!nodeGyp) fail('node-gyp not found (neither npm_config_node_gyp nor the copy inside npm)');

const args = [nodeGyp, 'rebuild', '--directory', here];
const nodedir = localNodeDir();
if (nodedir) args.push(`--nodedir=${nodedir}`);
process.stdout.write(`virtq: building the native addon (${args.slice(1).join(' ')})\n`);
const build = spawnSync(process.execPath, args, {
  encoding: 'utf8',
  maxBuffer: 64 << 20,
  timeout: 10 * 60_000,
});
const output = `${build.stdout ?? ''}${build.stderr ?? ''}`;
if (build.error) fail(`node-gyp could not run: ${build.error.message}`, output);
if (build.status !== 0) fail(`node-gyp exited with status ${build.status}`, output);
if (!existsSync(addon)) fail(`node-gyp succeeded but ${addon} is missing`, output);

// Load it in a fresh process, so a broken binary is caught now rather than at first use.
const check = spawnSync(
  process.execPath,
  [
    '-e',
    `const a = require(${JSON.stringify(addon)}); if (typeof a.watch !== 'function') throw 0;`,
  ],
  { encoding: 'utf8' },
);
if (check.status !== 0) {
  fail('the built addon does not load', `${check.stdout ?? ''}${check.stderr ?? ''}`);
}
process.stdout.write(`virtq: native addon built: ${addon}\n`);
