/**
 * Guest RAM: regions over (Shared)ArrayBuffers at guest-physical addresses, checked
 * little-endian access, zero-copy views and a dirty-page bitmap for snapshots and migration.
 *
 * @module virtq/memory
 */

export {
  type DirtyBitmap,
  GuestMemory,
  type MemoryPiece,
  type SharedMemoryHandle,
  U64_UNSAFE,
} from './guest-memory.js';
export { DIRTY_PAGE_SIZE, GuestRegion, type RegionSpec } from './region.js';
