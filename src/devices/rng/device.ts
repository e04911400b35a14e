import { DescriptorChain } from '../../queue/chain.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../queue/constants.js';
import type { Queue } from '../../queue/queue.js';
import { checkBudget, type DeviceBudgetOptions } from '../budget.js';
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

/**
 * A rate limit for the entropy device, in the manner of rust-vmm's vhost-device-rng
 * (`--max-bytes` per `--period`): at most `maxBytes` bytes per period of `periodMs`. Requests
 * that find the quota spent wait in the ring (none is dropped) until the next period, which a
 * timer starts; the device does not poll.
 */
export interface RngRateLimit {
  /** Bytes per period (an integer of at least 1). */
  maxBytes: number;
  /** Length of a period in milliseconds (an integer of at least 1). */
  periodMs: number;
  /** The clock periods are measured with, in milliseconds (default `performance.now`). */
  now?: () => number;
  /**
   * What a request gets when less than it asks for is left in the period. By default
   * (`false`) it waits for the next period and is then served whole, so the limit never
   * shortens a request: Linux 6.1's virtio_rng stops asking for more after a short fill that
   * is followed by a wait (seen in the real-guest test). With `true` it gets what is left, a
   * short fill that VIRTIO 1.2 §5.4.6 allows; every period's quota is then spent to the byte,
   * for drivers that take short fills in their stride.
   */
  shortFills?: boolean;
}

export interface RngOptions extends DeviceBudgetOptions {
  /** Where the bytes come from (default: {@link cryptoSource}). */
  source?: EntropySource;
  /** Size of the request queue (default 256). */
  queueSize?: number;
  /**
   * Most bytes served per request (default {@link RNG_DEFAULT_MAX_BYTES_PER_REQUEST}): the
   * device may write less than the whole buffer (VIRTIO 1.2 §5.4.6), and a buffer of
   * aliased gigabytes must not cost seconds of entropy generation.
   */
  maxBytesPerRequest?: number;
  /** At most so many bytes per period (default: no limit). */
  rateLimit?: RngRateLimit;
}

/**
 * Default per-request cap of the entropy device: 64 KiB, what one `getRandomValues` call
 * fills, and far more than Linux's virtio-rng driver asks for in one request (a buffer of a
 * cache line or so).
 */
export const RNG_DEFAULT_MAX_BYTES_PER_REQUEST = 64 * 1024;

/** How long the device waits before it asks an entropy source that threw again. */
export const RNG_SOURCE_RETRY_MS = 1000;

function defaultNow(): number {
  return globalThis.performance.now();
}

/**
 * virtio-rng (device id 4, VIRTIO 1.2 §5.4): one request queue, no configuration space. Each
 * request gets at most `maxBytesPerRequest` bytes, within the optional rate limit.
 */
export class RngDevice extends VirtioDeviceBase {
  readonly source: EntropySource;
  private readonly maxBytes: number;
  private readonly chain = new DescriptorChain();
  bytesServed = 0;
  requestsServed = 0;
  /** Times a request waited for the next rate-limit period. */
  rateLimited = 0;
  /** Times the entropy source threw; the request waited and was tried again. */
  sourceFailures = 0;
  /** What the entropy source threw last. */
  lastSourceError: unknown = null;

  private readonly rateBytes: number;
  private readonly ratePeriod: number;
  private readonly shortFills: boolean;
  private readonly now: () => number;
  /** Bytes left in the current period, and when it started. */
  private quota = 0;
  private periodStart = Number.NEGATIVE_INFINITY;
  private wakeTimer: ReturnType<typeof setTimeout> | null = null;
  /** The generation {@link wakeTimer} was set in. */
  private wakeGeneration = -1;

