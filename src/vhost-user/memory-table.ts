/**
 * The front-end's memory table as a vhost-user back-end holds it: each region's descriptor
 * mapped into this process, a {@link GuestMemory} over the mappings (guest-physical
 * addresses), and the front-end's user addresses of the same regions, which SET_VRING_ADDR
 * speaks in (QEMU docs/interop/vhost-user.rst, "Memory access").
 */
import { fstatSync } from 'node:fs';
import { VirtqError } from '../errors.js';
import { GuestMemory } from '../memory/guest-memory.js';
import type { VhostUserMappedRegion, VhostUserMemoryRegion } from './codec.js';
import type { VhostUserNative } from './native.js';

/** A region of the table, mapped. */
export interface MappedMemoryRegion extends VhostUserMemoryRegion {
  /** The mapping; the region's first byte is at `offset`. */
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
}

/** Why a region could not be added; the back-end answers the front-end with a failure. */
export class MemoryTableError extends VirtqError {
  override readonly name: string = 'MemoryTableError';
  declare readonly code: 'VHOST_BAD_MEMORY_TABLE';

  constructor(message: string) {
    super('VHOST_BAD_MEMORY_TABLE', message);
  }
}

/**
 * An immutable set of mapped regions. Adding or removing a region gives a new table; the
 * mappings themselves are shared between tables and unmapped when the last view over them is
 * garbage collected (see {@link VhostUserNative.mmap}).
 */
export class MemoryTable {
  readonly regions: readonly MappedMemoryRegion[];
  /** Guest-physical memory over the regions, or null when the table is empty. */
  readonly memory: GuestMemory | null;

  /** Per region: how many times the front-end added it (see {@link add}). */
  private readonly refs: readonly number[];

  private constructor(regions: readonly MappedMemoryRegion[], refs?: readonly number[]) {
    this.regions = regions;
    this.refs = refs ?? regions.map(() => 1);
    this.memory =
      regions.length === 0
        ? null
        : new GuestMemory(
            regions.map((r) => ({
              base: r.guestPhysAddr,
              length: r.size,
              buffer: r.buffer,
              offset: r.offset,
            })),
          );
  }

  static readonly empty = new MemoryTable([]);

  /**
   * Maps `regions` (each from its own fd) into a new table. The fds are not closed here. Throws
   * {@link MemoryTableError} when a region cannot be mapped safely.
   */
  static map(native: VhostUserNative, regions: readonly VhostUserMappedRegion[]): MemoryTable {
    return new MemoryTable(regions.map((r) => mapRegion(native, r)));
  }

  /** This table plus one region (ADD_MEM_REG), which must not overlap the others. */
  add(native: VhostUserNative, region: VhostUserMappedRegion, maxSlots: number): MemoryTable {
    // QEMU 7.2 sends ADD_MEM_REG and REM_MEM_REG from each vhost device of the connection: a
    // multiqueue net front-end has one per queue pair. The same region added again is counted,
    // and stays until it was removed as many times.
    const same = this.regions.findIndex((r) => sameRegion(r, region));
    if (same >= 0) {
      return new MemoryTable(
        this.regions,
        this.refs.map((n, j) => (j === same ? n + 1 : n)),
      );
    }
    if (this.regions.length >= maxSlots) {
      throw new MemoryTableError(`all ${maxSlots} memory slots are in use`);
    }
    for (const r of this.regions) {
      // "Memory access": a guest address belongs to one region only.
      if (
        region.guestPhysAddr < r.guestPhysAddr + r.size &&
        r.guestPhysAddr < region.guestPhysAddr + region.size
      ) {
        throw new MemoryTableError(
          `region at guest 0x${region.guestPhysAddr.toString(16)} overlaps one at 0x${r.guestPhysAddr.toString(16)}`,
        );
      }
    }
    return new MemoryTable([...this.regions, mapRegion(native, region)], [...this.refs, 1]);
  }

