/**
 * A descriptor chain a device holds across a snapshot: popped from its ring, not yet used (a
 * network device's receive buffers, a block request still under way). It is saved as the
 * chain's head, the ring slots it takes and its buffers, and revived on restore through the
 * queue's checked `reviveChain`, so a restored device completes it exactly once.
 */
import { DescriptorError, SnapshotError } from '../errors.js';
import type { DescriptorChain } from '../queue/chain.js';
import type { Queue } from '../queue/queue.js';
import { StateReader } from '../queue/state.js';

const MAX_U32 = 0xffffffff;

/** A held chain as saved state. */
export interface SavedChain {
  /** Head index (split) or buffer id (packed): what goes in the used ring. */
  head: number;
  /** Ring slots it takes (descriptors in the ring; an indirect table counts as one). */
  slots: number;
  /** Its buffers, [guest address, length], in chain order (which ones: see the device). */
  buffers: [number, number][];
}

/** The buffers of `c` from position `from` on, as saved state. */
export function chainBuffers(c: DescriptorChain, from = 0): [number, number][] {
  const out: [number, number][] = [];
  for (let d = from; d < c.count; d++) out.push([c.addrs[d]!, c.lens[d]!]);
  return out;
}

/**
 * Validates a saved chain's shape (its fields' types and ranges; the queue checks the rest
 * when it revives it). Throws {@link SnapshotError} naming the field under `path`.
 */
export function readSavedChain(value: unknown, path: string, maxSlots: number): SavedChain {
  const cr = StateReader.root(value, path);
  const head = cr.int('head', 0, 0xffff);
  const slots = cr.int('slots', 1, Math.max(1, maxSlots));
  const bufs = cr.array('buffers', 65536);
  if (bufs.length === 0)
    throw new SnapshotError(`${path}.buffers`, 'a chain has at least one buffer');
  const buffers = bufs.map((b, k): [number, number] => {
    if (!Array.isArray(b) || b.length !== 2)
      throw new SnapshotError(`${path}.buffers.${k}`, 'expected [address, length]');
    const br = StateReader.root({ ...b }, `${path}.buffers.${k}`);
    return [br.int('0', 0, Number.MAX_SAFE_INTEGER), br.int('1', 0, MAX_U32)];
  });
  return { head, slots, buffers };
}

/**
 * Revives `saved` through `queue`'s checked `reviveChain` (device-readable buffers before
 * `writableFrom`); a chain the queue refuses throws {@link SnapshotError} naming `path`'s head
 * or buffers.
 */
export function reviveSaved(
  queue: Queue,
  saved: SavedChain,
  writableFrom: number,
  path: string,
): DescriptorChain {
  try {
    return queue.reviveChain(saved.head, saved.slots, saved.buffers, writableFrom);
  } catch (e) {
    if (!(e instanceof DescriptorError)) throw e;
    const badHead = e.code === 'DESC_HEAD_OUT_OF_RANGE' || e.code === 'DESC_PACKED_BAD_ID';
    throw new SnapshotError(`${path}.${badHead ? 'head' : 'buffers'}`, e.message);
  }
}
