/**
 * V8's inlining budget, raised for a process that runs virtqueues.
 *
 * TurboFan inlines a hot function's callees until their bytecode adds up to a cumulative
 * budget (`--max-inlined-bytecode-size-cumulative`, 920 bytes on Node 20, 22 and 24). A
 * device's per-chain path (pop, walk, write, add_used, publish) is a few such callees deep and
 * runs out of it: on Node 20, the pop of W1 with L=1 stays a call, and the net device's
 * receive step keeps its gather and write-out out of line. With 3000, W1 L=1 takes about 22 ns
 * per chain instead of 26, and a 64-byte frame about 104 ns to receive instead of 117 and 72
 * to transmit instead of 86 (docs/PERFORMANCE.md, "The inlining budget").
 *
 * The flag is process-wide and only affects code compiled after it is set: a program that
 * embeds virtq calls {@link raiseInliningBudget} before its devices start. Node's own command
 * line wins: a budget given there is left as it is. The `virtq` command does not raise it: over
 * vhost-user against testpmd the effect was within the machine's noise (receive of 64-byte
 * frames faster, reflect a little slower); `node --max-inlined-bytecode-size-cumulative=3000`
 * in front of the command's script tries it.
 */

import { setFlagsFromString } from 'node:v8';

/** The V8 flag, as Node's command line spells it. */
export const INLINING_BUDGET_FLAG = '--max-inlined-bytecode-size-cumulative';
/** The budget virtq asks for, in bytes of bytecode. */
export const INLINING_BUDGET = 3000;

/**
 * The flag as V8 reads it: one or two dashes, dashes or underscores between words, then a
 * value after `=` or in the next argument.
 */
const GIVEN = /^--?max[-_]inlined[-_]bytecode[-_]size[-_]cumulative(=|$)/;

/**
 * Raises V8's cumulative inlining budget to {@link INLINING_BUDGET} for this process, unless
 * `execArgv` (Node's command-line flags, `process.execArgv` by default) already sets it, in
 * any spelling V8 accepts. Returns the flag it set, or null when it left the budget alone.
 */
export function raiseInliningBudget(execArgv: readonly string[] = process.execArgv): string | null {
  const given = execArgv.some((a) => GIVEN.test(a));
  if (given) return null;
  const flag = `${INLINING_BUDGET_FLAG}=${INLINING_BUDGET}`;
  setFlagsFromString(flag);
  return flag;
}
