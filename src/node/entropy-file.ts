/**
 * An entropy source for the rng device read from a file: a character device such as
 * `/dev/urandom` or a hardware generator's `/dev/hwrng`, or a regular file (for tests, where
 * the guest's bytes are compared with the file's).
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { EntropySource } from '../devices/rng/device.js';

export interface FileEntropySource {
  /** Fills a buffer from the file; throws when the file cannot be read. */
  readonly source: EntropySource;
  /** True for a regular file, which is read from the start again when its end is reached. */
  readonly regular: boolean;
  /** Closes the file. */
  close(): void;
}

/**
 * Opens `path` for the rng device. A character device is read as a stream (short reads are
 * read again until the buffer is full). A regular file is read in a loop: after its last byte
 * comes its first again, so a small file serves any number of bytes (repeating them, which is
 * only right for tests). An empty regular file is refused at once, as is anything else
 * (a directory, a socket).
 */
export function openFileEntropySource(path: string): FileEntropySource {
  const fd = openSync(path, 'r');
  let size = 0;
  let regular = false;
  try {
    const st = fstatSync(fd);
    regular = st.isFile();
    if (!regular && !st.isCharacterDevice() && !st.isFIFO()) {
      throw new TypeError(`${path} is neither a regular file nor a character device`);
    }
    size = st.size;
    if (regular && size === 0) throw new RangeError(`${path} is empty`);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  let position = 0;
  let closed = false;
  const source: EntropySource = (out) => {
    if (closed) throw new Error(`the entropy source ${path} is closed`);
    let done = 0;
    while (done < out.length) {
      const n = readSync(fd, out, done, out.length - done, regular ? position : null);
      if (n === 0) {
        // The end of a regular file: on from its start. A stream that ends is an error.
        if (!regular) throw new Error(`the entropy source ${path} ended`);
        position = 0;
        continue;
      }
      done += n;
      if (regular) position = (position + n) % size;
    }
  };
  return {
    source,
    regular,
    close() {
      if (closed) return;
      closed = true;
      closeSync(fd);
    },
  };
}
