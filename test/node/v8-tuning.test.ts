/**
 * The inlining budget the `virtq` command raises (src/node/v8-tuning.ts): set unless Node's
 * command line chose one.
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

  it("leaves a budget given on Node's command line alone, in either spelling", () => {
    expect(raiseInliningBudget([`${INLINING_BUDGET_FLAG}=920`])).toBeNull();
    expect(raiseInliningBudget(['--max_inlined_bytecode_size_cumulative=500'])).toBeNull();
  });

  it('does not mistake the per-function budget for the cumulative one', () => {
    expect(raiseInliningBudget(['--max-inlined-bytecode-size=460'])).not.toBeNull();
  });
});
