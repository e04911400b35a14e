import type { DescriptorChain } from '../../queue/chain.js';

/**
 * An entropy request is a chain of device-writable buffers (VIRTIO 1.2 §5.4.6): the device
 * fills as many bytes as it likes, from the first writable byte on, and reports how many.
 * A chain with device-readable buffers is still served (their bytes are ignored).
 */
export interface RngRequest {
  kind: 'entropy';
  /** Bytes the driver asked for (the chain's writable length). */
  bytes: number;
}

export function parseRngRequest(chain: DescriptorChain): RngRequest {
  return { kind: 'entropy', bytes: chain.writableLength };
}
