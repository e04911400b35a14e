/**
 * The vhost-user message codec: bytes and ancillary fds in, a typed message out; typed replies
 * out as bytes. Pure functions, no I/O (QEMU docs/interop/vhost-user.rst).
 *
 * Everything the front-end sends is validated strictly: header version and flags, the exact
 * payload size of each request, the number of fds, and the payload's own rules (non-empty and
 * non-overlapping memory regions, reserved bits clear, 64-bit addresses below 2^53). A violation
 * is a {@link VhostUserError} carrying every fd of the rejected message, which nothing owns and
 * the caller must close. Checks that need to know the device (a ring index below the number of
 * queues, a config access inside the config space) are left to the back-end.
 */

import { VhostUserError, type VhostUserErrorCode } from '../errors.js';
import { assertLittleEndianHost } from '../memory/endian.js';
import type {
  VhostUserConfig,
  VhostUserHeader,
  VhostUserInflight,
  VhostUserLog,
  VhostUserMappedRegion,
  VhostUserMemoryRegion,
  VhostUserMessage,
  VhostUserVringAddr,
  VhostUserVringFile,
  VhostUserVringState,
} from './messages.js';
import {
  requestName,
  VHOST_USER_CONFIG_HEADER_SIZE,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_INFLIGHT_SIZE,
  VHOST_USER_KNOWN_FLAGS,
  VHOST_USER_LOG_SIZE,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_USER_MAX_MEM_REGIONS,
  VHOST_USER_MAX_PAYLOAD_SIZE,
  VHOST_USER_MEM_REGION_SIZE,
  VHOST_USER_MEM_TABLE_HEADER_SIZE,
  VHOST_USER_SINGLE_MEM_REGION_SIZE,
  VHOST_USER_U64_SIZE,
  VHOST_USER_VRING_ADDR_SIZE,
  VHOST_USER_VRING_INDEX_MASK,
  VHOST_USER_VRING_NOFD_MASK,
  VHOST_USER_VRING_STATE_SIZE,
  VHOST_VRING_F_LOG,
  VhostUserFlags,
  VhostUserRequest,
} from './protocol.js';

// Messages use the host's byte order (vhost-user.rst); virtq reads them as little-endian.
assertLittleEndianHost();

export * from './messages.js';
export * from './protocol.js';
export * from './replies.js';

// ---------------------------------------------------------------------------------------------
// Decoding

const TWO_32 = 0x1_0000_0000;
/** A u64 whose high half reaches this is >= 2^53 and so not a safe integer. */
const HIGH_HALF_LIMIT = 0x20_0000;

function fail(
  code: VhostUserErrorCode,
  request: number,
  fds: readonly number[],
  message: string,
): never {
  throw new VhostUserError(code, request, fds.slice(), message);
}

function label(request: number): string {
  const name = requestName(request);
  return name === undefined ? `request ${request}` : `${name} (${request})`;
}

