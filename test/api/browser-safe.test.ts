/**
 * The browser-safe entry points stay free of Node: each bundles for the browser platform with
 * nothing external, as a user's bundler would build it. (`npm run typecheck` also type-checks
 * them without @types/node: tsconfig.browser.json.) The Node-only entry points are checked to
 * fail the same bundling, so the check is known to catch a Node import.
 */
import { build } from 'esbuild';
import { describe, expect, it } from 'vitest';

const BROWSER_SAFE = [
  '',
  '/memory',
  '/queue',
  '/iovec',
  '/driver',
  '/errors',
  '/devices',
  '/transport',
];
const NODE_ONLY = ['/node', '/vhost-user'];

/** Bundles `export * from 'virtq<subpath>'` for the browser; returns esbuild's error texts. */
async function bundleForBrowser(subpath: string): Promise<string[]> {
  try {
    await build({
      stdin: {
        contents: `export * from 'virtq${subpath}';`,
        resolveDir: process.cwd(),
        loader: 'js',
      },
      bundle: true,
      platform: 'browser',
      format: 'esm',
      target: 'es2022',
      write: false,
      logLevel: 'silent',
    });
    return [];
  } catch (e) {
    return ((e as { errors?: { text: string }[] }).errors ?? [{ text: String(e) }]).map(
      (x) => x.text,
    );
  }
}

describe('browser-safe entry points', () => {
  for (const subpath of BROWSER_SAFE) {
    it(`virtq${subpath} bundles for the browser with nothing from Node`, async () => {
      expect(await bundleForBrowser(subpath)).toEqual([]);
    });
  }
  for (const subpath of NODE_ONLY) {
    it(`virtq${subpath} (Node-only) does not, so the check sees Node imports`, async () => {
      const errors = await bundleForBrowser(subpath);
      expect(errors.some((t) => /Could not resolve "node:/.test(t))).toBe(true);
    });
  }
});
