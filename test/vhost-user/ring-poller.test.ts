/**
 * Polling mode (ring-poller.ts): after a kick, a polled ring is served at every event-loop turn
 * with driver notifications off, so chains made available meanwhile are served with no kick;
 * after `idleMicros` without movement it goes back to kicks, and a chain made available in the
 * switch is still served. Split (EVENT_IDX on and off) and packed rings, with the project's
 * spec-exact drivers.
 */
import { describe, expect, it } from 'vitest';
import { PackedDriver } from '../../src/driver/packed.js';
import { SplitDriver } from '../../src/driver/split.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { DescriptorChain } from '../../src/queue/chain.js';
import { PackedQueue } from '../../src/queue/packed/queue.js';
import type { Queue } from '../../src/queue/queue.js';
import { SplitQueue } from '../../src/queue/split/queue.js';
import { RingPoller } from '../../src/vhost-user/ring-poller.js';

const SIZE = 16;
const counts = { polls: 0, pollTurns: 0 };
const count = (what: 'polls' | 'pollTurns') => {
  counts[what]++;
};
const turn = () => new Promise<void>((r) => setImmediate(r));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type Format = 'split' | 'split+evidx' | 'packed';

function rig(format: Format) {
  const memory = GuestMemory.create(1 << 20, { shared: true });
  const eventIdx = format === 'split+evidx';
  let q: Queue;
  let driver: SplitDriver | PackedDriver;
  if (format === 'packed') {
    const d = new PackedDriver(memory, { size: SIZE, base: 0 });
    const pq = new PackedQueue(SIZE);
    pq.descTableAddress = d.layout.desc;
    pq.availRingAddress = d.layout.driver;
    pq.usedRingAddress = d.layout.device;
    driver = d;
    q = pq;
  } else {
    const d = new SplitDriver(memory, { size: SIZE, base: 0, eventIdx });
    const sq = new SplitQueue(SIZE);
    sq.descTableAddress = d.layout.desc;
    sq.availRingAddress = d.layout.avail;
    sq.usedRingAddress = d.layout.used;
    driver = d;
    q = sq;
  }
  q.size = SIZE;
  q.ready = true;
  q.usesNotifSuppression = eventIdx;
  q.initialize(memory);
  const chain = new DescriptorChain();
  let served = 0;
  let turns = 0;
  /** One device turn: everything available, the way a device drains a ring. */
  const serve = () => {
    turns++;
    for (
      let c = q.popOrEnableNotification(chain);
      c !== null;
      c = q.popOrEnableNotification(chain)
    ) {
      q.addUsed(c.head, 0);
      served++;
    }
    q.advanceUsedRingIdx();
  };
  /** The driver adds one chain; true when it would notify the device. */
  const add = (): boolean => {
    driver.add([{ addr: 0x40000, len: 64 }]);
    return driver.kick();
  };
  const collect = () => {
    let n = 0;
    while (driver.popUsed() >= 0) n++;
    return n;
  };
  return {
    q,
    add,
    collect,
    serve,
    served: () => served,
    turns: () => turns,
  };
}

