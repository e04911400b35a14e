import { StateReader } from '../../queue/state.js';

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

/** Validates a saved {@link BlockState}; throws SnapshotError naming the first bad field. */
export function readBlockState(value: unknown): BlockState {
  const r = StateReader.root(value, 'device.block');
  const capacity = r.int('capacity', 0, Number.MAX_SAFE_INTEGER);
  const s = StateReader.root((value as { stats?: unknown }).stats, 'device.block.stats');
  const n = (field: keyof BlockStats) => s.int(field, 0, Number.MAX_SAFE_INTEGER);
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
  };
}
