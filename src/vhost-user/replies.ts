/**
 * The replies a vhost-user back-end sends (QEMU docs/interop/vhost-user.rst, back-end to
 * front-end): the header with REPLY set and each reply's payload, from typed values checked for
 * range. Pure functions.
 */
import type { VhostUserInflight, VhostUserVringState } from './messages.js';
import {
  VHOST_USER_CONFIG_HEADER_SIZE,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_INFLIGHT_SIZE,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_USER_U64_SIZE,
  VHOST_USER_VRING_STATE_SIZE,
  VhostUserFlags,
  VhostUserRequest,
} from './protocol.js';

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const MAX_U64 = (1n << 64n) - 1n;

function u32Arg(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new RangeError(`${what} must be a u32, got ${value}`);
  }
  return value;
}

function u16Arg(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw new RangeError(`${what} must be a u16, got ${value}`);
  }
  return value;
}

function u64Arg(value: bigint | number, what: string): bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(`${what} must be a non-negative safe integer, got ${value}`);
    }
    return BigInt(value);
  }
  if (typeof value !== 'bigint' || value < 0n || value > MAX_U64) {
    throw new RangeError(`${what} must be a u64, got ${String(value)}`);
  }
  return value;
}

/**
 * A reply to `request` ("Header"): version 1 with REPLY set, the payload copied after the
 * header. The building block of the typed reply encoders below.
 */
export function encodeReply(request: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  u32Arg(request, 'request');
  const out = new Uint8Array(VHOST_USER_HEADER_SIZE + payload.length);
  const v = view(out);
  v.setUint32(0, request, true);
  v.setUint32(4, VhostUserFlags.VERSION | VhostUserFlags.REPLY, true);
  v.setUint32(8, payload.length, true);
  out.set(payload, VHOST_USER_HEADER_SIZE);
  return out;
}

/**
 * A u64 reply ("A single 64-bit integer"): GET_FEATURES, GET_PROTOCOL_FEATURES,
 * GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_STATUS, SET_LOG_BASE.
 */
export function encodeU64Reply(request: number, value: bigint | number): Uint8Array {
  const payload = new Uint8Array(VHOST_USER_U64_SIZE);
  view(payload).setBigUint64(0, u64Arg(value, 'value'), true);
  return encodeReply(request, payload);
}

/**
 * The REPLY_ACK answer to a request sent with NEED_REPLY ("VHOST_USER_PROTOCOL_F_REPLY_ACK"):
 * a u64 that is 0 on success and non-zero on failure.
 */
export function encodeAckReply(request: number, status: bigint | number = 0): Uint8Array {
  return encodeU64Reply(request, status);
}

/** A vring state reply ("A vring state description"), i.e. GET_VRING_BASE's answer. */
export function encodeVringStateReply(request: number, state: VhostUserVringState): Uint8Array {
  const payload = new Uint8Array(VHOST_USER_VRING_STATE_SIZE);
  const v = view(payload);
  v.setUint32(0, u32Arg(state.index, 'state.index'), true);
  v.setUint32(4, u32Arg(state.num, 'state.num'), true);
  return encodeReply(request, payload);
}

/**
 * GET_CONFIG's answer ("Virtio device config space"): the request's offset and flags echoed,
 * then the config bytes, whose length becomes the size field. At most 256 bytes.
 */
export function encodeConfigReply(config: {
  readonly offset: number;
  readonly flags: number;
  readonly payload: Uint8Array;
}): Uint8Array {
  if (config.payload.length > VHOST_USER_MAX_CONFIG_SIZE) {
    throw new RangeError(`config payload of ${config.payload.length} bytes exceeds 256`);
  }
  const payload = new Uint8Array(VHOST_USER_CONFIG_HEADER_SIZE + config.payload.length);
  const v = view(payload);
  v.setUint32(0, u32Arg(config.offset, 'config.offset'), true);
  v.setUint32(4, config.payload.length, true);
  v.setUint32(8, u32Arg(config.flags, 'config.flags'), true);
  payload.set(config.payload, VHOST_USER_CONFIG_HEADER_SIZE);
  return encodeReply(VhostUserRequest.GET_CONFIG, payload);
}

/** GET_CONFIG's failure answer ("GET_CONFIG"): a reply with an empty payload. */
export function encodeConfigErrorReply(): Uint8Array {
  return encodeReply(VhostUserRequest.GET_CONFIG);
}

/**
 * GET_INFLIGHT_FD's answer ("Inflight description"), 24 bytes including the struct's tail
 * padding. The caller sends the buffer's fd in the same sendmsg.
 */
export function encodeInflightReply(inflight: VhostUserInflight): Uint8Array {
  const payload = new Uint8Array(VHOST_USER_INFLIGHT_SIZE);
  const v = view(payload);
  v.setBigUint64(0, u64Arg(inflight.mmapSize, 'inflight.mmapSize'), true);
  v.setBigUint64(8, u64Arg(inflight.mmapOffset, 'inflight.mmapOffset'), true);
  v.setUint16(16, u16Arg(inflight.numQueues, 'inflight.numQueues'), true);
  v.setUint16(18, u16Arg(inflight.queueSize, 'inflight.queueSize'), true);
  return encodeReply(VhostUserRequest.GET_INFLIGHT_FD, payload);
}
