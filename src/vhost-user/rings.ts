/**
 * Ring lifecycle on the back-end's side: each ring's state as the front-end sets it (one
 * method per ring request: SET_VRING_NUM, _ADDR, _BASE, _KICK, _CALL, _ERR, _ENABLE and
 * GET_VRING_BASE), when a ring starts (started by a kick fd, enabled, fully configured:
 * validated by building and initialising a real queue over the guest's memory) and stops, and
 * the device's activation and reset around them. Started rings are served by the data plane
 * (data-plane.ts), which this module creates and drives.
 */
import type { VirtioDevice } from '../devices/device.js';
import { hasFeature } from '../devices/device.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../queue/constants.js';
import { type AnyQueue, createQueue } from '../queue/factory.js';
import type { Logger } from '../queue/logger.js';
import type { PackedQueue } from '../queue/packed/queue.js';
import { TrackedPackedQueue } from '../queue/packed/tracked.js';
import { usedRingBytes } from '../queue/split/layout.js';
import { TrackedSplitQueue } from '../queue/split/tracked.js';
import { encodeVringStateReply, VHOST_VRING_F_LOG, type VhostUserMessage } from './codec.js';
import type { DataPlane, PlaneCounters, PlaneHost, RingTracking } from './data-plane.js';
import type { InflightBuffer } from './inflight.js';
import type { MemoryTable } from './memory-table.js';
import type { FdWatcher, VhostUserNative } from './native.js';
import { RequestFailure } from './request-failure.js';
import { freshRing, PACKED_WRAP_BIT, type RingState, servedQueueSizes } from './ring-state.js';
import type { RingLog } from './ring-worker-protocol.js';

type Msg<K extends VhostUserMessage['kind']> = Extract<VhostUserMessage, { kind: K }>;

/** What the rings need of the rest of the back-end (negotiated state, the log, fd ownership). */
export interface RingsHost {
  readonly device: VirtioDevice;
  readonly native: VhostUserNative;
  readonly logger: Logger;
  readonly counters: PlaneCounters;
  /** Every negotiated feature bit, vhost-user's own included. */
  features(): bigint;
  /** The device's negotiated features (without vhost-user's own bits). */
  deviceFeatures(): bigint;
  /** VHOST_USER_F_PROTOCOL_FEATURES was negotiated (rings then need SET_VRING_ENABLE). */
  protocolAcked(): boolean;
  table(): MemoryTable;
  /** The inflight buffer rings record in, or null (none, or not usable with these features). */
  inflightBuffer(): InflightBuffer | null;
  /** The front-end gave an inflight buffer at all. */
  hasInflight(): boolean;
  ringLog(): RingLog;
  flushLog(): void;
  closeFds(fds: readonly number[]): void;
  /** Keeps an fd of the message being handled (it is not closed after the message). */
  keep(fd: number): void;
}

/** Every ring of the device, and the data plane that serves the started ones. */
export class Rings {
  private rings: RingState[];
  readonly plane: DataPlane;

  constructor(
    private readonly host: RingsHost,
    makePlane: (host: PlaneHost) => DataPlane,
  ) {
    this.rings = servedQueueSizes(host.device).map(freshRing);
    this.plane = makePlane({
      device: host.device,
      native: host.native,
      logger: host.logger,
      counters: host.counters,
      ring: (index) => this.rings[index],
      rings: () => this.rings,
      flushLog: () => host.flushLog(),
      closeFds: (fds) => host.closeFds(fds),
    });
  }

  /** Every ring's state. */
  get all(): readonly RingState[] {
    return this.rings;
  }

  private get device(): VirtioDevice {
    return this.host.device;
  }
  private get native(): VhostUserNative {
    return this.host.native;
  }
  private get logger(): Logger {
    return this.host.logger;
  }
  private get table(): MemoryTable {
    return this.host.table();
  }
  private get packed(): boolean {
    return hasFeature(this.host.features(), VIRTIO_F_RING_PACKED);
  }
  private get negotiatedFeatures(): bigint {
    return this.host.deviceFeatures();
  }

  /** Ring `index`, or a refusal when the device has no such ring ("Ring index"). */
  checked(index: number): RingState {
    const r = this.rings[index];
    if (r === undefined) {
      throw new RequestFailure(`ring ${index} does not exist (${this.rings.length} rings)`);
    }
    return r;
  }

  /** SET_VRING_NUM: the ring size, within the device's maximum. */
  setNum(msg: Msg<'SET_VRING_NUM'>): null {
    const ring = this.checked(msg.state.index);
    const max = this.device.queueMaxSizes[msg.state.index]!;
    if (msg.state.num < 1 || msg.state.num > max) {
      throw new RequestFailure(`ring size ${msg.state.num} is not in 1..${max}`);
    }
    if (ring.running) throw new RequestFailure('the ring is running');
    ring.num = msg.state.num;
    return null;
  }

