/**
 * The typed vhost-user messages the codec decodes (QEMU docs/interop/vhost-user.rst): each
 * request's payload as a plain object, and the union of every request a front-end may send.
 */
import type { VhostUserRequest, VhostUserRequestName } from './protocol.js';

/** One region of guest memory as the front-end describes it; all four values are < 2^53. */
export interface VhostUserMemoryRegion {
  readonly guestPhysAddr: number;
  readonly size: number;
  /** The address of the region in the front-end's own address space. */
  readonly userAddr: number;
  /** Where the region starts inside the file descriptor that backs it. */
  readonly mmapOffset: number;
}

/** A memory region together with the fd to map it from. */
export interface VhostUserMappedRegion extends VhostUserMemoryRegion {
  readonly fd: number;
}

/** A ring index and a 32-bit value (size, base index, enable flag...). */
export interface VhostUserVringState {
  readonly index: number;
  readonly num: number;
}

/** Where a ring lives, as user addresses of the front-end (all < 2^53). */
export interface VhostUserVringAddr {
  readonly index: number;
  /** 0 or {@link VHOST_VRING_F_LOG}. */
  readonly flags: number;
  readonly descUserAddr: number;
  readonly usedUserAddr: number;
  readonly availUserAddr: number;
  readonly logGuestAddr: number;
}

/** The eventfd of a ring's kick, call or error notification. */
export interface VhostUserVringFile {
  /** Ring index, 0-255. */
  readonly index: number;
  /** The front-end attached no fd: the ring is polled (kick) or not signalled (call, err). */
  readonly noFd: boolean;
  /** The attached fd, or `null` when `noFd`. */
  readonly fd: number | null;
}

/** An access to the device configuration space. */
export interface VhostUserConfig {
  readonly offset: number;
  readonly size: number;
  /** 0 (ordinary access) or 1 (live migration); other values are left to the back-end. */
  readonly flags: number;
  /** `size` bytes: the new contents (SET_CONFIG) or the front-end's buffer (GET_CONFIG). */
  readonly payload: Uint8Array;
}

/** The dirty log's area inside the fd of SET_LOG_BASE. */
export interface VhostUserLog {
  readonly mmapSize: number;
  readonly mmapOffset: number;
}

/** The inflight-tracking buffer's shape. */
export interface VhostUserInflight {
  readonly mmapSize: number;
  readonly mmapOffset: number;
  readonly numQueues: number;
  readonly queueSize: number;
}

// ---------------------------------------------------------------------------------------------
// Messages

/** What every decoded request carries, whatever its kind. */
export interface VhostUserMessageBase<K extends VhostUserRequestName> {
  readonly kind: K;
  readonly request: (typeof VhostUserRequest)[K];
  /** The raw header flags (version 1, REPLY clear). */
  readonly flags: number;
  /** NEED_REPLY was set: the front-end waits for a REPLY_ACK u64 (unless a reply is due anyway). */
  readonly needReply: boolean;
  /**
   * Every fd that arrived with the message, in order. The caller owns all of them, including
   * any the message does not use (a stray fd on REM_MEM_REG), and must close what it keeps
   * no use for.
   */
  readonly fds: readonly number[];
}

/** One decoded request of kind `K`: the common fields and the ones that kind carries (`P`). */
export type VhostUserRequestMessage<
  K extends VhostUserRequestName,
  P extends object = object,
> = VhostUserMessageBase<K> & Readonly<P>;

/** A decoded front-end request: one arm per request the codec supports, keyed by `kind`. */
export type VhostUserMessage =
  | VhostUserRequestMessage<'GET_FEATURES'>
  | VhostUserRequestMessage<'SET_FEATURES', { features: bigint }>
  | VhostUserRequestMessage<'GET_PROTOCOL_FEATURES'>
  | VhostUserRequestMessage<'SET_PROTOCOL_FEATURES', { features: bigint }>
  | VhostUserRequestMessage<'SET_OWNER'>
  | VhostUserRequestMessage<'RESET_OWNER'>
  | VhostUserRequestMessage<'RESET_DEVICE'>
  | VhostUserRequestMessage<'GET_QUEUE_NUM'>
  | VhostUserRequestMessage<'GET_MAX_MEM_SLOTS'>
  | VhostUserRequestMessage<'SET_MEM_TABLE', { regions: readonly VhostUserMappedRegion[] }>
  | VhostUserRequestMessage<'ADD_MEM_REG', { region: VhostUserMappedRegion }>
  | VhostUserRequestMessage<'REM_MEM_REG', { region: VhostUserMemoryRegion }>
  | VhostUserRequestMessage<'SET_VRING_NUM', { state: VhostUserVringState }>
  | VhostUserRequestMessage<'SET_VRING_BASE', { state: VhostUserVringState }>
  | VhostUserRequestMessage<'GET_VRING_BASE', { state: VhostUserVringState }>
  | VhostUserRequestMessage<'SET_VRING_ENABLE', { state: VhostUserVringState }>
  | VhostUserRequestMessage<'VRING_KICK', { state: VhostUserVringState }>
  | VhostUserRequestMessage<'SET_VRING_ADDR', { addr: VhostUserVringAddr }>
  | VhostUserRequestMessage<'SET_VRING_KICK', { file: VhostUserVringFile }>
  | VhostUserRequestMessage<'SET_VRING_CALL', { file: VhostUserVringFile }>
  | VhostUserRequestMessage<'SET_VRING_ERR', { file: VhostUserVringFile }>
  | VhostUserRequestMessage<'GET_CONFIG', { config: VhostUserConfig }>
  | VhostUserRequestMessage<'SET_CONFIG', { config: VhostUserConfig }>
  | VhostUserRequestMessage<'SET_LOG_BASE', { log: VhostUserLog; fd: number }>
  | VhostUserRequestMessage<'SET_LOG_FD', { fd: number }>
  | VhostUserRequestMessage<'GET_INFLIGHT_FD', { inflight: VhostUserInflight }>
  | VhostUserRequestMessage<'SET_INFLIGHT_FD', { inflight: VhostUserInflight; fd: number }>
  | VhostUserRequestMessage<'SET_BACKEND_REQ_FD', { fd: number }>
  | VhostUserRequestMessage<'SET_STATUS', { status: number }>
  | VhostUserRequestMessage<'GET_STATUS'>;

export type VhostUserMessageKind = VhostUserMessage['kind'];

/** The three header fields. */
export interface VhostUserHeader {
  readonly request: number;
  readonly flags: number;
  /** Payload bytes that follow the header. */
  readonly size: number;
}
