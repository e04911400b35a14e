#!/usr/bin/env node
// Builds virtq's native addon into prebuilds/<platform>-<arch>/virtq_native.abi<N>.<libc>.node
// with prebuildify, one file per Node ABI; at run time node-gyp-build picks the one that matches
// the running Node (src/vhost-user/native.ts). The package ships these files, so installing
// virtq compiles nothing; this script is for a checkout of virtq (npm ci runs it through
// `prepare`) and for making the package (`prepack`).
//
//   node native/prebuild.mjs          for this Node, unless its prebuild is newer than the sources
//   node native/prebuild.mjs --all    also for every Node line of scripts/other-nodes.mjs,
//                                     fetching those Nodes first; a failure fails the script
//   --force                           rebuild even when up to date
//
// The addon uses V8's C++ API (a SharedArrayBuffer over mmap'd memory; Node-API has none), so a
// build is good for one Node ABI (NODE_MODULE_VERSION, one per Node major line) and no other.
// Nothing is downloaded for the build: node-gyp is the copy bundled with npm and the headers are
// the ones beside each Node binary. A failed build for this Node only warns (the core library
// does not need the addon) unless VIRTQ_NATIVE_REQUIRED=1.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const args = new Set(process.argv.slice(2));
const all = args.has('--all');
const force = args.has('--force');
const required = all || process.env.VIRTQ_NATIVE_REQUIRED === '1';
const outDir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);

function fail(reason, output = '') {
  const bar = '!'.repeat(78);
  if (output) process.stderr.write(`${output.trimEnd()}\n`);
  process.stderr.write(
    `\n${bar}\nvirtq: WARNING: the native addon was NOT built.\n  reason: ${reason}\n` +
      '  The core library works without it; virtq/vhost-user does not. Building needs Linux,\n' +
      '  python3, make, a C++ compiler and the Node headers beside node (or npm config nodedir).\n' +
      `${bar}\n\n`,
  );
  process.exit(required ? 1 : 0);
}

function nodeGyp() {
  const npmDirs = [];
  if (process.env.npm_execpath) npmDirs.push(join(dirname(process.env.npm_execpath), '..'));
  npmDirs.push(join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm'));
  for (const dir of npmDirs) {
    try {
      return createRequire(join(dir, 'package.json')).resolve('node-gyp/bin/node-gyp.js');
    } catch {}
  }
  return process.env.npm_config_node_gyp;
}

/** Version, ABI and header directory of one Node binary. */
function describe(node) {
  const r = spawnSync(node, ['-p', 'process.versions.node + " " + process.versions.modules'], {
    encoding: 'utf8',
  });
  if (r.status !== 0) fail(`${node} does not run`, r.stderr);
  const [version, abi] = r.stdout.trim().split(' ');
  const prefix = join(dirname(node), '..');
  const header = join(prefix, 'include', 'node', 'node_version.h');
  const nodedir = existsSync(header) ? prefix : process.env.npm_config_nodedir;
  if (!nodedir) fail(`no Node headers beside ${node} (${header}) and no npm config nodedir`);
  return { node, version, abi, nodedir };
}

function newestSource() {
  const files = ['binding.gyp', ...readdirSync(join(here, 'src')).map((f) => join('src', f))];
  return Math.max(...files.map((f) => statSync(join(here, f)).mtimeMs));
}

// prebuildify's own test for the C library it tags the file with.
const libc = existsSync('/etc/alpine-release') ? 'musl' : 'glibc';

function prebuildPath(abi) {
  return join(outDir, `virtq_native.abi${abi}.${libc}.node`);
}

function build(target, gyp) {
  const out = prebuildPath(target.abi);
  if (!force && existsSync(out) && statSync(out).mtimeMs >= newestSource()) {
    process.stdout.write(`virtq: native addon for Node ${target.version} is up to date: ${out}\n`);
    return;
  }
  process.stdout.write(`virtq: building the native addon for Node ${target.version}\n`);
  const prebuildify = createRequire(import.meta.url).resolve('prebuildify/bin.js');
  const r = spawnSync(
    target.node,
    [prebuildify, '--napi=false', '--strip', '--tag-libc', '--name', 'virtq_native'].concat([
      '--out',
      root,
      '--target',
      `node@${target.version}`,
    ]),
    {
      cwd: here,
      encoding: 'utf8',
      maxBuffer: 64 << 20,
      timeout: 10 * 60_000,
      env: {
        ...process.env,
        PREBUILD_NODE_GYP: gyp,
        npm_config_nodedir: target.nodedir,
        PATH: `${dirname(target.node)}:${process.env.PATH}`,
      },
    },
  );
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.error) fail(`prebuildify could not run: ${r.error.message}`, output);
  if (r.status !== 0) fail(`prebuildify exited with status ${r.status}`, output);
  if (!existsSync(out)) fail(`prebuildify succeeded but ${out} is missing`, output);
  // Load it in the Node it is for, so a broken binary is caught now rather than at first use.
  const check = spawnSync(
    target.node,
    ['-e', `if (typeof require(${JSON.stringify(out)}).watch !== 'function') process.exit(1)`],
    { encoding: 'utf8' },
  );
  if (check.status !== 0) fail(`${out} does not load in Node ${target.version}`, check.stderr);
  process.stdout.write(`virtq: native addon built: ${out}\n`);
}

if (process.env.VIRTQ_SKIP_NATIVE === '1') {
  process.stderr.write('virtq: VIRTQ_SKIP_NATIVE=1: native addon not built\n');
  process.exit(0);
}
if (process.platform !== 'linux')
  fail(`virtq/vhost-user is Linux only (this is ${process.platform})`);
const gyp = nodeGyp();
if (!gyp) fail('node-gyp not found (neither the copy inside npm nor npm_config_node_gyp)');
let nodes = [process.execPath];
if (all) {
  const other = await import('../scripts/other-nodes.mjs');
  other.fetchNodes();
  nodes = nodes.concat(other.fetchedNodes());
}
for (const node of nodes) build(describe(node), gyp);
// node-gyp's build tree is scratch: node-gyp-build would load an addon found there before the
// prebuilds, whatever Node it was built for.
rmSync(join(here, 'build'), { recursive: true, force: true });
