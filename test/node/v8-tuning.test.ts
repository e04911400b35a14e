/**
 * The inlining budget an embedding program raises with `raiseInliningBudget` from `virtq/node`
 * (src/node/v8-tuning.ts; the `virtq` command leaves it alone): set unless Node's command line
 * chose one.
 */
import { describe, expect, it } from 'vitest';
import {
  INLINING_BUDGET,
  INLINING_BUDGET_FLAG,
  raiseInliningBudget,
} from '../../src/node/v8-tuning.js';

describe('raiseInliningBudget', () => {
  it('sets the cumulative inlining budget when the command line does not', () => {
    expect(raiseInliningBudget(['--enable-source-maps'])).toBe(
      `--max-inlined-bytecode-size-cumulative=${INLINING_BUDGET}`,
    );
    expect(INLINING_BUDGET).toBeGreaterThan(920);
  });

  it("leaves a budget given on Node's command line alone, in any spelling V8 takes", () => {
    expect(raiseInliningBudget([`${INLINING_BUDGET_FLAG}=920`])).toBeNull();
    expect(raiseInliningBudget(['--max_inlined_bytecode_size_cumulative=500'])).toBeNull();
    expect(raiseInliningBudget(['-max-inlined-bytecode-size-cumulative=500'])).toBeNull();
    expect(raiseInliningBudget(['--max-inlined_bytecode-size_cumulative', '500'])).toBeNull();
  });

  it('does not mistake the per-function budget for the cumulative one', () => {
    expect(raiseInliningBudget(['--max-inlined-bytecode-size=460'])).not.toBeNull();
  });
});
