import { DescriptorChain } from '../../queue/chain.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../queue/constants.js';
import type { Queue } from '../../queue/queue.js';
import { featureBit, VIRTIO_ID_RNG, VirtioDeviceBase } from '../device.js';
import { parseRngRequest } from './request.js';
import { type RngState, readRngState } from './state.js';

/** Fills `out` with random bytes. */
export type EntropySource = (out: Uint8Array) => void;

/** The platform's cryptographic generator (Web Crypto, in Node and browsers). */
export const cryptoSource: EntropySource = (out) => {
  // getRandomValues fills at most 65536 bytes per call.
  for (let off = 0; off < out.length; off += 65536) {
    globalThis.crypto.getRandomValues(out.subarray(off, Math.min(out.length, off + 65536)));
  }
};

export interface RngOptions {
  /** Where the bytes come from (default: {@link cryptoSource}). */
  source?: EntropySource;
  /** Size of the request queue (default 256). */
  queueSize?: number;
  /** Largest number of bytes served per request (default: all the driver asked for). */
  maxBytesPerRequest?: number;
}

/** virtio-rng (device id 4, VIRTIO 1.2 §5.4): one request queue, no configuration space. */
export class RngDevice extends VirtioDeviceBase {
  readonly source: EntropySource;
  private readonly maxBytes: number;
  private readonly chain = new DescriptorChain();
  bytesServed = 0;
  requestsServed = 0;

  constructor(options: RngOptions = {}) {
    // Both ring formats, notification suppression and indirect tables (the transport serves them).
    const ring =
      featureBit(VIRTIO_F_EVENT_IDX) |
      featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_RING_PACKED);
    super(VIRTIO_ID_RNG, [options.queueSize ?? 256], ring, 0);
    this.source = options.source ?? cryptoSource;
    this.maxBytes = options.maxBytesPerRequest ?? Number.MAX_SAFE_INTEGER;
  }

  protected processQueue(index: number, queue: Queue): void {
    const chain = this.chain;
    const memory = this.ctx!.memory;
    let any = false;
    // popOrEnableNotification keeps avail_event current with EVENT_IDX (§2.7.10, §2.8.10).
    for (
      let c = queue.popOrEnableNotification(chain);
      c !== null;
      c = queue.popOrEnableNotification(chain)
    ) {
      const req = parseRngRequest(c);
      let left = Math.min(req.bytes, this.maxBytes);
      let written = 0;
      for (let i = c.writableStart; i < c.count && left > 0; i++) {
        const n = Math.min(c.lens[i]!, left);
        // Buffers were checked at pop time; one spanning two regions is filled piece by piece.
        memory.forEachPiece(c.addrs[i]!, n, (region, addr, len) => {
          const off = addr - region.base;
          this.source(region.bytes.subarray(off, off + len));
          region.markDirty(addr, len);
        });
        left -= n;
        written += n;
      }
      queue.addUsed(c.head, written);
      this.bytesServed += written;
      this.requestsServed++;
      any = true;
    }
    if (any) this.publish(index);
  }

  protected override saveDevice(): RngState {
    return { bytesServed: this.bytesServed, requestsServed: this.requestsServed };
  }

  protected override restoreDevice(state: unknown): void {
    const s = readRngState(state);
    this.bytesServed = s.bytesServed;
    this.requestsServed = s.requestsServed;
  }

  protected override onReset(): void {
    // Counters describe the device's life, not one driver session; nothing else to drop.
  }
}