  constructor(options: RngOptions = {}) {
    // Both ring formats, notification suppression and indirect tables (the transport serves them).
    const ring =
      featureBit(VIRTIO_F_EVENT_IDX) |
      featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_RING_PACKED);
    super(VIRTIO_ID_RNG, [options.queueSize ?? 256], ring, 0, options);
    this.source = options.source ?? cryptoSource;
    this.maxBytes =
      checkBudget('maxBytesPerRequest', options.maxBytesPerRequest) ??
      RNG_DEFAULT_MAX_BYTES_PER_REQUEST;
    const rate = options.rateLimit;
    this.rateBytes = rate === undefined ? 0 : checkBudget('rateLimit.maxBytes', rate.maxBytes)!;
    this.ratePeriod = rate === undefined ? 0 : checkBudget('rateLimit.periodMs', rate.periodMs)!;
    this.shortFills = rate?.shortFills ?? false;
    this.now = rate?.now ?? defaultNow;
  }

  /**
   * Whether the rate limit lets a request of `bytes` through now (refilling the quota when a
   * new period began). By default a request is served whole or not at all: when the quota
   * left in this period is smaller, it waits for the next period (a timer), and a request
   * larger than a whole period's quota gets that quota at the start of a period. With
   * {@link RngRateLimit.shortFills} any quota left admits it (the caller serves what is left).
   */
  private admits(index: number, bytes: number): boolean {
    const t = this.now();
    if (t - this.periodStart >= this.ratePeriod) {
      this.periodStart = t;
      this.quota = this.rateBytes;
    }
    const needed = this.shortFills ? 1 : Math.min(bytes, this.rateBytes);
    if (this.quota >= needed && this.quota > 0) return true;
    this.rateLimited++;
    this.wakeAfter(index, Math.max(1, Math.ceil(this.periodStart + this.ratePeriod - t)));
    return false;
  }

  /**
   * Serves queue `index` again after `ms` milliseconds (one timer at a time). A timer of an
   * earlier generation (a re-activation without a reset in between) is replaced: it would wake
   * nothing, and must not keep this generation's from being set.
   */
  private wakeAfter(index: number, ms: number): void {
    if (this.wakeTimer !== null) {
      if (this.wakeGeneration === this.generation) return;
      clearTimeout(this.wakeTimer);
    }
    const generation = this.generation;
    this.wakeGeneration = generation;
    this.wakeTimer = setTimeout(() => {
      this.wakeTimer = null;
      if (generation === this.generation) this.queueNotify(index);
    }, ms);
  }

  protected processQueue(index: number, queue: Queue): void {
    const chain = this.chain;
    const memory = this.ctx!.memory;
    const limited = this.rateBytes > 0;
    let any = false;
    while (this.withinBudget(index)) {
      // popOrEnableNotification keeps avail_event current with EVENT_IDX (§2.7.10, §2.8.10).
      const c = queue.popOrEnableNotification(chain);
      if (c === null) break;
      const req = parseRngRequest(c);
      // §5.4.6: the device may fill fewer bytes than the buffer holds.
      let left = Math.min(req.bytes, this.maxBytes);
      if (limited) {
        if (!this.admits(index, left)) {
          // Back to the ring until the next period.
          queue.undoPop();
          break;
        }
        left = Math.min(left, this.quota);
      }
      let written = 0;
      try {
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
      } catch (e) {
        // The source failed (a device file that errs or ends): the request goes back to the
        // ring, nothing is completed with bytes that did not come, and the device tries again
        // later rather than spinning or giving the guest an error it cannot act on.
        queue.undoPop();
        this.sourceFailures++;
        this.lastSourceError = e;
        this.wakeAfter(index, RNG_SOURCE_RETRY_MS);
        break;
      }
      if (limited) this.quota -= written;
      this.spend(written);
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

  protected override prepareDevice(state: unknown): () => void {
    const s = readRngState(state);
    return () => {
      this.bytesServed = s.bytesServed;
      this.requestsServed = s.requestsServed;
    };
  }

  protected override onReset(): void {
    // Counters describe the device's life, not one driver session; a rate-limit wait ends.
    if (this.wakeTimer !== null) clearTimeout(this.wakeTimer);
    this.wakeTimer = null;
  }
}