function checkFdsArgument(fds: readonly number[]): void {
  if (!Array.isArray(fds)) throw new TypeError('fds must be an array of file descriptors');
  for (const fd of fds) {
    if (!Number.isSafeInteger(fd) || fd < 0) {
      throw new TypeError(`fds must hold non-negative integers, got ${String(fd)}`);
    }
  }
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Reads and checks a header ("Header"): version 1 in the low two bits, REPLY clear (the
 * front-end only sends requests on this channel), no undefined flag bits, and a size no
 * request could exceed. Use it to frame a stream: the whole message is
 * {@link VHOST_USER_HEADER_SIZE} + `size` bytes. `fds` are the descriptors received so far,
 * reported on the error if the header is rejected.
 */
export function decodeHeader(bytes: Uint8Array, fds: readonly number[] = []): VhostUserHeader {
  checkFdsArgument(fds);
  if (bytes.length < VHOST_USER_HEADER_SIZE) {
    fail('VHOST_BAD_HEADER', -1, fds, `a header is 12 bytes, got ${bytes.length}`);
  }
  const v = view(bytes);
  const request = v.getUint32(0, true);
  const flags = v.getUint32(4, true);
  const size = v.getUint32(8, true);
  // "Header": the low two bits of flags are the version, which must be 1.
  if ((flags & VhostUserFlags.VERSION_MASK) !== VhostUserFlags.VERSION) {
    fail(
      'VHOST_BAD_VERSION',
      request,
      fds,
      `${label(request)}: version ${flags & VhostUserFlags.VERSION_MASK}, expected 1`,
    );
  }
  // "Header": bit 2 marks replies, which only the back-end sends.
  if ((flags & VhostUserFlags.REPLY) !== 0) {
    fail('VHOST_BAD_HEADER', request, fds, `${label(request)}: the REPLY flag is set on a request`);
  }
  // "Header": only bits 0-3 are defined.
  if ((flags & ~VHOST_USER_KNOWN_FLAGS) !== 0) {
    fail(
      'VHOST_BAD_HEADER',
      request,
      fds,
      `${label(request)}: undefined flag bits 0x${(flags & ~VHOST_USER_KNOWN_FLAGS).toString(16)}`,
    );
  }
  if (size > VHOST_USER_MAX_PAYLOAD_SIZE) {
    fail(
      'VHOST_BAD_SIZE',
      request,
      fds,
      `${label(request)}: payload of ${size} bytes exceeds the largest request (${VHOST_USER_MAX_PAYLOAD_SIZE})`,
    );
  }
  return { request, flags, size };
}

/**
 * How many bytes the message starting with this (at least 12-byte) header occupies, header
 * included. Throws like {@link decodeHeader}.
 */
export function announcedMessageSize(header: Uint8Array, fds: readonly number[] = []): number {
  return VHOST_USER_HEADER_SIZE + decodeHeader(header, fds).size;
}

/** State shared by the payload readers of one message. */
class Reader {
  readonly v: DataView;
  constructor(
    readonly bytes: Uint8Array,
    readonly request: number,
    readonly fds: readonly number[],
  ) {
    this.v = view(bytes);
  }

  fail(code: VhostUserErrorCode, message: string): never {
    return fail(code, this.request, this.fds, `${label(this.request)}: ${message}`);
  }

  u16(at: number): number {
    return this.v.getUint16(VHOST_USER_HEADER_SIZE + at, true);
  }

  u32(at: number): number {
    return this.v.getUint32(VHOST_USER_HEADER_SIZE + at, true);
  }

  u64(at: number): bigint {
    return this.v.getBigUint64(VHOST_USER_HEADER_SIZE + at, true);
  }

  /** A u64 that must be a safe integer (ENGINEERING.md decision 1). */
  safe(at: number, field: string): number {
    const lo = this.u32(at);
    const hi = this.u32(at + 4);
    if (hi >= HIGH_HALF_LIMIT) {
      this.fail('VHOST_BAD_PAYLOAD', `${field} 0x${this.u64(at).toString(16)} is not below 2^53`);
    }
    return hi * TWO_32 + lo;
  }

  /** `start + size` must stay a safe integer, so the range can be used without overflow. */
  range(start: number, size: number, field: string): void {
    if (start + size > Number.MAX_SAFE_INTEGER) {
      this.fail('VHOST_BAD_PAYLOAD', `${field} range [${start}, +${size}) ends beyond 2^53`);
    }
  }

  region(at: number, what: string): VhostUserMemoryRegion {
    const guestPhysAddr = this.safe(at, `${what} guest address`);
    const size = this.safe(at + 8, `${what} size`);
    const userAddr = this.safe(at + 16, `${what} user address`);
    const mmapOffset = this.safe(at + 24, `${what} mmap offset`);
    // "Memory access": a region maps a non-empty range; an empty one is meaningless.
    if (size === 0) this.fail('VHOST_BAD_PAYLOAD', `${what} has size 0`);
    this.range(guestPhysAddr, size, `${what} guest`);
    this.range(userAddr, size, `${what} user`);
    this.range(mmapOffset, size, `${what} mmap`);
    return { guestPhysAddr, size, userAddr, mmapOffset };
  }

  state(): VhostUserVringState {
    return { index: this.u32(0), num: this.u32(4) };
  }

  inflight(): VhostUserInflight {
    return {
      mmapSize: this.safe(0, 'inflight mmap size'),
      mmapOffset: this.safe(8, 'inflight mmap offset'),
      numQueues: this.u16(16),
      queueSize: this.u16(18),
    };
  }

  vringFile(): VhostUserVringFile {
    const raw = this.u64(0);
    // "SET_VRING_KICK": bits 0-7 are the index and bit 8 the no-fd flag; the rest is unused.
    if ((raw & ~0x1ffn) !== 0n) {
      this.fail('VHOST_BAD_PAYLOAD', `undefined bits set in 0x${raw.toString(16)}`);
    }
    const bits = Number(raw);
    const noFd = (bits & VHOST_USER_VRING_NOFD_MASK) !== 0;
    // "SET_VRING_KICK": the no-fd flag says exactly whether ancillary data carries an fd.
    this.fdCount(noFd ? 0 : 1);
    return { index: bits & VHOST_USER_VRING_INDEX_MASK, noFd, fd: noFd ? null : this.fds[0]! };
  }

  config(size: number): VhostUserConfig {
    const offset = this.u32(0);
    const configSize = this.u32(4);
    const flags = this.u32(8);
    // "GET_CONFIG"/"SET_CONFIG": the access is at most 256 bytes and fills the payload exactly.
    if (configSize > VHOST_USER_MAX_CONFIG_SIZE) {
      this.fail('VHOST_BAD_SIZE', `config access of ${configSize} bytes exceeds 256`);
    }
    if (size !== VHOST_USER_CONFIG_HEADER_SIZE + configSize) {
      this.fail(
        'VHOST_BAD_SIZE',
        `payload of ${size} bytes does not hold a ${configSize}-byte config access`,
      );
    }
    const start = VHOST_USER_HEADER_SIZE + VHOST_USER_CONFIG_HEADER_SIZE;
    const payload = this.bytes.slice(start, start + configSize);
    return { offset, size: configSize, flags, payload };
  }

  fdCount(expected: number): void {
    if (this.fds.length !== expected) {
      this.fail('VHOST_BAD_FDS', `expects ${expected} fd(s), got ${this.fds.length}`);
    }
  }

  payloadSize(size: number, expected: number): void {
    if (size !== expected) {
      this.fail('VHOST_BAD_SIZE', `payload is ${size} bytes, expected ${expected}`);
    }
  }
}

/**
 * Decodes one complete front-end message: `bytes` is the header and exactly the payload it
 * announces, `fds` the descriptors that arrived with it (SCM_RIGHTS). Returns a typed message
 * whose `fds` the caller now owns, or throws a {@link VhostUserError} whose `fds` the caller
 * must close. Throws `TypeError` only when `fds` is not an array of non-negative integers.
 */
export function decodeMessage(bytes: Uint8Array, fds: readonly number[]): VhostUserMessage {
  const header = decodeHeader(bytes, fds);
  const { request, flags, size } = header;
  if (bytes.length !== VHOST_USER_HEADER_SIZE + size) {
    fail(
      'VHOST_BAD_SIZE',
      request,
      fds,
      `${label(request)}: header announces ${size} payload bytes but ${bytes.length - VHOST_USER_HEADER_SIZE} arrived`,
    );
  }
  const r = new Reader(bytes, request, fds);
  const base = { flags, needReply: (flags & VhostUserFlags.NEED_REPLY) !== 0, fds: fds.slice() };
  const R = VhostUserRequest;

  switch (request) {
    // No payload, no fds.
    case R.GET_FEATURES:
    case R.GET_PROTOCOL_FEATURES:
    case R.SET_OWNER:
    case R.RESET_OWNER:
    case R.RESET_DEVICE:
    case R.GET_QUEUE_NUM:
    case R.GET_MAX_MEM_SLOTS:
    case R.GET_STATUS: {
      // "Front-end message types": these carry no request payload.
      r.payloadSize(size, 0);
      r.fdCount(0);
      return { ...base, kind: requestName(request) as NoPayloadKind, request } as VhostUserMessage;
    }

    case R.SET_FEATURES:
    case R.SET_PROTOCOL_FEATURES: {
      // "SET_FEATURES"/"SET_PROTOCOL_FEATURES": one u64 feature mask.
      r.payloadSize(size, VHOST_USER_U64_SIZE);
      r.fdCount(0);
      const kind = request === R.SET_FEATURES ? 'SET_FEATURES' : 'SET_PROTOCOL_FEATURES';
      return { ...base, kind, request, features: r.u64(0) } as VhostUserMessage;
    }

    case R.SET_STATUS: {
      // "SET_STATUS": a u64 holding the 8-bit VIRTIO device status.
      r.payloadSize(size, VHOST_USER_U64_SIZE);
      r.fdCount(0);
      const status = r.u64(0);
      if (status > 0xffn) r.fail('VHOST_BAD_PAYLOAD', `device status 0x${status.toString(16)}`);
      return { ...base, kind: 'SET_STATUS', request, status: Number(status) };
    }

    case R.SET_MEM_TABLE: {
      // "Memory regions description": nregions u32, padding u32, then nregions 32-byte regions.
      if (size < VHOST_USER_MEM_TABLE_HEADER_SIZE) {
        r.fail('VHOST_BAD_SIZE', `payload of ${size} bytes has no region count`);
      }
      const count = r.u32(0);
      if (count < 1 || count > VHOST_USER_MAX_MEM_REGIONS) {
        r.fail(
          'VHOST_BAD_PAYLOAD',
          `${count} regions, expected 1 to ${VHOST_USER_MAX_MEM_REGIONS}`,
        );
      }
      r.payloadSize(size, VHOST_USER_MEM_TABLE_HEADER_SIZE + count * VHOST_USER_MEM_REGION_SIZE);
      // "SET_MEM_TABLE": one fd per region, in region order.
      r.fdCount(count);
      const regions: VhostUserMappedRegion[] = [];
      for (let i = 0; i < count; i++) {
        const at = VHOST_USER_MEM_TABLE_HEADER_SIZE + i * VHOST_USER_MEM_REGION_SIZE;
        regions.push({ ...r.region(at, `region ${i}`), fd: fds[i]! });
      }
      // "Memory access": a guest address must map to one region, so guest ranges are disjoint.
      for (let i = 0; i < count; i++) {
        const a = regions[i]!;
        for (let j = i + 1; j < count; j++) {
          const b = regions[j]!;
          if (
            a.guestPhysAddr < b.guestPhysAddr + b.size &&
            b.guestPhysAddr < a.guestPhysAddr + a.size
          ) {
            r.fail('VHOST_BAD_PAYLOAD', `regions ${i} and ${j} overlap in guest memory`);
          }
        }
      }
      return { ...base, kind: 'SET_MEM_TABLE', request, regions };
    }

    case R.ADD_MEM_REG:
    case R.REM_MEM_REG: {
      // "Single memory region description": padding u64, then one 32-byte region.
      r.payloadSize(size, VHOST_USER_SINGLE_MEM_REGION_SIZE);
      if (request === R.ADD_MEM_REG) {
        // "ADD_MEM_REG": exactly one fd, the memory to map.
        r.fdCount(1);
        const region = { ...r.region(8, 'region'), fd: fds[0]! };
        return { ...base, kind: 'ADD_MEM_REG', request, region };
      }
      // "REM_MEM_REG": no fd, though one may be tolerated (and must then be closed unused).
      if (fds.length > 1) r.fail('VHOST_BAD_FDS', `expects at most 1 fd, got ${fds.length}`);
      return { ...base, kind: 'REM_MEM_REG', request, region: r.region(8, 'region') };
    }

    case R.SET_VRING_NUM:
    case R.SET_VRING_BASE:
    case R.GET_VRING_BASE:
    case R.SET_VRING_ENABLE:
    case R.VRING_KICK: {
      // "A vring state description": index u32, num u32.
      r.payloadSize(size, VHOST_USER_VRING_STATE_SIZE);
      r.fdCount(0);
      const state = r.state();
      // "SET_VRING_ENABLE": num is 1 to enable and 0 to disable.
      if (request === R.SET_VRING_ENABLE && state.num > 1) {
        r.fail('VHOST_BAD_PAYLOAD', `enable value ${state.num}, expected 0 or 1`);
      }
      // "VRING_KICK": num is reserved and must be 0.
      if (request === R.VRING_KICK && state.num !== 0) {
        r.fail('VHOST_BAD_PAYLOAD', `reserved num field is ${state.num}`);
      }
      return {
        ...base,
        kind: requestName(request) as StateKind,
        request,
        state,
      } as VhostUserMessage;
    }

    case R.SET_VRING_ADDR: {
      // "A vring address description": index u32, flags u32, desc, used, avail, log (u64 each).
      r.payloadSize(size, VHOST_USER_VRING_ADDR_SIZE);
      r.fdCount(0);
      const ringFlags = r.u32(4);
      // "Migration": VHOST_VRING_F_LOG is the only ring flag.
      if ((ringFlags & ~VHOST_VRING_F_LOG) !== 0) {
        r.fail('VHOST_BAD_PAYLOAD', `undefined ring flags 0x${ringFlags.toString(16)}`);
      }
      const addr: VhostUserVringAddr = {
        index: r.u32(0),
        flags: ringFlags,
        descUserAddr: r.safe(8, 'descriptor table address'),
        usedUserAddr: r.safe(16, 'used ring address'),
        availUserAddr: r.safe(24, 'available ring address'),
        logGuestAddr: r.safe(32, 'log guest address'),
      };
      return { ...base, kind: 'SET_VRING_ADDR', request, addr };
    }

    case R.SET_VRING_KICK:
    case R.SET_VRING_CALL:
    case R.SET_VRING_ERR: {
      // "SET_VRING_KICK"/"CALL"/"ERR": a u64 of index and no-fd flag, plus the eventfd.
      r.payloadSize(size, VHOST_USER_U64_SIZE);
      const file = r.vringFile();
      return { ...base, kind: requestName(request) as FileKind, request, file } as VhostUserMessage;
    }

    case R.GET_CONFIG:
    case R.SET_CONFIG: {
      // "Virtio device config space": offset u32, size u32, flags u32, then size bytes.
      if (size < VHOST_USER_CONFIG_HEADER_SIZE) {
        r.fail('VHOST_BAD_SIZE', `payload of ${size} bytes has no config header`);
      }
      r.fdCount(0);
      const config = r.config(size);
      const kind = request === R.GET_CONFIG ? 'GET_CONFIG' : 'SET_CONFIG';
      return { ...base, kind, request, config } as VhostUserMessage;
    }

    case R.SET_LOG_BASE: {
      // "Log description": mmap size u64, mmap offset u64; the log memory comes as the fd.
      r.payloadSize(size, VHOST_USER_LOG_SIZE);
      r.fdCount(1);
      const log: VhostUserLog = {
        mmapSize: r.safe(0, 'log size'),
        mmapOffset: r.safe(8, 'log offset'),
      };
      r.range(log.mmapOffset, log.mmapSize, 'log');
      return { ...base, kind: 'SET_LOG_BASE', request, log, fd: fds[0]! };
    }

    case R.SET_LOG_FD:
    case R.SET_BACKEND_REQ_FD: {
      // "SET_LOG_FD"/"SET_BACKEND_REQ_FD": no payload, the fd is the whole message.
      r.payloadSize(size, 0);
      r.fdCount(1);
      const kind = request === R.SET_LOG_FD ? 'SET_LOG_FD' : 'SET_BACKEND_REQ_FD';
      return { ...base, kind, request, fd: fds[0]! } as VhostUserMessage;
    }

    case R.GET_INFLIGHT_FD:
    case R.SET_INFLIGHT_FD: {
      // "Inflight description": mmap size u64, mmap offset u64, num queues u16, queue size u16.
      r.payloadSize(size, VHOST_USER_INFLIGHT_SIZE);
      const set = request === R.SET_INFLIGHT_FD;
      // "SET_INFLIGHT_FD": the shared buffer comes back as the one fd; GET carries none.
      r.fdCount(set ? 1 : 0);
      const inflight = r.inflight();
      r.range(inflight.mmapOffset, inflight.mmapSize, 'inflight');
      if (set) return { ...base, kind: 'SET_INFLIGHT_FD', request, inflight, fd: fds[0]! };
      return { ...base, kind: 'GET_INFLIGHT_FD', request, inflight };
    }

    default: {
      const name = requestName(request);
      return r.fail(
        'VHOST_UNKNOWN_REQUEST',
        name === undefined ? 'is not a vhost-user request' : 'is not supported by virtq',
      );
    }
  }
}

type NoPayloadKind =
  | 'GET_FEATURES'
  | 'GET_PROTOCOL_FEATURES'
  | 'SET_OWNER'
  | 'RESET_OWNER'
  | 'RESET_DEVICE'
  | 'GET_QUEUE_NUM'
  | 'GET_MAX_MEM_SLOTS'
  | 'GET_STATUS';
type StateKind =
  | 'SET_VRING_NUM'
  | 'SET_VRING_BASE'
  | 'GET_VRING_BASE'
  | 'SET_VRING_ENABLE'
  | 'VRING_KICK';
type FileKind = 'SET_VRING_KICK' | 'SET_VRING_CALL' | 'SET_VRING_ERR';