  /** SET_VRING_ADDR: the ring's addresses (front-end user addresses) and its used-ring log. */
  setAddr(msg: Msg<'SET_VRING_ADDR'>): null {
    const a = msg.addr;
    const ring = this.checked(a.index);
    const user = { desc: a.descUserAddr, avail: a.availUserAddr, used: a.usedUserAddr };
    const old = ring.userAddr;
    const moved =
      old === null || old.desc !== user.desc || old.avail !== user.avail || old.used !== user.used;
    // QEMU sends SET_VRING_ADDR to running rings when migration starts and ends, to turn
    // VHOST_VRING_F_LOG on and off: only the log fields change then. A running ring whose
    // addresses really move is stopped and started again over the new ones.
    const restart = moved && ring.running;
    if (restart) this.stopRing(a.index);
    if (moved) {
      this.translate(ring, user);
      ring.userAddr = user;
    }
    ring.logUsed = (a.flags & VHOST_VRING_F_LOG) !== 0;
    ring.logGuestAddr = a.logGuestAddr;
    if (restart) this.tryStart(a.index);
    return null;
  }

  /** SET_VRING_BASE: where a stopped ring resumes. */
  setBase(msg: Msg<'SET_VRING_BASE'>): null {
    const ring = this.checked(msg.state.index);
    if (ring.running) throw new RequestFailure('the ring is running');
    // "SET_VRING_BASE": a split ring's next available index is 16 bits.
    if (!this.packed && msg.state.num > 0xffff) {
      throw new RequestFailure(`split ring base ${msg.state.num} exceeds 0xffff`);
    }
    ring.base = msg.state.num;
    ring.lost = false;
    return null;
  }

  /** GET_VRING_BASE: stops the ring and answers where it stopped. */
  getBase(msg: Msg<'GET_VRING_BASE'>): Uint8Array {
    const index = msg.state.index;
    const ring = this.checked(index);
    // "GET_VRING_BASE": the ring stops; the answer is where the device would read next.
    this.stopRing(index);
    if (ring.lost) {
      // No answer is better than a wrong one: a stale base would make the front-end replay
      // requests the guest saw completed. A closed connection is a back-end crash to it.
      throw new RequestFailure(`ring ${index} was lost with its worker; its base is unknown`);
    }
    this.stopKick(ring);
    ring.started = false;
    this.plane.stopped(index);
    // The front-end's last pass over the dirty log comes after this answer.
    this.host.flushLog();
    this.resetDeviceIfIdle();
    return encodeVringStateReply(msg.request, { index, num: ring.base });
  }

  /** SET_VRING_KICK: the kick eventfd, which starts the ring. */
  setKick(msg: Msg<'SET_VRING_KICK'>): null {
    const { index, fd } = msg.file;
    const ring = this.checked(index);
    // A running ring moves to the new eventfd: stopped here, started again below.
    if (ring.running) this.stopRing(index);
    this.stopKick(ring);
    if (fd !== null) {
      let watcher: FdWatcher;
      try {
        watcher = this.native.watch(fd, this.native.constants.POLL_READABLE, (err) =>
          this.kicked(index, err),
        );
      } catch (e) {
        // A regular file, a directory, /dev/null...: nothing to wait on.
        throw new RequestFailure(
          `ring ${index}: the kick fd cannot be polled: ${(e as Error).message}`,
        );
      }
      this.host.keep(fd);
      ring.kickFd = fd;
      // A plane that waits on kicks itself (ring workers) takes the eventfd instead.
      if (this.plane.waitsOnKicks) watcher.stop();
      else ring.kickWatcher = watcher;
    } else {
      this.logger.warn('vhost-user: ring without kick fd; it is served only when started', {
        index,
      });
    }
    // "Starting and stopping rings": a kick fd starts the ring.
    ring.started = true;
    this.tryStart(index);
    return null;
  }

  /** SET_VRING_CALL: the call eventfd (replaced under a running ring when QEMU masks interrupts). */
  setCall(msg: Msg<'SET_VRING_CALL'>): null {
    const ring = this.checked(msg.file.index);
    // QEMU replaces call eventfds of running rings (interrupt masking): the worker must
    // have let go of the old one before it is closed.
    if (ring.running) this.plane.callChanged(msg.file.index, msg.file.fd);
    if (ring.callFd !== null) this.host.closeFds([ring.callFd]);
    ring.callFd = msg.file.fd;
    if (msg.file.fd !== null) this.host.keep(msg.file.fd);
    return null;
  }

