/**
 * What an acquire load costs the engine: `Atomics.load` beside a plain typed-array load of the
 * same Uint16Array element, in turn in one process. The rings' hot paths are shaped by it: a
 * split ring loads `avail.idx` with `Atomics.load` once per batch and keeps the value, while a
 * packed ring must load each chain's head flags with it (a flags store is what publishes each
 * chain, so no one load covers the next). Over a SharedArrayBuffer (as over vhost-user and in
 * workers) and an ArrayBuffer.
 *
 * Each round reads the flags word of 16 descriptors 16 bytes apart (the packed layout) and sums
 * them, so the loads cannot be dropped.
 *
 * Output: `virtq atomics mem=<plain|shared> plain_ns=<f> atomics_ns=<f> atomics_over_plain=<f>`,
 * ns per load.
 */

import { alternate, type BenchCase, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';

const LOADS_PER_ROUND = 16;
/** u16 index of descriptor 0's flags; descriptors are 8 u16 apart. */
const FLAGS = 7;

function atomicsCase(shared: boolean): BenchCase {
  const mem = shared ? 'shared' : 'plain';
  return {
    name: `atomics/mem=${mem}`,
    run(ctx) {
      const bytes = 4096;
      const buffer = shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
      const d16 = new Uint16Array(buffer);
      for (let i = 0; i < d16.length; i++) d16[i] = i & 0xffff;
      let sum = 0;
      let at = 0;
      const plain = (rounds: number): void => {
        let s = 0;
        for (let r = 0; r < rounds; r++) {
          for (let k = 0; k < LOADS_PER_ROUND; k++) s += d16[((at + k) & 255) * 8 + FLAGS]!;
          at = (at + LOADS_PER_ROUND) & 255;
        }
        sum += s;
      };
      const atomic = (rounds: number): void => {
        let s = 0;
        for (let r = 0; r < rounds; r++) {
          for (let k = 0; k < LOADS_PER_ROUND; k++) {
            s += Atomics.load(d16, ((at + k) & 255) * 8 + FLAGS);
          }
          at = (at + LOADS_PER_ROUND) & 255;
        }
        sum += s;
      };
      const ms = alternate([plain, atomic]);
      // Every flags word read holds its own index (7 or more): a sum of 0 means no load ran.
      if (!(sum > 0)) throw new Error('atomics: the loads read nothing');
      const [plainNs, atomicNs] = ms.map((m) => nsPerUnit(m, LOADS_PER_ROUND)) as [number, number];
      ['plain', 'atomics'].forEach((label, k) => {
        ctx.log(`atomics mem=${mem} ${label}: ${describeRuns(ms[k]!, LOADS_PER_ROUND)}`);
      });
      return (
        `virtq atomics mem=${mem} plain_ns=${fmt(plainNs)} atomics_ns=${fmt(atomicNs)}` +
        ` atomics_over_plain=${fmt(atomicNs / plainNs)}`
      );
    },
  };
}

export const cases: BenchCase[] = [atomicsCase(false), atomicsCase(true)];
