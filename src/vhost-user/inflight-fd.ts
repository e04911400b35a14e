/**
 * GET_INFLIGHT_FD and SET_INFLIGHT_FD ("Inflight I/O tracking"): the checks on the buffer's
 * shape, a new buffer in a memfd for GET, and adopting the front-end's buffer for SET. The
 * layouts themselves are in inflight.ts (split) and packed-inflight.ts (packed).
 */
import { ftruncateSync } from 'node:fs';
import { encodeInflightReply } from './codec.js';
import {
  InflightBuffer,
  inflightBufferBytes,
  recordedDescNum,
  splitInflightRegionBytes,
} from './inflight.js';
import { mapShared } from './memory-table.js';
import type { VhostUserNative } from './native.js';
import { RequestFailure } from './request-failure.js';

/** Largest inflight buffer a front-end may ask for (GET_INFLIGHT_FD). */
export const MAX_INFLIGHT_BYTES = 256 << 20;

/** What the inflight requests need to know of the back-end. */
export interface InflightContext {
  readonly native: VhostUserNative;
  /** INFLIGHT_SHMFD was negotiated. */
  readonly negotiated: boolean;
  /** The device's largest ring sizes (one per ring). */
  readonly queueMaxSizes: readonly number[];
}

function checkShape(ctx: InflightContext, numQueues: number, queueSize: number): void {
  if (!ctx.negotiated) throw new RequestFailure('inflight buffer without INFLIGHT_SHMFD');
  const rings = ctx.queueMaxSizes.length;
  if (numQueues < 1 || numQueues > rings) {
    throw new RequestFailure(`inflight buffer for ${numQueues} queues; the device has ${rings}`);
  }
  if (queueSize < 1 || queueSize > 32768) {
    throw new RequestFailure(`inflight queue size ${queueSize} is not in 1..32768`);
  }
  if (inflightBufferBytes(numQueues, queueSize) > MAX_INFLIGHT_BYTES) {
    throw new RequestFailure('inflight buffer too large');
  }
}

/**
 * Entries per inflight region for a front-end that asks for `queueSize`: at least the largest
 * ring this device accepts. QEMU asks with its `queue-size` property (128 by default), yet its
 * virtio-mmio transport lets the guest choose any ring size up to the back-end's maximum
 * (Linux takes 1024); a region sized by the request could not track such a ring. The front-end
 * only keeps the buffer and hands it back, so its regions may be larger than it asked for.
 */
function descNumFor(ctx: InflightContext, queueSize: number): number {
  let max = queueSize;
  for (const m of ctx.queueMaxSizes) if (m > max) max = m;
  return Math.min(max, 32768);
}

/**
 * GET_INFLIGHT_FD: a new, zeroed buffer in a memfd, which becomes the back-end's too. Returns
 * the buffer, the memfd (to send with the reply and then close) and the reply.
 */
export function newInflightBuffer(
  ctx: InflightContext,
  req: { numQueues: number; queueSize: number },
): { buffer: InflightBuffer; fd: number; reply: Uint8Array } {
  checkShape(ctx, req.numQueues, req.queueSize);
  const descNum = descNumFor(ctx, req.queueSize);
  // Room for either layout: QEMU asks before it sets the features (split or packed).
  const size = inflightBufferBytes(req.numQueues, descNum);
  if (size > MAX_INFLIGHT_BYTES) throw new RequestFailure('inflight buffer too large');
  const fd = ctx.native.memfdCreate('virtq-inflight', 0);
  try {
    ftruncateSync(fd, size);
    const m = mapShared(ctx.native, fd, 0, size, 'inflight buffer');
    return {
      buffer: new InflightBuffer(m, req.numQueues, descNum),
      fd,
      reply: encodeInflightReply({
        mmapOffset: 0,
        numQueues: req.numQueues,
        queueSize: req.queueSize,
        mmapSize: size,
      }),
    };
  } catch (e) {
    ctx.native.close(fd);
    throw e;
  }
}

/** SET_INFLIGHT_FD: the front-end's buffer (from GET_INFLIGHT_FD, possibly of a back-end before). */
export function adoptInflightBuffer(
  ctx: InflightContext,
  i: { mmapSize: number; mmapOffset: number; numQueues: number; queueSize: number },
  fd: number,
): InflightBuffer {
  checkShape(ctx, i.numQueues, i.queueSize);
  if (i.mmapSize > MAX_INFLIGHT_BYTES) throw new RequestFailure('inflight buffer too large');
  // Regions follow each other at a fixed step; ours are larger than the front-end asked for
  // (see descNumFor), and the first region's header says for how many entries.
  const step = Math.floor(i.mmapSize / i.numQueues / 64) * 64;
  if (step < splitInflightRegionBytes(i.queueSize)) {
    throw new RequestFailure(
      `inflight buffer of ${i.mmapSize} bytes is too small for ${i.numQueues} queues of ${i.queueSize}`,
    );
  }
  const whole = mapShared(ctx.native, fd, i.mmapOffset, i.mmapSize, 'inflight buffer');
  const recorded = recordedDescNum(whole, i.mmapSize);
  let descNum = i.queueSize;
  for (const n of [recorded, descNumFor(ctx, i.queueSize)]) {
    if (n > descNum && splitInflightRegionBytes(n) <= step) {
      descNum = n;
      break;
    }
  }
  return new InflightBuffer(whole, i.numQueues, descNum, step);
}
