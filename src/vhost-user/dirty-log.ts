/**
 * The dirty log of live migration (QEMU docs/interop/vhost-user.rst, "Migration"): a bitmap
 * the front-end shares with SET_LOG_BASE, one bit per 4 KiB guest-physical page, bit
 * `page % 8` of byte `page / 8`, which the back-end sets for every page it writes while the
 * front-end copies guest memory to the destination.
 *
 * virtq does not log on every store. {@link GuestMemory} already records each page the device
 * writes in its own per-region bitmaps (the used ring included); {@link DirtyLog.absorb} moves
 * those bits into the shared log, clearing them. The back-end absorbs after each batch of
 * ring processing, before each used-buffer notification and when a ring stops, so a page is
 * in the log before the guest can see the buffer completed, and every page is in it before
 * GET_VRING_BASE returns (after which the front-end does its final pass).
 */
import type { GuestMemory } from '../memory/guest-memory.js';
import { DIRTY_PAGE_SIZE } from '../memory/region.js';
import { VHOST_LOG_PAGE } from './protocol.js';

// The two page sizes must agree for GuestMemory's bits to map one-to-one onto the log's.
if (DIRTY_PAGE_SIZE !== VHOST_LOG_PAGE) throw new Error('dirty page size mismatch');

/** A shared dirty-page bitmap, as SET_LOG_BASE describes it. */
export class DirtyLog {
  /** The log's bytes (a view of the shared mapping). */
  readonly bytes: Uint8Array;
  /** Pages the log covers: `8 * bytes.length`. */
  readonly pages: number;
  /** Pages that could not be logged because they lie beyond the log's end. */
  droppedPages = 0;

  constructor(buffer: SharedArrayBuffer, offset: number, size: number) {
    this.bytes = new Uint8Array(buffer, offset, size);
    this.pages = size * 8;
  }

  /** Sets the bit of guest page `page`; false when the log does not reach it. */
  markPage(page: number): boolean {
    if (page >= this.pages) {
      this.droppedPages++;
      return false;
    }
    // "Use atomic operations, as the log may be concurrently manipulated."
    Atomics.or(this.bytes, page >>> 3, 1 << (page & 7));
    return true;
  }

  /** Sets the bits of every page of guest range [addr, addr + len). */
  markRange(addr: number, len: number): void {
    if (len <= 0) return;
    const last = Math.floor((addr + len - 1) / VHOST_LOG_PAGE);
    for (let p = Math.floor(addr / VHOST_LOG_PAGE); p <= last; p++) this.markPage(p);
  }

  /**
   * Moves every page `memory` has recorded as written into the log and clears the record.
   * Returns the number of pages logged (a page beyond the log's end counts in
   * {@link droppedPages} instead).
   */
  absorb(memory: GuestMemory): number {
    let moved = 0;
    for (const r of memory.regions) {
      const words = r.dirty;
      for (let w = 0; w < words.length; w++) {
        // Cheap test first: most words are clear.
        if (Atomics.load(words, w) === 0) continue;
        let bits = Atomics.exchange(words, w, 0);
        const base = r.firstPage + w * 32;
        while (bits !== 0) {
          const low = bits & -bits;
          if (this.markPage(base + 31 - Math.clz32(low))) moved++;
          bits ^= low;
        }
      }
    }
    return moved;
  }
}

/** Where a log lives: a slice of a shared mapping (SET_LOG_BASE). */
export interface LogArea {
  readonly buffer: SharedArrayBuffer;
  readonly offset: number;
  readonly size: number;
}

/** Sends the front-end's log eventfd its signal (SET_LOG_FD). */
export interface LogSignal {
  eventfdWrite(fd: number, value: number): void;
}

/**
 * Migration logging as both data planes run it (the back-end's thread and each ring worker):
 * the current log and its eventfd, and the flush that moves the pages a device wrote into the
 * log and signals the eventfd when it moved any. One place, so the two cannot drift apart.
 */
export class MigrationLog {
  private log: DirtyLog | null = null;
  private logArea: LogArea | null = null;
  private logFd: number | null = null;
  /** Pages of earlier logs that lay beyond their end (see {@link dropped}). */
  private droppedBefore = 0;
  /** The current log already warned that it is too short. */
  private warnedShort = false;

  constructor(
    private readonly signal: LogSignal,
    private readonly warn: (message: string, detail: Record<string, unknown>) => void,
  ) {}

  /** The log's area, or null when there is none. */
  get area(): LogArea | null {
    return this.logArea;
  }

  /** The log eventfd, or null. */
  get fd(): number | null {
    return this.logFd;
  }

  /**
   * Pages the device wrote that no log could hold, since this was made: they lay beyond the
   * end of the log the front-end gave (SET_LOG_BASE smaller than the memory table). The first
   * of each log is also warned about.
   */
  get dropped(): number {
    return this.droppedBefore + (this.log?.droppedPages ?? 0);
  }

  /** True when there is a log to write into. */
  get present(): boolean {
    return this.log !== null;
  }

  /**
   * Replaces the log and its eventfd (flush into the old one first). Returns the eventfd
   * replaced, for the caller to close once nothing else uses it (null when unchanged).
   */
  replace(area: LogArea | null, fd: number | null, memory: GuestMemory | null): number | null {
    this.flush(memory);
    const old = this.logFd;
    this.logArea = area;
    this.logFd = fd;
    this.droppedBefore += this.log?.droppedPages ?? 0;
    this.log = area === null ? null : new DirtyLog(area.buffer, area.offset, area.size);
    this.warnedShort = false;
    return old !== null && old !== fd ? old : null;
  }

  /**
   * Moves the pages `memory` recorded into the log, marks `extra` ranges ([address, bytes])
   * when any moved, and signals the eventfd. Returns the number of pages moved (0: nothing to
   * do, no log, or no memory).
   */
  flush(memory: GuestMemory | null, extra?: () => Iterable<readonly [number, number]>): number {
    const log = this.log;
    if (log === null || memory === null) return 0;
    const droppedBefore = log.droppedPages;
    const moved = log.absorb(memory);
    if (log.droppedPages !== droppedBefore && !this.warnedShort) {
      // QEMU may send a memory table larger than the log for a moment while it grows the log,
      // so this is not refused; a page the device wrote there is not in the log, though.
      this.warnedShort = true;
      this.warn('dirty log too short for guest memory: written pages beyond it are not logged', {
        logPages: log.pages,
        dropped: log.droppedPages,
      });
    }
    if (moved === 0) return 0;
    if (extra !== undefined) for (const [addr, bytes] of extra()) log.markRange(addr, bytes);
    if (this.logFd !== null) {
      try {
        this.signal.eventfdWrite(this.logFd, 1);
      } catch (e) {
        this.warn('writing the log fd failed', { error: (e as Error).message });
      }
    }
    return moved;
  }
}