  /** SET_VRING_ERR: the error eventfd. */
  setErr(msg: Msg<'SET_VRING_ERR'>): null {
    const ring = this.checked(msg.file.index);
    // A running ring's worker moves to the new eventfd: stopped here, started again below.
    const restart = ring.running && this.plane.restartsForErrFd;
    if (restart) this.stopRing(msg.file.index);
    if (ring.errFd !== null) this.host.closeFds([ring.errFd]);
    ring.errFd = msg.file.fd;
    if (msg.file.fd !== null) this.host.keep(msg.file.fd);
    if (restart) this.tryStart(msg.file.index);
    return null;
  }

  /** SET_VRING_ENABLE: enables or disables the ring. */
  setEnable(msg: Msg<'SET_VRING_ENABLE'>): null {
    const index = msg.state.index;
    const ring = this.checked(index);
    ring.enabled = msg.state.num === 1;
    if (ring.enabled) this.tryStart(index);
    else if (ring.running) {
      this.stopRing(index);
    }
    return null;
  }

  /** Translates a ring's user addresses through the table (or throws). */
  translate(ring: RingState, user: { desc: number; avail: number; used: number }): void {
    const desc = this.table.userToGuest(user.desc, 1);
    const avail = this.table.userToGuest(user.avail, 1);
    const used = this.table.userToGuest(user.used, 1);
    // "SET_VRING_ADDR": the addresses are front-end virtual addresses inside the memory table.
    if (desc === null || avail === null || used === null) {
      throw new RequestFailure('a ring address lies outside the memory table');
    }
    ring.desc = desc;
    ring.avail = avail;
    ring.used = used;
  }

  /** Starts ring `index` if it is started, enabled and fully configured. */
  tryStart(index: number): void {
    const ring = this.rings[index]!;
    const protocolAcked = this.host.protocolAcked();
    // "Ring states": without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled when started.
    const enabled = protocolAcked ? ring.enabled : true;
    if (ring.running || !ring.started || !enabled) return;
    if (ring.lost) {
      throw new RequestFailure(`ring ${index} was lost with its worker; SET_VRING_BASE first`);
    }
    const memory = this.table.memory;
    if (memory === null || ring.userAddr === null || ring.num === 0) {
      throw new RequestFailure(`ring ${index} started before its memory, size or addresses`);
    }
    // Through the table of now: it may have changed since SET_VRING_ADDR while the ring waited
    // (SET_MEM_TABLE, ADD/REM_MEM_REG), and the same front-end addresses then name other guest
    // memory, or none (refused here, when the ring starts).
    this.translate(ring, ring.userAddr);
    const packed = this.packed;
    const f = this.negotiatedFeatures;
    // The queue is built and checked here in both modes: a ring the front-end got wrong is
    // refused to it, never found out on a worker.
    const buffer = this.host.inflightBuffer();
    if (buffer === null && this.host.hasInflight()) {
      this.logger.warn('vhost-user: IN_ORDER ring served without crash recovery', { index });
    }
    const max = this.device.queueMaxSizes[index]!;
    const options = { logger: this.logger };
    // Only a tracked queue pays for the inflight bookkeeping.
    let tracking: RingTracking | null = null;
    if (buffer !== null && packed) {
      const region = buffer.packed(index);
      if (region !== null) {
        tracking = { format: 'packed', queue: new TrackedPackedQueue(max, options), region };
      }
    } else if (buffer !== null) {
      const region = buffer.split(index);
      if (region !== null) {
        tracking = { format: 'split', queue: new TrackedSplitQueue(max, options), region };
      }
    }
    const q: AnyQueue = tracking?.queue ?? createQueue(packed ? 'packed' : 'split', max, options);
    q.size = ring.num;
    q.descTableAddress = ring.desc;
    q.availRingAddress = ring.avail;
    q.usedRingAddress = ring.used;
    q.usesNotifSuppression = hasFeature(f, VIRTIO_F_EVENT_IDX);
    q.indirectDesc = hasFeature(f, VIRTIO_F_INDIRECT_DESC);
    q.ready = true;
    // Checks size, alignment and that each ring lies in one region (VIRTIO 1.2 §2.7, §2.8).
    q.initialize(memory);
    if (q.format === 'split') {
      // The used index lives in guest memory and survives a stop of the back-end.
      q.nextUsed = q.usedRingIdxGet();
      q.nextAvail = ring.base;
    } else {
      this.placePacked(index, q, ring.base);
    }
    if (tracking !== null && q.activeSize > tracking.region.descNum) {
      // Regions are sized for the device's largest ring; only a buffer from elsewhere (another
      // back-end's, handed back by the front-end) can be smaller. Served, without recovery.
      this.logger.warn('vhost-user: ring larger than its inflight region; served untracked', {
        index,
        size: q.activeSize,
        descNum: tracking.region.descNum,
      });
      tracking = null;
    }
    ring.running = true;
    this.plane.start({
      index,
      queue: q,
      tracking,
      features: f,
      memory,
      table: this.table,
      ring,
      log: this.host.ringLog(),
    });
  }

