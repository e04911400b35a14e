/**
 * What a {@link VhostUserBackend} offers and how it is configured: the protocol features and
 * memory slots it offers, its options and its counters.
 */
import type { VirtioDevice } from '../devices/device.js';
import type { Logger } from '../queue/logger.js';
import type { VhostUserMessage } from './codec.js';
import type { VhostUserNative } from './native.js';
import { protocolFeatureMask, VhostUserProtocolFeature } from './protocol.js';

/** Protocol features this back-end offers. */
export const VHOST_USER_BACKEND_PROTOCOL_FEATURES: bigint =
  protocolFeatureMask(VhostUserProtocolFeature.MQ) |
  protocolFeatureMask(VhostUserProtocolFeature.LOG_SHMFD) |
  protocolFeatureMask(VhostUserProtocolFeature.REPLY_ACK) |
  protocolFeatureMask(VhostUserProtocolFeature.CONFIG) |
  protocolFeatureMask(VhostUserProtocolFeature.INFLIGHT_SHMFD) |
  protocolFeatureMask(VhostUserProtocolFeature.RESET_DEVICE) |
  protocolFeatureMask(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS);

/** Memory slots offered with CONFIGURE_MEM_SLOTS (GET_MAX_MEM_SLOTS). */
export const VHOST_USER_BACKEND_MAX_MEM_SLOTS = 32;

export interface VhostUserBackendOptions {
  /** Where protocol violations and device trouble are reported (default: console). */
  logger?: Logger;
  /** Native functions (default: {@link loadNative}()). */
  native?: VhostUserNative;
  /**
   * Polling mode: a ring served after a kick is served again at every turn of its thread's
   * event loop, with driver notifications disabled, until it has not moved for this many
   * microseconds; then it goes back to kicks (see ring-poller.ts). Default 0: kicks only.
   * Polling trades CPU time for fewer system calls on both sides and lower latency.
   */
  pollIdleMicros?: number;
  /** Called with every decoded request before it is handled (for tracing). */
  onMessage?: (message: VhostUserMessage) => void;
  /** Called when a front-end connects. */
  onConnect?: () => void;
  /** Called when the front-end's connection ends, with the reason. */
  onDisconnect?: (reason: string) => void;
  /**
   * Protocol features to offer: a subset of {@link VHOST_USER_BACKEND_PROTOCOL_FEATURES} (the
   * default, all of them). Leaving out CONFIGURE_MEM_SLOTS makes QEMU send the whole memory
   * table on every start, which QEMU 7.2's vhost-user-rng needs after a back-end restart.
   */
  protocolFeatures?: bigint;
  /**
   * Serve each ring on its own worker thread (see worker-plane.ts), on a device the worker
   * builds from `spec` (a DeviceWorkerSpec of virtq/node). The device given to the constructor
   * then only answers feature negotiation and configuration accesses; it must be built from
   * the same spec. `quiet` drops the workers' warnings.
   */
  ringWorkers?: {
    spec: unknown;
    quiet?: boolean;
    /**
     * How long a stop (GET_VRING_BASE) may wait for a worker, in-flight transfers included,
     * before the ring is given up as lost and the connection closed (default 15 s).
     */
    ackTimeoutMs?: number;
  };
}

/** Counters for tests and diagnostics. */
export interface VhostUserBackendStats {
  connections: number;
  messages: number;
  /** Messages rejected by the codec or refused by the back-end. */
  rejected: number;
  kicks: number;
  calls: number;
  /** Guest pages written into the dirty log (LOG_SHMFD). */
  loggedPages: number;
  /**
   * Guest pages the device wrote that lay beyond the end of the dirty log the front-end gave
   * (logged by this thread; ring workers warn about theirs): not logged.
   */
  droppedLogPages: number;
  /** Chains a restarted ring found in its inflight buffer and served again (INFLIGHT_SHMFD). */
  resubmitted: number;
  /** Polling mode ({@link VhostUserBackendOptions.pollIdleMicros}): kicks to polling. */
  polls: number;
  /** Polling mode: turns of the device served by polling instead of a kick. */
  pollTurns: number;
}

/**
 * Checks the options against the device and returns the protocol features to offer and the
 * polling time; throws RangeError (a bad value) or TypeError (options the device cannot run
 * with).
 */
export function checkBackendOptions(
  device: VirtioDevice,
  options: VhostUserBackendOptions,
): { offered: bigint; poll: number } {
  const offered = options.protocolFeatures ?? VHOST_USER_BACKEND_PROTOCOL_FEATURES;
  if ((offered & ~VHOST_USER_BACKEND_PROTOCOL_FEATURES) !== 0n) {
    throw new RangeError(
      `protocol features 0x${offered.toString(16)} include some this back-end does not implement`,
    );
  }
  // A device with transfers under way must drain them before a ring stops, which only a ring
  // worker can wait for.
  if (options.ringWorkers === undefined && device.asyncTransfers === true) {
    throw new TypeError('a device with asynchronous transfers needs ringWorkers');
  }
  const poll = options.pollIdleMicros ?? 0;
  if (!(Number.isFinite(poll) && poll >= 0)) {
    throw new RangeError(`pollIdleMicros ${poll} is not a number of microseconds >= 0`);
  }
  return { offered, poll };
}
