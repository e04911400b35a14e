/**
 * The block device `virtq vhost-user-blk` serves, built the same way on the back-end's thread
 * (which answers configuration reads) and on each ring worker (which serves one ring): a
 * FileBackend over the image, opened by each thread for itself.
 */
import { BlockDevice } from '../devices/block/device.js';
import { FileBackend } from '../node/file-backend.js';
import { loadNative } from '../vhost-user/native.js';
import { withInjectedFaults } from './fault.js';

/** Everything crosses to the workers by structured clone. */
export interface BlkDeviceOptions {
  file: string;
  readOnly: boolean;
  numQueues: number;
  queueSize: number;
  /** Logical block size the device advertises (VIRTIO_BLK_F_BLK_SIZE). */
  blockSize: number;
  /** Several requests of a ring under way at once (ring workers only: they drain at stop). */
  asyncIo: boolean;
}

/** Builds the device (the `module` device spec the ring workers load calls this). */
export function createBlkDevice(o: BlkDeviceOptions): BlockDevice {
  // Discard releases the image's blocks (fallocate PUNCH_HOLE, through the vhost-user addon,
  // which serving over vhost-user needs anyway).
  const native = loadNative();
  const mode = native.constants.FALLOC_FL_PUNCH_HOLE | native.constants.FALLOC_FL_KEEP_SIZE;
  const file = FileBackend.open(o.file, {
    readOnly: o.readOnly,
    punchHole: (fd, offset, length) => native.fallocate(fd, mode, offset, length),
  });
  try {
    return new BlockDevice({
      backend: withInjectedFaults(file, process.env, (line) =>
        console.error(`virtq vhost-user-blk: ${line}`),
      ),
      numQueues: o.numQueues,
      queueSize: o.queueSize,
      blockSize: o.blockSize,
      asyncIo: o.asyncIo,
    });
  } catch (e) {
    file.close();
    throw e;
  }
}
