/**
 * The vhost-user back-end's real ring bookkeeping (`Rings`) over its in-process plane, with the
 * rest of the back-end stubbed: no native layer (the tests notify the device themselves), no
 * inflight buffer, no log. For tests of ring stops, restarts and table changes.
 */
import type { VirtioDevice } from '../../src/devices/device.js';
import { InProcessPlane } from '../../src/vhost-user/data-plane.js';
import { Rings } from '../../src/vhost-user/rings.js';

/** `table()` is the memory table of the moment (an object with `memory` and `userToGuest`). */
export function inProcessRings(
  device: VirtioDevice,
  features: () => bigint,
  table: () => unknown,
): Rings {
  const counters = { kicks: 0, calls: 0, polls: 0, pollTurns: 0, loggedPages: 0, resubmitted: 0 };
  const native = { eventfdWrite() {}, eventfdRead() {}, constants: {} } as never;
  return new Rings(
    {
      device,
      native,
      logger: { warn() {} },
      counters,
      features,
      deviceFeatures: features,
      protocolAcked: () => true,
      table: () => table() as never,
      inflightBuffer: () => null,
      hasInflight: () => false,
      ringLog: () => ({ area: null, fd: null }),
      flushLog() {},
      closeFds() {},
      keep() {},
    },
    (h) => new InProcessPlane(h, 0),
  );
}
