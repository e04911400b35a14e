/**
 * virtq in a real browser: Debian's chromium, driven by playwright-core (which downloads no
 * browser), loads pages from a server on 127.0.0.1. The pages import the built package by its
 * name (`virtq`), bundled by esbuild for the browser platform, as a user's bundler would.
 *
 * - `/isolated/` is served with COOP/COEP (cross-origin isolated: SharedArrayBuffer exists),
 *   `/plain/` without (the browser withholds SharedArrayBuffer).
 * - Each page imports one module and runs its default export; the page records the outcome in
 *   `window.__outcome`, and the console output is collected for the README examples.
 *
 * Without a browser the tests are skipped with a loud warning, or fail when CI is set.
 * Set VIRTQ_CHROMIUM to use another Chromium binary.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readmeExample } from '../readme-blocks.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const out = join(root, '.tmp', 'browser');

const CANDIDATES = [
  process.env.VIRTQ_CHROMIUM ?? '',
  '/usr/bin/chromium',
  '/usr/bin/chromium-browser',
  '/usr/bin/google-chrome',
].filter((p) => p !== '');
const executable = CANDIDATES.find((p) => existsSync(p));
const ciValue = process.env.CI ?? '';
const inCi = ciValue !== '' && ciValue !== '0' && ciValue.toLowerCase() !== 'false';
const INSTALL = 'apt-get install -y --no-install-recommends chromium (or set VIRTQ_CHROMIUM)';
if (executable === undefined) {
  const bar = '!'.repeat(100);
  console.warn(
    `${bar}\ntest/browser/browser.test.ts: the browser tests ${inCi ? 'FAIL (CI is set)' : 'are SKIPPED'}: ` +
      `no Chromium at ${CANDIDATES.join(', ')}.\nInstall it with: ${INSTALL}\n${bar}`,
  );
}

/** The page every test loads: runs module `m` of the query string and records the outcome. */
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>virtq browser test</title>
<script>
  // The path taken where Atomics.waitAsync is missing (older engines): remove it before any
  // virtq module loads.
  if (new URLSearchParams(location.search).has('noWaitAsync')) delete Atomics.waitAsync;
</script>
<script type="module">
  const params = new URLSearchParams(location.search);
  try {
    const m = await import('./' + params.get('m') + '.js');
    const result = typeof m.default === 'function' ? await m.default(params) : null;
    window.__outcome = { ok: true, result };
  } catch (e) {
    window.__outcome = { ok: false, name: e?.name, message: String(e?.message ?? e), stack: e?.stack };
  }
</script>
`;

const ISOLATION = {
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Embedder-Policy': 'require-corp',
};

let server: Server | undefined;
let origin = '';
let browser: Browser | undefined;

/** Bundles the README blocks and the pages into `out`, as a user's bundler would for a browser. */
async function bundle(): Promise<void> {
  await rm(out, { recursive: true, force: true });
  await mkdir(join(out, 'src'), { recursive: true });
  const entries: Record<string, string> = {};
  for (const name of ['readme-example', 'readme-example-mmio']) {
    const file = join(out, 'src', `${name}.ts`);
    await writeFile(file, readmeExample(name));
    entries[name] = file;
  }
  for (const name of ['worker-block', 'device-worker', 'no-isolation']) {
    entries[name] = join(root, 'test', 'browser', 'pages', `${name}.ts`);
  }
  await build({
    entryPoints: entries,
    outdir: join(out, 'www'),
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    logLevel: 'silent',
  });
  await writeFile(join(out, 'www', 'page.html'), PAGE);
}

function serve(): Promise<string> {
  const s = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204).end();
      return;
    }
    const m = /^\/(isolated|plain)\/([a-z-]+\.(?:html|js))$/.exec(url.pathname);
    if (m === null) {
      res.writeHead(404).end();
      return;
    }
    readFile(join(out, 'www', m[2]!)).then(
      (body) => {
        res.writeHead(200, {
          'Content-Type': m[2]!.endsWith('.html') ? 'text/html' : 'text/javascript',
          'Cache-Control': 'no-store',
          ...(m[1] === 'isolated' ? ISOLATION : {}),
        });
        res.end(body);
      },
      () => res.writeHead(404).end(),
    );
  });
  server = s;
  return new Promise((resolve) => {
    s.listen(0, '127.0.0.1', () =>
      resolve(`http://127.0.0.1:${(s.address() as AddressInfo).port}`),
    );
  });
}

interface Outcome {
  ok: boolean;
  result?: unknown;
  name?: string;
  message?: string;
  stack?: string;
}

