/**
 * Side by side, in one process: virtq's W1 device loop against two naive baselines that read
 * the rings field by field through `GuestMemory.readU16/readU32/readU64` (what a typical JS
 * implementation does), one of them also building an array of descriptor objects per chain.
 * The three run in turn, five times, so machine load drifts over all of them alike; the
 * ratio is naive / virtq on the best runs. Each device has its own W1 ring and memory.
 */

import { alternate, type BenchCase, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';
import {
  NaiveFieldsW1Device,
  NaiveObjectsW1Device,
  VirtqW1Device,
  verifyW1,
  W1_BATCH,
  W1_CHAIN_LENGTHS,
  type W1Device,
  W1Ring,
} from '../lib/w1.js';

function ratioCase(chainLength: number, eventIdx: boolean): BenchCase {
  const evidx = eventIdx ? 1 : 0;
  return {
    name: `w1-vs-naive/L=${chainLength}/evidx=${evidx}`,
    run(ctx) {
      const devices: W1Device[] = [
        new VirtqW1Device(new W1Ring(chainLength, eventIdx)),
        new NaiveFieldsW1Device(new W1Ring(chainLength, eventIdx)),
        new NaiveObjectsW1Device(new W1Ring(chainLength, eventIdx)),
      ];
      const ms = alternate(devices.map((d) => (rounds: number) => d.run(rounds)));
      for (const d of devices) verifyW1(d);
      const [virtq, fields, objects] = ms.map((m) => nsPerUnit(m, W1_BATCH)) as [
        number,
        number,
        number,
      ];
      ['virtq', 'naive-fields', 'naive-objects'].forEach((label, k) => {
        ctx.log(
          `w1-vs-naive L=${chainLength} evidx=${evidx} ${label}: ${describeRuns(ms[k]!, W1_BATCH)}`,
        );
      });
      return (
        `virtq W1-vs-naive L=${chainLength} evidx=${evidx} virtq_ns=${fmt(virtq)}` +
        ` naive_fields_ns=${fmt(fields)} fields_ratio=${fmt(fields / virtq)}` +
        ` naive_objects_ns=${fmt(objects)} objects_ratio=${fmt(objects / virtq)}`
      );
    },
  };
}

export const cases: BenchCase[] = W1_CHAIN_LENGTHS.map((l) => ratioCase(l, true));
