/**
 * Entry module of a ring worker (see ring-worker-protocol.ts): builds its own device from the spec in
 * `workerData`, then serves one ring whenever the back-end starts it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { VirtioDevice } from '../devices/device.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { buildDevices } from '../node/device-factories.js';
import { createQueue, queueFromState } from '../queue/factory.js';
import { consoleLogger, type Logger, silentLogger } from '../queue/logger.js';
import { TrackedPackedQueue } from '../queue/packed/tracked.js';
import type { Queue } from '../queue/queue.js';
import { TrackedSplitQueue } from '../queue/split/tracked.js';
import { MigrationLog } from './dirty-log.js';
import { SplitInflight } from './inflight.js';
import { loadNative } from './native.js';
import { PackedInflight } from './packed-inflight.js';
import { RingPoller } from './ring-poller.js';
import { RingServer } from './ring-server.js';
import {
  applyInflight,
  applyPackedInflight,
  ringBase,
  servedQueueSizes,
  signalError,
} from './ring-state.js';
import {
  C_ACK,
  C_BASE,
  C_CALLS,
  C_KICKS,
  C_LOGGED_PAGES,
  C_POLL_TURNS,
  C_POLLS,
  C_RESUBMITTED,
  C_WAS_RUNNING,
  type RingLog,
  type RingWorkerData,
  type RingWorkerMessage,
} from './ring-worker-protocol.js';

if (parentPort === null) throw new Error('ring-worker-main runs in a worker thread');
const port = parentPort;
const data = workerData as RingWorkerData;
const index = data.index;
const control = new Int32Array(data.control);
const logger: Logger = data.quiet ? silentLogger : consoleLogger;
const native = loadNative();
const devices: VirtioDevice[] = await buildDevices(data.spec);
const device = devices[0]!;

interface Running {
  readonly queue: Queue;
  readonly memory: GuestMemory;
  readonly kickFd: number | null;
  readonly watcher: { stop(): void } | null;
}

let running: Running | null = null;
let callFd: number | null = null;
let errFd: number | null = null;
const mlog = new MigrationLog(native, (message, detail) =>
  logger.warn(`vhost-user ring worker: ${message}`, detail),
);

function setLog(l: RingLog): void {
  flushLog();
  // The back-end closes the eventfd it replaced, once this worker has acknowledged.
  mlog.replace(l.area, l.fd, null);
  // Pages are recorded only while they go to a log.
  running?.memory.setDirtyTracking(mlog.present);
}

/** Moves the pages the device wrote into the dirty log (see MigrationLog). */
function flushLog(): void {
  if (running === null) return;
  const moved = mlog.flush(running.memory);
  if (moved > 0) Atomics.add(control, C_LOGGED_PAGES, moved);
}

const server = new RingServer({
  device,
  native,
  logger,
  who: 'vhost-user ring worker',
  flushLog,
  callFd: () => callFd,
  errFds: () => [errFd],
  count: (what) => {
    Atomics.add(control, what === 'kicks' ? C_KICKS : C_CALLS, 1);
  },
});

function serve(): void {
  server.serve(index);
}

/** Polling mode for this ring (null: kicks only), set at each start. */
let poller: RingPoller | null = null;

function makePoller(micros: number): RingPoller | null {
  if (micros <= 0) return null;
  return new RingPoller(
    {
      queue: () => (running === null || stopping ? undefined : running.queue),
      serve: () => serve(),
      count: (what) => {
        Atomics.add(control, what === 'polls' ? C_POLLS : C_POLL_TURNS, 1);
      },
    },
    micros,
  );
}

/** A turn after a kick or the start; a polled ring carries on polling. */
function kicked(): void {
  serve();
  poller?.served(index);
}

/**
 * Where the device continues the ring when a turn spent its budget: this thread's event loop
 * (kicks and control messages are served in between), only while the ring runs and no stop
 * is under way, with the dirty log flushed after, as after a kick.
 */
function continueRing(callback: () => void): void {
  const r = running;
  setImmediate(() => {
    if (r === null || running !== r || stopping) return;
    server.serve(index, callback);
  });
}

/** A stop was asked for: the ring takes no more chains. */
let stopping = false;

