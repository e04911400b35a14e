import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { readmeExample } from './readme-blocks.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Runs a README example against the built package and returns what it printed. */
function runExample(name: string): string {
  // The example imports 'virtq': inside this checkout that resolves to the package itself
  // (package.json "exports"), i.e. the built dist/ that `npm test` has just produced.
  const dir = join(root, '.tmp');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}.ts`);
  writeFileSync(file, readmeExample(name));
  return execFileSync(process.execPath, ['--import', 'tsx', file], { cwd: root, encoding: 'utf8' });
}

describe('README', () => {
  it('API tour runs against the built package and prints what the README says', () => {
    expect(runExample('readme-example')).toBe(
      'device: interrupt the guest\nguest: chain 0 came back with "HELLO"\n',
    );
  });

  it('emulator example attaches a block device through virtio-mmio and does I/O', () => {
    expect(runExample('readme-example-mmio')).toBe(
      'device id "virtq-disk-0", 16384 sectors\nread back what was written, 3 interrupts\n',
    );
  });

  it('Quickstart has exactly two commands: one runs the demo, one the tests', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const m = /## Quickstart\s*```sh\n([\s\S]*?)```/.exec(readme);
    expect(m).not.toBeNull();
    const lines = m![1]!.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^npm install && npm start\b/);
    expect(lines[1]).toMatch(/^npm test\b/);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    expect(pkg.scripts.start).toContain('demo');
  });
});
