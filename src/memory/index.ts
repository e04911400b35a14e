export { HOST_IS_LITTLE_ENDIAN } from './endian.js';
export {
  type DirtyBitmap,
  GuestMemory,
  type MemoryPiece,
  type SharedMemoryHandle,
  U64_UNSAFE,
} from './guest-memory.js';
export { DIRTY_PAGE_SIZE, GuestRegion, type RegionSpec } from './region.js';
