import { GuestMemory } from '../src/memory/index.js';
import type { RegionSpec } from '../src/memory/region.js';

/**
 * Guest memory with dirty tracking switched on, for the tests that check which pages the
 * library marks (tracking is off unless asked for: GuestMemory.setDirtyTracking).
 */
export function trackedMemory(
  specs: readonly RegionSpec[],
  dirtyBuffers?: readonly ArrayBufferLike[],
): GuestMemory {
  const memory = new GuestMemory(specs, dirtyBuffers);
  memory.setDirtyTracking(true);
  return memory;
}
