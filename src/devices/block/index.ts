// virtio-blk (VIRTIO 1.2 §5.2): the device, its storage backends, its feature bits and snapshot.
export {
  type AsyncBlockIo,
  type BlockBackend,
  type BlockIoDone,
  MAX_VECTOR_BUFFERS,
  MemoryBackend,
  type MemoryBackendOptions,
} from './backend.js';
export {
  BLK_CONFIG,
  BLK_CONFIG_SIZE,
  type BlockOptions,
  type BlockTopology,
  DEFAULT_SEG_MAX_RING,
  VIRTIO_BLK_F_BLK_SIZE,
  VIRTIO_BLK_F_CONFIG_WCE,
  VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH,
  VIRTIO_BLK_F_GEOMETRY,
  VIRTIO_BLK_F_MQ,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_F_SEG_MAX,
  VIRTIO_BLK_F_SIZE_MAX,
  VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES,
} from './config.js';
export { BlockDevice } from './device.js';
// Request types and status bytes (VIRTIO 1.2 §5.2.6), for drivers and tests that build requests
export {
  BLK_HEADER_BYTES,
  BLK_ID_BYTES,
  BLK_SEGMENT_BYTES,
  SECTOR_BYTES,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_SECURE_ERASE,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './request.js';
export type { BlockSavedRequest, BlockState, BlockStats } from './state.js';
