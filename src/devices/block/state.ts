import { SnapshotError } from '../../errors.js';
import type { DescriptorChain } from '../../queue/chain.js';
import { StateReader } from '../../queue/state.js';
import type { DeviceContext } from '../device.js';
import { chainBuffers, readSavedChain, reviveSaved, type SavedChain } from '../saved-chain.js';

/** What a block device has done since it was created (not reset by a device reset). */
export interface BlockStats {
  /** Requests completed, whatever their status. */
  requests: number;
  /** Completed with VIRTIO_BLK_S_IOERR (range, framing, read-only or backend failure). */
  ioErrors: number;
  /** Completed with VIRTIO_BLK_S_UNSUPP. */
  unsupported: number;
  /** Backend calls that threw (each one turned its request into an IOERR). */
  backendErrors: number;
  /** Bytes read from the backend into guest memory. */
  bytesRead: number;
  /** Bytes written from guest memory to the backend. */
  bytesWritten: number;
  /** Backend flushes, explicit or write-through. */
  flushes: number;
}

/**
 * Device-specific saved state of a block device. The disk's contents are not part of it: they
 * live in the backend, which the embedder snapshots (or shares) on its own.
 */
export interface BlockState {
  /** Capacity in sectors that the configuration space showed the driver. */
  capacity: number;
  stats: BlockStats;
  /**
   * Requests under way on the backend's asynchronous calls when the state was saved
   * (`asyncIo`): popped from their rings, not yet completed. A restored device serves each of
   * them again (a read or write done twice leaves the disk as once; the driver sees one
   * completion). Absent in states saved before it was added: none.
   */
  inFlight?: BlockSavedRequest[];
}

/** A request under way when the state was saved: its chain (every buffer) and its queue. */
export interface BlockSavedRequest extends SavedChain {
  /** The request queue it was popped from. */
  queue: number;
  /** Position of the first device-writable buffer in `buffers`. */
  writableFrom: number;
}

export function emptyBlockStats(): BlockStats {
  return {
    requests: 0,
    ioErrors: 0,
    unsupported: 0,
    backendErrors: 0,
    bytesRead: 0,
    bytesWritten: 0,
    flushes: 0,
  };
}

/** Request chain `c` of queue `queue` as a snapshot holds it. */
export function savedRequest(queue: number, c: DescriptorChain): BlockSavedRequest {
  return {
    queue,
    head: c.head,
    slots: c.ringCount,
    buffers: chainBuffers(c),
    writableFrom: c.writableStart,
  };
}

/**
 * Validates a saved {@link BlockState} for a device of `queues` request queues of at most
 * `maxQueueSize` entries each; throws SnapshotError naming the first bad field. The requests
 * under way are checked for shape here, and against their queues when they are revived.
 */
export function readBlockState(value: unknown, queues: number, maxQueueSize: number): BlockState {
  const r = StateReader.root(value, 'device.block');
  const capacity = r.int('capacity', 0, Number.MAX_SAFE_INTEGER);
  const s = StateReader.root((value as { stats?: unknown }).stats, 'device.block.stats');
  const n = (field: keyof BlockStats) => s.int(field, 0, Number.MAX_SAFE_INTEGER);
  const rawInFlight =
    r.raw('inFlight') === undefined ? [] : r.array('inFlight', queues * maxQueueSize);
  const seen = new Set<number>();
  const inFlight = rawInFlight.map((v, i): BlockSavedRequest => {
    const path = `device.block.inFlight.${i}`;
    const chain = readSavedChain(v, path, maxQueueSize);
    const rr = StateReader.root(v, path);
    const queue = rr.int('queue', 0, queues - 1);
    const writableFrom = rr.int('writableFrom', 0, chain.buffers.length);
    const key = queue * 0x10000 + chain.head;
    if (seen.has(key))
      throw new SnapshotError(`${path}.head`, `head ${chain.head} of queue ${queue} appears twice`);
    seen.add(key);
    return { ...chain, queue, writableFrom };
  });
  return {
    capacity,
    stats: {
      requests: n('requests'),
      ioErrors: n('ioErrors'),
      unsupported: n('unsupported'),
      backendErrors: n('backendErrors'),
      bytesRead: n('bytesRead'),
      bytesWritten: n('bytesWritten'),
      flushes: n('flushes'),
    },
    inFlight,
  };
}

/**
 * Revives the saved requests under way through their queues' checked `reviveChain`, per queue
 * in saved order; changes nothing. Throws SnapshotError naming the field.
 */
export function reviveBlockRequests(
  saved: readonly BlockSavedRequest[],
  ctx: DeviceContext | null,
): DescriptorChain[][] {
  const out: DescriptorChain[][] = [];
  if (saved.length === 0) return out;
  if (ctx === null)
    throw new SnapshotError('device.block.inFlight', 'requests under way on an inactive device');
  saved.forEach((r, i) => {
    const path = `device.block.inFlight.${i}`;
    const q = ctx.queues[r.queue];
    if (q === undefined || !q.isActive)
      throw new SnapshotError(`${path}.queue`, `queue ${r.queue} is not active`);
    const list = out[r.queue] ?? [];
    list.push(reviveSaved(q, r, r.writableFrom, path));
    out[r.queue] = list;
  });
  return out;
}
