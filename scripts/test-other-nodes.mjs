#!/usr/bin/env node
// Runs the unit suite on every Node line of scripts/other-nodes.mjs (Node 22 and 24), after the
// machine's own Node has run all of `npm test`. The tests that exercise the environment rather
// than the library (real guests under QEMU, the packed tarball, the browser) run once, on the
// machine's Node. Needs the Nodes fetched and the addon built for them:
//   node native/prebuild.mjs --all && node scripts/test-other-nodes.mjs
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchedNodes, OTHER_NODE_VERSIONS } from './other-nodes.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nodes = fetchedNodes();
if (nodes.length !== OTHER_NODE_VERSIONS.length) {
  process.stderr.write(
    `not every Node of ${OTHER_NODE_VERSIONS.join(', ')} is fetched: run node native/prebuild.mjs --all\n`,
  );
  process.exit(1);
}
let failed = 0;
for (const node of nodes) {
  const version = spawnSync(node, ['--version'], { encoding: 'utf8' }).stdout.trim();
  process.stdout.write(`\n== unit suite on Node ${version}\n`);
  const r = spawnSync(
    node,
    [
      join(root, 'node_modules', 'vitest', 'vitest.mjs'),
      'run',
      '--exclude',
      'test/real/**',
      '--exclude',
      'test/package/**',
      '--exclude',
      'test/browser/**',
    ],
    {
      cwd: root,
      stdio: 'inherit',
      // Child processes the tests start by name (`node`, npx) run on the same Node.
      env: { ...process.env, PATH: `${dirname(node)}:${process.env.PATH}` },
    },
  );
  if (r.status !== 0) {
    process.stderr.write(`unit suite FAILED on Node ${version} (status ${r.status})\n`);
    failed++;
  }
}
process.exit(failed === 0 ? 0 : 1);
