import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MAX_CHAIN_BYTES } from '../../src/queue/chain-record.js';
import * as constants from '../../src/queue/constants.js';
import * as packed from '../../src/queue/packed/layout.js';
import * as split from '../../src/queue/split/layout.js';

/**
 * The ring walks hold named constants as literals (V8 reloads an imported binding at every use,
 * which cost measurably per descriptor), each written `const X = <literal>; // NAME` or, where
 * a local would make the walk too big to inline, `/* NAME *\/ <literal>` in place.
 * This checks every such literal against the constant it names, so a layout or flag change
 * cannot leave a walk behind.
 */
const named: Record<string, number> = {
  ...constants,
  ...packed,
  ...split,
  MAX_CHAIN_BYTES,
} as unknown as Record<string, number>;

describe('literals in the hot ring walks', () => {
  for (const file of ['split-walk.ts', 'chain-walk.ts']) {
    it(`${file}: each equals the constant named beside it`, () => {
      const text = readFileSync(join(import.meta.dirname, '../../src/queue', file), 'utf8');
      // Locals (`const X = <literal>; // NAME`) and literals in place (`/* NAME */ <literal>`).
      const found = [
        ...text.matchAll(/const \w+ = ([0-9a-fx* ]+); \/\/ (\w+)/g),
        ...[...text.matchAll(/\/\* (\w+) \*\/ (0x[0-9a-f]+|[0-9]+(?: \*\* [0-9]+)?)/g)].map(
          ([all, name, literal]) => [all, literal, name] as const,
        ),
      ];
      expect(found.length).toBeGreaterThanOrEqual(8);
      for (const [, literal, name] of found) {
        const value = Function(`return ${literal}`)() as number;
        const expected =
          name === 'PACKED_RING_BITS'
            ? constants.VIRTQ_DESC_F_AVAIL | constants.VIRTQ_DESC_F_USED
            : named[name!];
        expect(expected, `${name} is not a constant of src/queue`).toBeTypeOf('number');
        expect(value, `${file}: ${name}`).toBe(expected);
      }
    });
  }
});