function start(m: Extract<RingWorkerMessage, { type: 'start' }>): void {
  stop();
  const memory = new GuestMemory(m.regions);
  memory.setDirtyTracking(m.log.area !== null);
  let queue: Queue;
  // Only a tracked queue pays for the inflight bookkeeping.
  if (m.queue.format === 'split' && m.inflight !== null) {
    const tracked = new TrackedSplitQueue(m.queue.maxSize, { logger });
    tracked.restore(m.queue, memory);
    const region = new SplitInflight(m.inflight.buffer, m.inflight.offset, m.inflight.descNum);
    Atomics.add(control, C_RESUBMITTED, applyInflight(tracked, region, index, logger));
    queue = tracked;
  } else if (m.queue.format === 'packed' && m.inflight !== null) {
    const tracked = new TrackedPackedQueue(m.queue.maxSize, { logger });
    tracked.restore(m.queue, memory);
    const region = new PackedInflight(m.inflight.buffer, m.inflight.offset, m.inflight.descNum);
    const resubmitted = applyPackedInflight(tracked, region, index, logger, () =>
      signalError(native, m.errFd, logger),
    );
    Atomics.add(control, C_RESUBMITTED, resubmitted);
    queue = tracked;
  } else {
    queue = queueFromState(m.queue, memory, { logger });
  }
  const queues = servedQueueSizes(device).map((max, i) =>
    i === index ? queue : createQueue(queue.format, max, { logger }),
  );
  if (!device.acceptFeatures(m.features)) {
    logger.warn('vhost-user ring worker: the device refused the features', { index });
    return;
  }
  device.activate({
    memory,
    queues,
    features: m.features,
    interrupt: server.sink,
    schedule: continueRing,
  });
  callFd = m.callFd;
  errFd = m.errFd;
  setLog(m.log);
  const kickFd = m.kickFd;
  const watcher =
    kickFd === null
      ? null
      : native.watch(kickFd, native.constants.POLL_READABLE, (error) => {
          if (running === null || running.kickFd !== kickFd) return;
          if (error !== null) {
            logger.warn('vhost-user ring worker: polling the kick fd failed', {
              index,
              error: error.message,
            });
            running.watcher?.stop();
            return;
          }
          if (!server.drainKick(index, kickFd)) {
            running.watcher?.stop();
            return;
          }
          kicked();
        });
  running = { queue, memory, kickFd, watcher };
  poller = makePoller(m.pollIdleMicros);
  // Buffers made available before the ring started are served now.
  kicked();
}

/** Stops the ring (if it runs) and records where it stopped in the control block. */
function stop(): void {
  const r = running;
  Atomics.store(control, C_WAS_RUNNING, r === null ? 0 : 1);
  if (r === null) return;
  r.watcher?.stop();
  poller?.stop(index);
  poller = null;
  flushLog();
  Atomics.store(control, C_BASE, ringBase(r.queue) | 0);
  running = null;
  try {
    device.reset();
  } catch (e) {
    logger.warn('vhost-user ring worker: device reset failed', { error: (e as Error).message });
  }
}

function ack(seq: number): void {
  Atomics.store(control, C_ACK, seq);
  Atomics.notify(control, C_ACK);
}

port.on('message', (m: RingWorkerMessage) => {
  switch (m.type) {
    case 'start':
      stopping = false;
      try {
        start(m);
      } catch (e) {
        // The back-end validated the ring; anything here is a bug, reported, never fatal.
        logger.warn('vhost-user ring worker: starting the ring failed', {
          index,
          error: e instanceof Error ? (e.stack ?? e.message) : String(e),
        });
        running = null;
      }
      return;
    case 'stop': {
      // A device with transfers under way (BlockDevice with asyncIo) completes them before
      // the ring stops: GET_VRING_BASE must not leave a request taken and never answered.
      running?.watcher?.stop();
      poller?.stop(index);
      stopping = true;
      const finish = (): void => {
        stop();
        ack(m.seq);
      };
      if (device.whenIdle === undefined) finish();
      else device.whenIdle(finish);
      return;
    }
    case 'setCall':
      callFd = m.fd;
      ack(m.seq);
      return;
    case 'setLog':
      setLog(m.log);
      ack(m.seq);
      return;
  }
});
