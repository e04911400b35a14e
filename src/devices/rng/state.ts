import { StateReader } from '../../queue/state.js';

/** Device-specific saved state of the entropy device: its counters. */
export interface RngState {
  bytesServed: number;
  requestsServed: number;
}

export function readRngState(value: unknown): RngState {
  const r = StateReader.root(value, 'device.rng');
  return {
    bytesServed: r.int('bytesServed', 0, Number.MAX_SAFE_INTEGER),
    requestsServed: r.int('requestsServed', 0, Number.MAX_SAFE_INTEGER),
  };
}
