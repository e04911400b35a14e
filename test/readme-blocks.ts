import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** The TypeScript block between the README markers `<!-- NAME:start -->` and `<!-- NAME:end -->`. */
export function readmeExample(name: string): string {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const start = readme.indexOf(`<!-- ${name}:start -->`);
  const end = readme.indexOf(`<!-- ${name}:end -->`);
  if (start < 0 || end < start) throw new Error(`README has no ${name} block`);
  const m = /```ts\n([\s\S]*?)```/.exec(readme.slice(start, end));
  if (m === null) throw new Error(`README block ${name} has no ts code`);
  return m[1]!;
}
