import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The code between the README's example markers. */
function readmeExample(): string {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const m =
    /<!-- readme-example:start -->\s*```ts\n([\s\S]*?)```\s*<!-- readme-example:end -->/.exec(
      readme,
    );
  if (m === null) throw new Error('README has no example block');
  return m[1]!;
}

describe('README', () => {
  it('API tour runs against the built package and prints what the README says', () => {
    // The example imports 'virtq': inside this checkout that resolves to the package itself
    // (package.json "exports"), i.e. the built dist/ that `npm test` has just produced.
    const dir = join(root, '.tmp');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, 'readme-example.ts');
    writeFileSync(file, readmeExample());
    const out = execFileSync(process.execPath, ['--import', 'tsx', file], {
      cwd: root,
      encoding: 'utf8',
    });
    expect(out).toBe('device: interrupt the guest\nguest: chain 0 came back with "HELLO"\n');
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
