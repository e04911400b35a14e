/**
 * Fault injection for the `vhost-user-blk` command, for tests of crash recovery only: with
 * `VIRTQ_FAULT_HANG_AFTER_WRITES=N` in the environment, the back-end stops dead inside its
 * (N+1)th disk write, before writing anything, with the request taken from the ring and not
 * completed, which is the state a back-end killed mid-request leaves behind. The test then
 * kills the process and starts a new one (docs/REAL-GUEST.md). Not an interface: unset, the
 * disk is served unwrapped.
 */
import type { BlockBackend } from '../devices/block/backend.js';

/** The variable's name. */
export const HANG_AFTER_WRITES_ENV = 'VIRTQ_FAULT_HANG_AFTER_WRITES';

/** `disk` itself, or a wrapper that hangs as described above when the variable is set. */
export function withInjectedFaults(
  disk: BlockBackend,
  env: NodeJS.ProcessEnv,
  report: (line: string) => void,
): BlockBackend {
  const value = env[HANG_AFTER_WRITES_ENV];
  if (value === undefined || value === '') return disk;
  const limit = Number(value);
  if (!Number.isSafeInteger(limit) || limit < 0) {
    throw new RangeError(`${HANG_AFTER_WRITES_ENV}=${value} is not a non-negative integer`);
  }
  let writes = 0;
  return {
    get size() {
      return disk.size;
    },
    readOnly: disk.readOnly,
    supportsFlush: disk.supportsFlush,
    supportsDiscard: disk.supportsDiscard,
    supportsWriteZeroes: disk.supportsWriteZeroes,
    writeZeroesMayUnmap: disk.writeZeroesMayUnmap,
    read: (offset, dst, dstOffset, length) => disk.read(offset, dst, dstOffset, length),
    write: (offset, src, srcOffset, length) => {
      if (writes++ === limit) {
        report(`fault injected: hanging in write ${writes} (offset ${offset}, ${length} bytes)`);
        // Blocks this thread for good: the process must be killed.
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
      }
      disk.write(offset, src, srcOffset, length);
    },
    flush: () => disk.flush(),
    discard: (offset, length) => disk.discard(offset, length),
    writeZeroes: (offset, length, unmap) => disk.writeZeroes(offset, length, unmap),
  };
}