  /** This table without the region matching `region` (REM_MEM_REG). */
  remove(region: VhostUserMemoryRegion): MemoryTable {
    const i = this.regions.findIndex(
      (r) =>
        r.guestPhysAddr === region.guestPhysAddr &&
        r.size === region.size &&
        r.userAddr === region.userAddr,
    );
    if (i < 0) {
      throw new MemoryTableError(
        `no region at guest 0x${region.guestPhysAddr.toString(16)} of ${region.size} bytes`,
      );
    }
    if (this.refs[i]! > 1) {
      return new MemoryTable(
        this.regions,
        this.refs.map((n, j) => (j === i ? n - 1 : n)),
      );
    }
    return new MemoryTable(
      this.regions.filter((_, j) => j !== i),
      this.refs.filter((_, j) => j !== i),
    );
  }

  /**
   * The guest-physical address of front-end user address `userAddr`, when all of
   * [userAddr, userAddr + len) lies in one region; otherwise null.
   */
  userToGuest(userAddr: number, len: number): number | null {
    for (const r of this.regions) {
      if (userAddr >= r.userAddr && userAddr - r.userAddr + len <= r.size) {
        return r.guestPhysAddr + (userAddr - r.userAddr);
      }
    }
    return null;
  }
}

function sameRegion(a: VhostUserMemoryRegion, b: VhostUserMemoryRegion): boolean {
  return (
    a.guestPhysAddr === b.guestPhysAddr &&
    a.size === b.size &&
    a.userAddr === b.userAddr &&
    a.mmapOffset === b.mmapOffset
  );
}

function mapRegion(native: VhostUserNative, r: VhostUserMappedRegion): MappedMemoryRegion {
  // GuestRegion needs 8-byte alignment of the base and of the offset in the mapping.
  if (r.guestPhysAddr % 8 !== 0 || r.mmapOffset % 8 !== 0) {
    throw new MemoryTableError(
      `region at guest 0x${r.guestPhysAddr.toString(16)} (mmap offset 0x${r.mmapOffset.toString(16)}) is not 8-byte aligned`,
    );
  }
  const { buffer, offset } = mapShared(native, r.fd, r.mmapOffset, r.size, 'region');
  return {
    guestPhysAddr: r.guestPhysAddr,
    size: r.size,
    userAddr: r.userAddr,
    mmapOffset: r.mmapOffset,
    buffer,
    offset,
  };
}

/** A shared mapping of part of a file: `size` bytes from `offset` of `buffer`. */
export interface SharedMapping {
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
}

/**
 * Maps bytes [fileOffset, fileOffset + size) of the file `fd` read-write and shared (a memory
 * region, the dirty log, the inflight buffer). The file must hold every byte: touching a page
 * past its end would kill the process with SIGBUS. Throws {@link MemoryTableError} naming
 * `what`.
 */
export function mapShared(
  native: VhostUserNative,
  fd: number,
  fileOffset: number,
  size: number,
  what: string,
): SharedMapping {
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw new MemoryTableError(`${what} of ${size} bytes cannot be mapped`);
  }
  let fileSize: number;
  try {
    fileSize = fstatSync(fd).size;
  } catch (e) {
    throw new MemoryTableError(`fstat of the ${what}'s fd failed: ${(e as Error).message}`);
  }
  if (fileOffset + size > fileSize) {
    throw new MemoryTableError(
      `${what} needs bytes [0x${fileOffset.toString(16)}, +0x${size.toString(16)}) of a ${fileSize}-byte file`,
    );
  }
  // mmap wants a page-aligned file offset: map from the page holding the first byte.
  const page = native.constants.PAGE_SIZE;
  const mapStart = fileOffset - (fileOffset % page);
  const delta = fileOffset - mapStart;
  try {
    const buffer = native.mmap(
      fd,
      size + delta,
      mapStart,
      native.constants.PROT_READ | native.constants.PROT_WRITE,
    );
    return { buffer, offset: delta };
  } catch (e) {
    throw new MemoryTableError(`mmap of the ${what} failed: ${(e as Error).message}`);
  }
}
