/**
 * vhost-user protocol constants (QEMU docs/interop/vhost-user.rst).
 *
 * Numbers only: request codes, protocol feature bits, header flags and the fixed payload sizes
 * the codec enforces. Everything is little-endian on the wire: the spec says "host byte order"
 * and virtq only supports little-endian hosts for vhost-user.
 */

/** Requests the front-end sends to the back-end ("Front-end message types"). */
export const VhostUserRequest = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  /** Called SET_SLAVE_REQ_FD in older revisions of the spec. */
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

export type VhostUserRequestName = keyof typeof VhostUserRequest;
export type VhostUserRequestCode = (typeof VhostUserRequest)[VhostUserRequestName];

const requestNames = new Map<number, VhostUserRequestName>(
  (Object.keys(VhostUserRequest) as VhostUserRequestName[]).map((name) => [
    VhostUserRequest[name],
    name,
  ]),
);

/** The spec's name of a front-end request code, or `undefined` when the code is not assigned. */
export function requestName(code: number): VhostUserRequestName | undefined {
  return requestNames.get(code);
}

/** Bit numbers of the protocol feature mask (GET/SET_PROTOCOL_FEATURES, "Protocol features"). */
export const VhostUserProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  /** Called SLAVE_REQ in older revisions of the spec. */
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  /** Called SLAVE_SEND_FD in older revisions of the spec. */
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;

export type VhostUserProtocolFeatureName = keyof typeof VhostUserProtocolFeature;

/** The mask with bit `bit` set, for building protocol (or device) feature masks. */
export function protocolFeatureMask(bit: number): bigint {
  return 1n << BigInt(bit);
}

/**
 * Device feature bit 30 (reused from a VIRTIO reserved bit): the back-end understands
 * GET/SET_PROTOCOL_FEATURES ("Communication").
 */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
/**
 * Feature bit 26 (VHOST_F_LOG_ALL): offered by a back-end that can log its writes for live
 * migration; the front-end sets it in SET_FEATURES while it migrates ("Migration").
 */
export const VHOST_F_LOG_ALL = 26;

/** Header `flags` field ("Header"). */
export const VhostUserFlags = {
  /** The low two bits carry the protocol version; only version 1 exists. */
  VERSION_MASK: 0x3,
  VERSION: 0x1,
  /** Set by the back-end on every reply. */
  REPLY: 0x4,
  /** The front-end asks for an explicit success/failure reply (REPLY_ACK). */
  NEED_REPLY: 0x8,
} as const;

/** Every header flag bit the spec defines; a request with any other bit set is rejected. */
export const VHOST_USER_KNOWN_FLAGS =
  VhostUserFlags.VERSION_MASK | VhostUserFlags.REPLY | VhostUserFlags.NEED_REPLY;

/** request u32 + flags u32 + size u32 ("Message Specification"). */
export const VHOST_USER_HEADER_SIZE = 12;

/** Most memory regions one SET_MEM_TABLE carries (the ancillary data holds at most 8 fds). */
export const VHOST_USER_MAX_MEM_REGIONS = 8;

/** Largest device configuration access GET/SET_CONFIG may carry. */
export const VHOST_USER_MAX_CONFIG_SIZE = 256;

/** A u64 payload. */
export const VHOST_USER_U64_SIZE = 8;
/** index u32 + num u32 ("A vring state description"). */
export const VHOST_USER_VRING_STATE_SIZE = 8;
/** index u32, flags u32, then four u64 addresses ("A vring address description"). */
export const VHOST_USER_VRING_ADDR_SIZE = 40;
/** guest address, size, user address, mmap offset: four u64 ("Memory regions description"). */
export const VHOST_USER_MEM_REGION_SIZE = 32;
/** nregions u32 + padding u32 in front of the region array. */
export const VHOST_USER_MEM_TABLE_HEADER_SIZE = 8;
/** padding u64 + one region ("Single memory region description"). */
export const VHOST_USER_SINGLE_MEM_REGION_SIZE = 8 + VHOST_USER_MEM_REGION_SIZE;
/** mmap size u64 + mmap offset u64 ("Log description"). */
export const VHOST_USER_LOG_SIZE = 16;
/** offset u32, size u32, flags u32 in front of the config bytes ("Virtio device config space"). */
export const VHOST_USER_CONFIG_HEADER_SIZE = 12;
/**
 * mmap size u64, mmap offset u64, num queues u16, queue size u16, then 4 bytes of tail padding
 * of the C struct that QEMU and libvhost-user send ("Inflight description").
 */
export const VHOST_USER_INFLIGHT_SIZE = 24;

/** Largest payload of any request the codec accepts (a full GET/SET_CONFIG). */
export const VHOST_USER_MAX_PAYLOAD_SIZE =
  VHOST_USER_CONFIG_HEADER_SIZE + VHOST_USER_MAX_CONFIG_SIZE;

/** Bits 0-7 of the SET_VRING_KICK/CALL/ERR u64 carry the ring index. */
export const VHOST_USER_VRING_INDEX_MASK = 0xff;
/** Bit 8 of the SET_VRING_KICK/CALL/ERR u64: no fd is attached (poll instead). */
export const VHOST_USER_VRING_NOFD_MASK = 0x100;

/** SET_VRING_ADDR flag bit 0: log writes to the used ring (VHOST_VRING_F_LOG, "Migration"). */
export const VHOST_VRING_F_LOG = 0x1;

/** SET_CONFIG / GET_CONFIG `flags` values ("Virtio device config space"). */
export const VhostUserConfigFlags = {
  /** An ordinary access to a writable field. */
  WRITABLE: 0,
  /** A write during live migration, which may also target read-only fields. */
  MIGRATION: 1,
} as const;

/** Dirty-log page size ("Migration"). */
export const VHOST_LOG_PAGE = 0x1000;