  /**
   * A new packed queue continues where SET_VRING_BASE says: bits 0-14 the next available slot,
   * bit 15 its wrap counter, bits 16-31 the same for the next used slot (QEMU sends both; a
   * front-end that sends only the low half means used = available).
   */
  private placePacked(index: number, q: PackedQueue, base: number): void {
    const avail = base & 0xffff;
    const used = base > 0xffff ? base >>> 16 : avail;
    if (avail === PACKED_WRAP_BIT && used === PACKED_WRAP_BIT) return;
    const size = q.activeSize;
    if ((avail & 0x7fff) >= size || (used & 0x7fff) >= size) {
      throw new RequestFailure(
        `packed ring ${index}: base 0x${base.toString(16)} is outside a ring of ${size}`,
      );
    }
    // Chains between the used and the available position were taken but never completed:
    // their descriptors are still in the ring (the device writes used entries at the used
    // position), and this device completes in order, so they are served again from there.
    if (avail !== used) {
      this.logger.warn('vhost-user: packed ring resumes at its used position', {
        index,
        avail,
        used,
      });
    }
    q.restore(
      {
        ...q.save(),
        nextAvail: used & 0x7fff,
        availWrap: (used & 0x8000) !== 0,
        nextUsed: used & 0x7fff,
        usedWrap: (used & 0x8000) !== 0,
        inFlight: [],
        numAdded: 0,
        pendingUsed: 0,
      },
      this.table.memory,
    );
  }

  /** Stops processing ring `index`, remembering where it stopped. */
  stopRing(index: number): void {
    const ring = this.rings[index]!;
    if (!ring.running) return;
    // "Migration": the used ring is logged at log_guest_addr while the ring still counts as
    // running.
    this.host.flushLog();
    ring.running = false;
    const base = this.plane.stop(index);
    if (base === null) ring.lost = true;
    else ring.base = base;
  }

  private stopKick(ring: RingState): void {
    ring.kickWatcher?.stop();
    ring.kickWatcher = null;
    if (ring.kickFd !== null) this.host.closeFds([ring.kickFd]);
    ring.kickFd = null;
  }

  /** Resets the device once no ring runs or waits to resume. */
  resetDeviceIfIdle(): void {
    if (!this.plane.deviceActive) return;
    if (this.rings.some((r) => r.started)) return;
    this.plane.resetDevice();
  }

  /** Forgets every ring and resets the device (disconnect, RESET_OWNER, RESET_DEVICE). */
  resetAll(): void {
    // Workers let go of the rings' eventfds before they are closed.
    for (let i = 0; i < this.rings.length; i++) this.stopRing(i);
    for (const ring of this.rings) {
      this.stopKick(ring);
      if (ring.callFd !== null) this.host.closeFds([ring.callFd]);
      if (ring.errFd !== null) this.host.closeFds([ring.errFd]);
    }
    this.rings = servedQueueSizes(this.device).map(freshRing);
    this.plane.resetDevice();
  }

  kicked(index: number, error: Error | null): void {
    const ring = this.rings[index];
    if (ring === undefined || ring.kickFd === null) return;
    if (error !== null) {
      this.logger.warn('vhost-user: polling a kick fd failed', { index, error: error.message });
      this.stopKick(ring);
      return;
    }
    if (!this.plane.kicked(index, ring.kickFd)) this.stopKick(ring);
  }

  /**
   * The memory table changed: running rings move to the new mappings (stopped and started; a
   * ring starts over its front-end addresses as the table of the moment translates them).
   */
  tableChanged(): void {
    const memory = this.table.memory;
    // QEMU updates the table on memory hot-plug.
    if (memory !== null) this.plane.memoryChanged(memory);
    for (let i = 0; i < this.rings.length; i++) {
      const ring = this.rings[i]!;
      if (!ring.running) continue;
      this.stopRing(i);
      try {
        this.tryStart(i);
      } catch (e) {
        this.logger.warn('vhost-user: ring stopped by a memory table change', {
          index: i,
          error: (e as Error).message,
        });
      }
    }
  }

  /** Logging was switched or the log moved: running rings follow. */
  logChanged(): void {
    for (let i = 0; i < this.rings.length; i++) {
      if (this.rings[i]!.running) this.plane.logChanged(i, this.host.ringLog());
    }
  }

  /**
   * "Migration": used-ring writes are logged at log_guest_addr. QEMU passes the ring's own
   * guest address, which the flush has covered; a front-end that passes another gets the whole
   * ring marked there too.
   */
  *usedRingsLoggedElsewhere(): Iterable<readonly [number, number]> {
    for (const ring of this.rings) {
      if (ring.running && ring.logUsed && ring.logGuestAddr !== ring.used) {
        yield [ring.logGuestAddr, usedRingBytes(ring.num)];
      }
    }
  }
}