describe('RingPoller', () => {
  for (const format of ['split', 'split+evidx', 'packed'] as const) {
    it(`${format}: serves what the driver adds while it polls, with no notification asked`, async () => {
      const r = rig(format);
      const polls0 = counts.polls;
      const turns0 = counts.pollTurns;
      const poller = new RingPoller({ queue: () => r.q, serve: () => r.serve(), count }, 200_000);
      expect(r.add()).toBe(true); // notifications on before polling
      r.serve(); // the kick
      poller.served(0);
      expect(poller.isPolling(0)).toBe(true);
      expect(r.q.polled).toBe(true);
      let notified = 0;
      let collected = r.collect();
      for (let k = 0; k < 20; k++) {
        if (r.add()) notified++;
        await turn();
        await turn();
        collected += r.collect();
      }
      expect(r.served()).toBe(21);
      expect(collected).toBe(21);
      // With EVENT_IDX the driver may notify once: avail_event was set before polling began.
      expect(notified).toBeLessThanOrEqual(format === 'split+evidx' ? 1 : 0);
      expect(counts.polls - polls0).toBe(1);
      expect(counts.pollTurns - turns0).toBeGreaterThanOrEqual(20);
      poller.stop(0);
    });

    it(`${format}: goes back to kicks when idle, and notifications are asked for again`, async () => {
      const r = rig(format);
      const poller = new RingPoller({ queue: () => r.q, serve: () => r.serve(), count }, 2_000);
      r.add();
      r.serve();
      poller.served(0);
      await sleep(30);
      for (let k = 0; k < 5; k++) await turn();
      expect(poller.isPolling(0)).toBe(false);
      expect(r.q.polled).toBe(false);
      const turnsAfter = r.turns();
      await sleep(10);
      expect(r.turns()).toBe(turnsAfter); // no more polling turns
      // The driver is asked to notify again.
      expect(r.add()).toBe(true);
      r.serve();
      expect(r.served()).toBe(2);
    });
  }

  for (const format of ['split', 'packed'] as const) {
    it(`${format}: a chain made available just before polling stops is served without a kick`, async () => {
      const r = rig(format);
      let clock = 0;
      let kickedLate: boolean | null = null;
      const poller = new RingPoller(
        {
          queue: () => r.q,
          serve: () => {
            r.serve();
            // In the turn that finds the ring idle for good, the driver adds a chain right
            // after the device looked: notifications are still off, so it does not notify.
            if (clock === 10 && kickedLate === null) kickedLate = r.add();
          },
          count,
        },
        1_000, // 1 ms
        () => clock,
      );
      r.add();
      r.serve();
      poller.served(0);
      await turn();
      await turn();
      expect(poller.isPolling(0)).toBe(true);
      clock = 10;
      await turn();
      await turn();
      expect(kickedLate).toBe(false);
      expect(poller.isPolling(0)).toBe(false);
      expect(r.served()).toBe(2); // the last serve, after notifications came back on, took it
    });
  }

  it('a ring that moves between its turns stays polled (a receive queue its backend feeds)', async () => {
    const r = rig('split');
    let clock = 0;
    const poller = new RingPoller(
      { queue: () => r.q, serve: () => r.serve(), count },
      1_000,
      () => clock,
    );
    r.add();
    r.serve();
    poller.served(0);
    // Every chain is taken outside the poller's turns, as a device does when its backend
    // offers frames; the clock passes the idle time many times over meanwhile.
    for (let k = 0; k < 10; k++) {
      r.add();
      r.serve();
      clock += 0.6;
      await turn();
    }
    expect(poller.isPolling(0)).toBe(true);
    // Still: nothing moves for longer than the idle time, and it lets go.
    clock += 0.6;
    await turn();
    clock += 0.6;
    await turn();
    await turn();
    expect(poller.isPolling(0)).toBe(false);
    expect(r.served()).toBe(11);
  });

  it('stop() ends polling at once: no turn runs after it', async () => {
    const r = rig('split');
    const poller = new RingPoller({ queue: () => r.q, serve: () => r.serve(), count }, 1_000_000);
    r.serve();
    poller.served(0);
    await turn();
    poller.stop(0);
    const t = r.turns();
    for (let k = 0; k < 5; k++) await turn();
    expect(r.turns()).toBe(t);
    expect(r.q.polled).toBe(false);
  });

  it('polling stopped and started again before its turn runs keeps one turn per loop turn', async () => {
    const r = rig('split');
    const poller = new RingPoller({ queue: () => r.q, serve: () => r.serve(), count }, 1_000_000);
    r.serve();
    poller.served(0); // a turn is scheduled
    poller.stop(0);
    poller.served(0); // polled again, before that turn ran
    const t = r.turns();
    const loops = 8;
    for (let k = 0; k < loops; k++) await turn();
    // One turn of the ring per turn of the event loop, never two chains of turns at once.
    expect(r.turns() - t).toBeGreaterThanOrEqual(loops - 1);
    expect(r.turns() - t).toBeLessThanOrEqual(loops + 1);
    poller.stop(0);
  });

  it('a turn that stops and restarts its own ring keeps one chain of turns', async () => {
    const r = rig('split');
    let restarts = 3;
    const poller: RingPoller = new RingPoller(
      {
        queue: () => r.q,
        serve: () => {
          r.serve();
          // What a device may do inside its turn: stop the ring and start polling it again
          // (a reset and re-activation, say). The turn in flight must not leave a second one.
          if (restarts > 0 && poller.isPolling(0)) {
            restarts--;
            poller.stop(0);
            poller.served(0);
          }
        },
        count,
      },
      1_000_000,
    );
    r.serve();
    poller.served(0);
    const t = r.turns();
    const loops = 10;
    for (let k = 0; k < loops; k++) await turn();
    expect(restarts).toBe(0);
    expect(r.turns() - t).toBeGreaterThanOrEqual(loops - 1);
    expect(r.turns() - t).toBeLessThanOrEqual(loops + 1);
    poller.stop(0);
  });

  it('refuses an idle time that is not a positive number', () => {
    const host = { queue: () => undefined, serve: () => {}, count };
    expect(() => new RingPoller(host, 0)).toThrow(RangeError);
    expect(() => new RingPoller(host, Number.NaN)).toThrow(RangeError);
  });
});
