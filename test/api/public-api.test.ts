/**
 * The public API as a user imports it: what each entry point exports (and does not), and error
 * classes that keep their names in a minified bundle.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';
import * as errors from '../../src/errors.js';
import * as root from '../../src/index.js';
import * as vhostUser from '../../src/vhost-user/index.js';

describe('the root entry point', () => {
  it('exports no internals', () => {
    for (const internal of [
      'StateReader',
      'onesSum',
      'foldSum',
      'FrameRing',
      'hex',
      'toBase64',
      'fromBase64',
      'BlockRequestScratch',
      'parseBlockRequest',
      'readBlockState',
      'agentCanBlock',
      'HOST_IS_LITTLE_ENDIAN',
    ]) {
      expect(internal in root, `${internal} is exported from virtq`).toBe(false);
    }
  });

  it('exports what a device author needs', () => {
    for (const name of [
      'GuestMemory',
      'SplitQueue',
      'PackedQueue',
      'createQueue',
      'DescriptorChain',
      'ChainReader',
      'ChainWriter',
      'VirtioDeviceBase',
      'BlockDevice',
      'NetDevice',
      'RngDevice',
      'ConsoleDevice',
      'MmioTransport',
      'VirtqError',
      'SnapshotError',
      'VIRTIO_BLK_T_IN',
      'VIRTIO_BLK_S_OK',
      'defaultScheduler',
    ]) {
      expect(name in root, `${name} is missing from virtq`).toBe(true);
    }
  });
});

// Every error class of the library, by the name it is exported under.
const errorClasses: Record<string, unknown> = {};
for (const mod of [root, errors, vhostUser]) {
  for (const [name, value] of Object.entries(mod)) {
    if (typeof value === 'function' && value.prototype instanceof Error) errorClasses[name] = value;
  }
}

describe('error classes', () => {
  it('are found (the list below is not empty by accident)', () => {
    expect(Object.keys(errorClasses).length).toBeGreaterThanOrEqual(12);
  });

  it('every error a guest or front-end can cause is a VirtqError', () => {
    for (const name of [
      'GuestMemoryError',
      'QueueConfigError',
      'DescriptorError',
      'UsedRingError',
      'IovecError',
      'QueueStateError',
      'SnapshotError',
      'VhostUserError',
      'MemoryTableError',
    ]) {
      const cls = errorClasses[name] as { prototype: object } | undefined;
      expect(cls, name).toBeDefined();
      expect(cls!.prototype instanceof errors.VirtqError, name).toBe(true);
    }
  });

  it('keep their names in a minified bundle', async () => {
    const names = Object.keys(errorClasses).sort();
    // One bundle that constructs each class with harmless arguments and prints its name.
    const entry = `
      import * as root from './src/index.js';
      import * as vu from './src/vhost-user/index.js';
      const all = { ...root, ...vu };
      const out = {};
      for (const n of ${JSON.stringify(names)}) {
        const C = all[n];
        let e;
        try { e = new C('SNAPSHOT_INVALID', 'x', 'y', 'z'); } catch { e = Object.create(C.prototype); }
        out[n] = e.name;
      }
      globalThis.__names = out;
    `;
    const result = await build({
      stdin: { contents: entry, resolveDir: process.cwd(), loader: 'ts' },
      bundle: true,
      minify: true,
      platform: 'node',
      format: 'esm',
      write: false,
      external: ['node-gyp-build'],
    });
    // A file in the checkout, so the bundle's own relative URLs and node-gyp-build resolve.
    const dir = join(process.cwd(), '.tmp');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `minified-errors-${process.pid}.mjs`);
    writeFileSync(file, result.outputFiles[0]!.text);
    try {
      await import(pathToFileURL(file).href);
    } finally {
      rmSync(file, { force: true });
    }
    const got = (globalThis as { __names?: Record<string, string> }).__names!;
    for (const n of names) expect(got[n], `${n} minified`).toBe(n);
  });
});