/** Loads the page for module `m`, waits for its outcome, and returns it with the console lines. */
async function runPage(
  where: 'isolated' | 'plain',
  m: string,
  query = '',
): Promise<{ outcome: Outcome; console: string[]; errors: string[] }> {
  if (browser === undefined) throw new Error('no browser');
  const page: Page = await browser.newPage();
  const lines: string[] = [];
  const errors: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() === 'log') lines.push(msg.text());
    else if (msg.type() === 'error') errors.push(msg.text());
  });
  page.on('pageerror', (e) => errors.push(`${e.name}: ${e.message}`));
  try {
    await page.goto(`${origin}/${where}/page.html?m=${m}${query}`);
    await page.waitForFunction(
      () => (globalThis as { __outcome?: unknown }).__outcome !== undefined,
      null,
      {
        timeout: 60_000,
      },
    );
    const outcome = (await page.evaluate(
      () => (globalThis as { __outcome?: unknown }).__outcome,
    )) as Outcome;
    return { outcome, console: lines, errors };
  } finally {
    await page.close();
  }
}

/** The outcome's result, or a failure that shows what the page threw. */
function resultOf(r: { outcome: Outcome; errors: string[] }): Record<string, unknown> {
  if (!r.outcome.ok) {
    throw new Error(
      `the page threw ${r.outcome.name}: ${r.outcome.message}\n${r.outcome.stack}\n${r.errors.join('\n')}`,
    );
  }
  return r.outcome.result as Record<string, unknown>;
}

describe('virtq in a real browser (Chromium, headless)', () => {
  if (executable === undefined) {
    if (inCi) {
      it('has a Chromium to run (CI is set: its absence is a failure)', () => {
        expect.fail(`no Chromium at ${CANDIDATES.join(', ')}. Install it with: ${INSTALL}`);
      });
    } else {
      it.skip(`needs Chromium (${INSTALL})`, () => {});
    }
    return;
  }

  beforeAll(async () => {
    await bundle();
    origin = await serve();
    // As root, Chromium's sandbox cannot start; the pages are the suite's own.
    browser = await chromium.launch({
      executablePath: executable,
      args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
    });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  });

  for (const where of ['isolated', 'plain'] as const) {
    it(`runs the README's API tour and prints what the README says (${where} page)`, async () => {
      const r = await runPage(where, 'readme-example');
      resultOf(r);
      expect(r.console).toEqual([
        'device: interrupt the guest',
        'guest: chain 0 came back with "HELLO"',
      ]);
      expect(r.errors).toEqual([]);
    });
  }

  it("runs the README's emulator example: a block device through MmioTransport and the guest driver", async () => {
    const r = await runPage('isolated', 'readme-example-mmio');
    resultOf(r);
    expect(r.console).toEqual([
      'device id "virtq-disk-0", 16384 sectors',
      'read back what was written, 3 interrupts',
    ]);
    expect(r.errors).toEqual([]);
  });

  for (const ring of ['split', 'packed'] as const) {
    it(`serves a block device from a Web Worker over a SharedArrayBuffer (${ring} ring)`, async () => {
      const res = resultOf(await runPage('isolated', 'worker-block', `&ring=${ring}`));
      expect(res).toMatchObject({
        crossOriginIsolated: true,
        waitAsync: 'function',
        format: ring,
        negotiatedWanted: true,
        id: 'web-worker-disk',
        capacity: (2 << 20) / 512,
      });
      expect(res.blocks).toBeGreaterThan(40);
      expect(res.readBackSame).toBe(res.blocks);
      expect(res.imageSame).toBe(res.blocks);
      expect(res.interrupts).toBeGreaterThan(0);
    });
  }

  it('serves the device from a Web Worker where Atomics.waitAsync is missing', async () => {
    const res = resultOf(await runPage('isolated', 'worker-block', '&ring=split&noWaitAsync=1'));
    expect(res).toMatchObject({
      crossOriginIsolated: true,
      waitAsync: 'undefined',
      format: 'split',
    });
    expect(res.readBackSame).toBe(res.blocks);
    expect(res.imageSame).toBe(res.blocks);
  });

  it('without cross-origin isolation: a SharedMemoryUnavailableError that says what to do', async () => {
    const res = resultOf(await runPage('plain', 'no-isolation'));
    expect(res.crossOriginIsolated).toBe(false);
    expect(res.sharedArrayBuffer).toBe('undefined');
    expect(res.plainMemoryWorks).toBe(true);
    for (const what of ['memory', 'host', 'link'] as const) {
      expect(res[what], what).toMatchObject({
        name: 'SharedMemoryUnavailableError',
        code: 'SHARED_MEMORY_UNAVAILABLE',
        typed: true,
      });
      expect((res[what] as { message: string }).message).toContain(
        'Cross-Origin-Embedder-Policy: require-corp',
      );
    }
  });
});
