/**
 * A vhost-user back-end: serves one {@link VirtioDevice} to one front-end (QEMU, DPDK's
 * virtio-user, a test) at a time over a Unix socket (QEMU docs/interop/vhost-user.rst).
 *
 * The front-end drives everything: feature negotiation, the memory table (mapped here from the
 * fds it sends), each ring's size, addresses, base index and eventfds. A ring runs when it is
 * started (SET_VRING_KICK) and enabled (SET_VRING_ENABLE 1, or at once without
 * VHOST_USER_F_PROTOCOL_FEATURES) and stops at GET_VRING_BASE. The device is activated when the
 * first ring starts and reset when the last one stops or the front-end goes away.
 *
 * Every message is validated by the codec and then against the device and the memory table; a
 * violation is answered with a failure (REPLY_ACK) where the front-end asked for one, and the
 * fds of the message are closed. Nothing a front-end sends throws out of this class: a
 * message that loses the framing, or a failed request whose reply the front-end waits for,
 * closes that connection and the back-end waits for the next front-end.
 */
import type { VirtioDevice } from '../devices/device.js';
import { featureBit, hasFeature } from '../devices/device.js';
import { isVirtqError, VhostUserError } from '../errors.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../queue/constants.js';
import { createQueue } from '../queue/factory.js';
import { consoleLogger, type Logger } from '../queue/logger.js';
import type { PackedQueue } from '../queue/packed/queue.js';
import { TrackedPackedQueue } from '../queue/packed/tracked.js';
import { usedRingBytes } from '../queue/split/layout.js';
import { TrackedSplitQueue } from '../queue/split/tracked.js';
import {
  decodeMessage,
  encodeAckReply,
  encodeConfigErrorReply,
  encodeConfigReply,
  encodeU64Reply,
  encodeVringStateReply,
  protocolFeatureMask,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_MAX_CONFIG_SIZE,
  VHOST_VRING_F_LOG,
  VhostUserFlags,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from './codec.js';
import { closeFds, SocketListener, VhostUserConnection } from './connection.js';
import { type DataPlane, InProcessPlane, type PlaneHost } from './data-plane.js';
import { MigrationLog } from './dirty-log.js';
import type { InflightBuffer, SplitInflight } from './inflight.js';
import { adoptInflightBuffer, type InflightContext, newInflightBuffer } from './inflight-fd.js';
import { MemoryTable, MemoryTableError, mapShared } from './memory-table.js';
import { type FdWatcher, loadNative, type VhostUserNative } from './native.js';
import type { PackedInflight } from './packed-inflight.js';
import { RequestFailure } from './request-failure.js';
import { freshRing, PACKED_WRAP_BIT, type RingState } from './ring-state.js';
import { DEFAULT_ACK_TIMEOUT_MS, type RingLog, type SharedArea } from './ring-worker-protocol.js';
import { WorkerPlane } from './worker-plane.js';

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
  /** Called with every decoded request before it is handled (for tracing). */
  onMessage?: (message: VhostUserMessage) => void;
  /** Called when a front-end connects. */
  onConnect?: () => void;
  /** Called when the front-end's connection ends, with the reason. */
  onDisconnect?: (reason: string) => void;
  /**
   * Serve each ring on its own worker thread (see ring-worker-protocol.ts), on a device the worker
   * builds from `spec` (a DeviceWorkerSpec of virtq/node). The device given to the constructor
   * then only answers feature negotiation and configuration accesses; it must be built from
   * the same spec. `quiet` drops the workers' warnings.
   */
  /**
   * Protocol features to offer: a subset of {@link VHOST_USER_BACKEND_PROTOCOL_FEATURES} (the
   * default, all of them). Leaving out CONFIGURE_MEM_SLOTS makes QEMU send the whole memory
   * table on every start, which QEMU 7.2's vhost-user-rng needs after a back-end restart.
   */
  protocolFeatures?: bigint;
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
  /** Chains a restarted ring found in its inflight buffer and served again (INFLIGHT_SHMFD). */
  resubmitted: number;
}

/** Requests whose reply the front-end always waits for (so a failure cannot stay silent). */
const REPLYING_REQUESTS: ReadonlySet<number> = new Set([
  VhostUserRequest.GET_FEATURES,
  VhostUserRequest.GET_PROTOCOL_FEATURES,
  VhostUserRequest.GET_QUEUE_NUM,
  VhostUserRequest.GET_VRING_BASE,
  VhostUserRequest.GET_CONFIG,
  VhostUserRequest.GET_MAX_MEM_SLOTS,
  VhostUserRequest.GET_INFLIGHT_FD,
  VhostUserRequest.GET_STATUS,
  VhostUserRequest.SET_LOG_BASE,
]);

const PROTOCOL_FEATURES_BIT = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
const LOG_ALL_BIT = featureBit(VHOST_F_LOG_ALL);
/** Feature bits that belong to vhost-user itself, not to the device. */
const VHOST_FEATURE_BITS = PROTOCOL_FEATURES_BIT | LOG_ALL_BIT;

/** Serves one virtio device over vhost-user; see the module comment. */
export class VhostUserBackend {
  readonly device: VirtioDevice;
  private readonly counters: VhostUserBackendStats = {
    connections: 0,
    messages: 0,
    rejected: 0,
    kicks: 0,
    calls: 0,
    loggedPages: 0,
    resubmitted: 0,
  };
  private readonly native: VhostUserNative;
  private readonly logger: Logger;
  private readonly onConnect: (() => void) | undefined;
  private readonly onMessage: ((message: VhostUserMessage) => void) | undefined;
  private readonly onDisconnect: ((reason: string) => void) | undefined;
  /** Where started rings are served: this thread, or one worker per ring. */
  private readonly plane: DataPlane;

  private listener: SocketListener | null = null;
  private conn: VhostUserConnection | null = null;

  // Negotiated state of the current front-end.
  private features = 0n;
  private protocolFeatures = 0n;
  private readonly offeredProtocolFeatures: bigint;
  private table: MemoryTable = MemoryTable.empty;
  private rings: RingState[];
  /** The dirty log of SET_LOG_BASE, and the eventfd of SET_LOG_FD. */
  private readonly mlog: MigrationLog;
  /** The inflight buffer of GET/SET_INFLIGHT_FD. */
  private inflight: InflightBuffer | null = null;
  /** fds a handler sends with its reply; closed once the message is done. */
  private readonly replyFds: number[] = [];
  /** fds of the message being handled that a handler kept (the rest are closed). */
  private readonly kept = new Set<number>();

  constructor(device: VirtioDevice, options: VhostUserBackendOptions = {}) {
    this.device = device;
    const offered = options.protocolFeatures ?? VHOST_USER_BACKEND_PROTOCOL_FEATURES;
    if ((offered & ~VHOST_USER_BACKEND_PROTOCOL_FEATURES) !== 0n) {
      throw new RangeError(
        `protocol features 0x${offered.toString(16)} include some this back-end does not implement`,
      );
    }
    this.offeredProtocolFeatures = offered;
    this.native = options.native ?? loadNative();
    this.logger = options.logger ?? consoleLogger;
    this.mlog = new MigrationLog(this.native, (message, detail) =>
      this.logger.warn(`vhost-user: ${message}`, detail),
    );
    this.onConnect = options.onConnect;
    this.onMessage = options.onMessage;
    this.onDisconnect = options.onDisconnect;
    this.rings = device.queueMaxSizes.map(freshRing);
    // A device with transfers under way must drain them before a ring stops, which only a
    // ring worker can wait for.
    if (options.ringWorkers === undefined && device.asyncTransfers === true) {
      throw new TypeError('a device with asynchronous transfers needs ringWorkers');
    }
    const host: PlaneHost = {
      device,
      native: this.native,
      logger: this.logger,
      counters: this.counters,
      ring: (index) => this.rings[index],
      rings: () => this.rings,
      flushLog: () => this.flushLog(),
      closeFds: (fds) => this.closeFds(fds),
    };
    const workers = options.ringWorkers;
    this.plane =
      workers === undefined
        ? new InProcessPlane(host)
        : new WorkerPlane(host, {
            spec: workers.spec,
            quiet: workers.quiet ?? false,
            ackTimeoutMs: workers.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS,
          });
  }

  /** Counters of this back-end and its ring workers. */
  get stats(): VhostUserBackendStats {
    const s = { ...this.counters };
    this.plane.addStats(s);
    return s;
  }

  /** True while a front-end is connected. */
  get connected(): boolean {
    return this.conn !== null;
  }

  /** Negotiated device features (without the vhost-user bits PROTOCOL_FEATURES and LOG_ALL). */
  get negotiatedFeatures(): bigint {
    return this.features & ~VHOST_FEATURE_BITS;
  }

  /** True while the front-end has the back-end log its writes (LOG_ALL and a log base). */
  get logging(): boolean {
    return this.mlog.present && (this.features & LOG_ALL_BIT) !== 0n;
  }

  /** The front-end's memory table as mapped here. */
  get memoryTable(): MemoryTable {
    return this.table;
  }

  /**
   * Listens on a Unix socket at `path` and serves front-ends one after the other. A stale
   * socket file at `path` is removed; any other file there is an error.
   */
  listen(path: string): void {
    if (this.listener !== null) throw new Error('the back-end is already listening');
    this.listener = SocketListener.open(this.native, this.logger, path, (fd) =>
      this.startConnection(fd),
    );
    if (this.conn === null) this.listener.resume();
  }

  /**
   * Connects to a front-end that listens on the Unix socket `path` (QEMU's
   * `-chardev socket,server=on`) and serves it. With the front-end as the server, a back-end
   * that was restarted connects again and the front-end starts its rings anew. Throws the
   * connect error (ENOENT: no socket there; ECONNREFUSED: nobody listens).
   */
  connect(path: string): void {
    if (this.conn !== null) throw new Error('the back-end already serves a front-end');
    this.attach(this.native.connect(path));
  }

  /** Serves a socket that is already connected to a front-end (e.g. one end of a socketpair). */
  attach(fd: number): void {
    if (this.conn !== null) throw new Error('the back-end already serves a front-end');
    this.native.setNonBlocking(fd, true);
    this.startConnection(fd);
  }

  /** Disconnects the front-end, stops listening, removes the socket file, ends the workers. */
  close(): void {
    if (this.conn !== null) this.disconnect('back-end closed');
    this.plane.close();
    this.listener?.close();
    this.listener = null;
  }

  // ---- connections ----

  private startConnection(fd: number): void {
    this.counters.connections++;
    this.plane.connected();
    this.conn = new VhostUserConnection(this.native, fd, {
      message: (bytes, fds, truncated) => this.message(bytes, fds, truncated),
      badHeader: (e) => this.reject(e),
      ended: (reason) => this.disconnect(reason),
    });
    this.onConnect?.();
  }

  /** Ends the connection, resets the device and all negotiated state, and listens again. */
  private disconnect(reason: string): void {
    const conn = this.conn;
    if (conn === null) return;
    this.conn = null;
    conn.close();
    this.resetState();
    this.setLog(null, null);
    this.features = 0n;
    this.protocolFeatures = 0n;
    this.table = MemoryTable.empty;
    // The front-end keeps the inflight buffer and sends it again when it reconnects.
    this.inflight = null;
    this.onDisconnect?.(reason);
    this.listener?.resume();
  }

  private reject(e: unknown): void {
    this.counters.rejected++;
    if (e instanceof VhostUserError) this.closeFds(e.fds);
    this.logger.warn('vhost-user: message rejected', { error: (e as Error).message });
  }

  /** Decodes and handles one complete message. */
  private message(bytes: Uint8Array, fds: number[], fdsTruncated: boolean): void {
    this.counters.messages++;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const request = view.getUint32(0, true);
    const needReply = (view.getUint32(4, true) & VhostUserFlags.NEED_REPLY) !== 0;
    let msg: VhostUserMessage;
    try {
      if (fdsTruncated) {
        throw new VhostUserError(
          'VHOST_BAD_FDS',
          request,
          fds,
          'more fds than one message may carry',
        );
      }
      msg = decodeMessage(bytes, fds);
    } catch (e) {
      if (!(e instanceof VhostUserError)) throw e;
      this.reject(e);
      this.failed(request, needReply, e.message);
      return;
    }
    this.kept.clear();
    let reply: Uint8Array | null;
    try {
      this.onMessage?.(msg);
      reply = this.handle(msg);
    } catch (e) {
      this.closeUnkept(msg.fds);
      this.closeFds(this.replyFds.splice(0));
      if (!(e instanceof RequestFailure || e instanceof MemoryTableError || isVirtqError(e))) {
        // A bug of the back-end or the device, not of the front-end: report it, never crash.
        this.logger.warn('vhost-user: internal error while handling a request', {
          request: msg.kind,
          error: e instanceof Error ? (e.stack ?? e.message) : String(e),
        });
      }
      this.counters.rejected++;
      this.logger.warn('vhost-user: request refused', {
        request: msg.kind,
        error: (e as Error).message,
      });
      this.failed(msg.request, msg.needReply, (e as Error).message);
      return;
    }
    this.closeUnkept(msg.fds);
    const replyFds = this.replyFds.splice(0);
    if (this.conn !== null && reply !== null) this.send(reply, replyFds);
    this.closeFds(replyFds);
    if (this.conn === null || reply !== null) return;
    if (msg.needReply && this.replyAck) this.send(encodeAckReply(msg.request, 0));
  }

  /** Answers a refused request: a failure ack, an empty config, or a closed connection. */
  private failed(request: number, needReply: boolean, why: string): void {
    if (this.conn === null) return;
    if (request === VhostUserRequest.GET_CONFIG) {
      this.send(encodeConfigErrorReply());
    } else if (REPLYING_REQUESTS.has(request)) {
      // The front-end waits for a reply that cannot be given.
      this.disconnect(`cannot answer request ${request}: ${why}`);
    } else if (needReply && this.replyAck) {
      this.send(encodeAckReply(request, 1));
    }
  }

  private get replyAck(): boolean {
    return (this.protocolFeatures & protocolFeatureMask(VhostUserProtocolFeature.REPLY_ACK)) !== 0n;
  }

  private send(bytes: Uint8Array, fds: readonly number[] = []): void {
    this.conn?.send(bytes, fds);
  }

  private closeFds(fds: readonly number[]): void {
    closeFds(this.native, fds);
  }

  private closeUnkept(fds: readonly number[]): void {
    for (const fd of fds) {
      if (!this.kept.has(fd)) this.closeFds([fd]);
    }
    this.kept.clear();
  }

  // ---- requests ----

  private ring(index: number): RingState {
    const r = this.rings[index];
    // "Ring index": a ring the device does not have.
    if (r === undefined) {
      throw new RequestFailure(`ring ${index} does not exist (${this.rings.length} rings)`);
    }
    return r;
  }

  /** Handles a decoded message; returns its reply (null: none, or only an ack). */
  private handle(msg: VhostUserMessage): Uint8Array | null {
    const device = this.device;
    switch (msg.kind) {
      case 'GET_FEATURES':
        return encodeU64Reply(msg.request, device.offeredFeatures | VHOST_FEATURE_BITS);
      case 'SET_FEATURES': {
        const offered = device.offeredFeatures | VHOST_FEATURE_BITS;
        // The front-end may only acknowledge what GET_FEATURES offered.
        if ((msg.features & ~offered) !== 0n) {
          throw new RequestFailure(`features 0x${msg.features.toString(16)} were not offered`);
        }
        const deviceFeatures = msg.features & ~VHOST_FEATURE_BITS;
        if (this.rings.some((r) => r.running || r.started)) {
          // "Migration": while rings run, the front-end only turns LOG_ALL on or off.
          if (deviceFeatures !== this.negotiatedFeatures) {
            throw new RequestFailure('device features cannot change while rings run');
          }
        } else if (!device.acceptFeatures(deviceFeatures)) {
          throw new RequestFailure(`the device refuses features 0x${msg.features.toString(16)}`);
        }
        const wasLogging = this.logging;
        this.features = msg.features;
        if (this.logging !== wasLogging) this.loggingChanged();
        return null;
      }
      case 'GET_PROTOCOL_FEATURES':
        return encodeU64Reply(msg.request, this.offeredProtocolFeatures);
      case 'SET_PROTOCOL_FEATURES':
        if ((msg.features & ~this.offeredProtocolFeatures) !== 0n) {
          throw new RequestFailure(
            `protocol features 0x${msg.features.toString(16)} were not offered`,
          );
        }
        this.protocolFeatures = msg.features;
        return null;
      case 'SET_OWNER':
        return null;
      case 'RESET_OWNER':
      case 'RESET_DEVICE':
        this.resetState();
        this.features = 0n;
        this.setLog(null, null);
        return null;
      case 'GET_QUEUE_NUM':
        return encodeU64Reply(msg.request, this.rings.length);
      case 'GET_MAX_MEM_SLOTS':
        return encodeU64Reply(msg.request, VHOST_USER_BACKEND_MAX_MEM_SLOTS);
      case 'SET_MEM_TABLE':
        // The mappings outlive the fds, which are closed after the message.
        this.setTable(MemoryTable.map(this.native, msg.regions));
        return null;
      case 'ADD_MEM_REG':
        this.setTable(this.table.add(this.native, msg.region, VHOST_USER_BACKEND_MAX_MEM_SLOTS));
        return null;
      case 'REM_MEM_REG':
        this.setTable(this.table.remove(msg.region));
        return null;
      case 'SET_VRING_NUM': {
        const ring = this.ring(msg.state.index);
        const max = device.queueMaxSizes[msg.state.index]!;
        if (msg.state.num < 1 || msg.state.num > max) {
          throw new RequestFailure(`ring size ${msg.state.num} is not in 1..${max}`);
        }
        if (ring.running) throw new RequestFailure('the ring is running');
        ring.num = msg.state.num;
        return null;
      }
      case 'SET_VRING_ADDR': {
        const a = msg.addr;
        const ring = this.ring(a.index);
        const user = { desc: a.descUserAddr, avail: a.availUserAddr, used: a.usedUserAddr };
        const old = ring.userAddr;
        const moved =
          old === null ||
          old.desc !== user.desc ||
          old.avail !== user.avail ||
          old.used !== user.used;
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
      case 'SET_VRING_BASE': {
        const ring = this.ring(msg.state.index);
        if (ring.running) throw new RequestFailure('the ring is running');
        // "SET_VRING_BASE": a split ring's next available index is 16 bits.
        if (!this.packed && msg.state.num > 0xffff) {
          throw new RequestFailure(`split ring base ${msg.state.num} exceeds 0xffff`);
        }
        ring.base = msg.state.num;
        ring.lost = false;
        return null;
      }
      case 'GET_VRING_BASE': {
        const index = msg.state.index;
        const ring = this.ring(index);
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
        this.flushLog();
        this.resetDeviceIfIdle();
        return encodeVringStateReply(msg.request, { index, num: ring.base });
      }
      case 'SET_VRING_KICK': {
        const { index, fd } = msg.file;
        const ring = this.ring(index);
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
          this.kept.add(fd);
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
      case 'SET_VRING_CALL': {
        const ring = this.ring(msg.file.index);
        // QEMU replaces call eventfds of running rings (interrupt masking): the worker must
        // have let go of the old one before it is closed.
        if (ring.running) this.plane.callChanged(msg.file.index, msg.file.fd);
        if (ring.callFd !== null) this.closeFds([ring.callFd]);
        ring.callFd = msg.file.fd;
        if (msg.file.fd !== null) this.kept.add(msg.file.fd);
        return null;
      }
      case 'SET_VRING_ERR': {
        const ring = this.ring(msg.file.index);
        // A running ring's worker moves to the new eventfd: stopped here, started again below.
        const restart = ring.running && this.plane.restartsForErrFd;
        if (restart) this.stopRing(msg.file.index);
        if (ring.errFd !== null) this.closeFds([ring.errFd]);
        ring.errFd = msg.file.fd;
        if (msg.file.fd !== null) this.kept.add(msg.file.fd);
        if (restart) this.tryStart(msg.file.index);
        return null;
      }
      case 'SET_VRING_ENABLE': {
        const index = msg.state.index;
        const ring = this.ring(index);
        ring.enabled = msg.state.num === 1;
        if (ring.enabled) this.tryStart(index);
        else if (ring.running) {
          this.stopRing(index);
        }
        return null;
      }
      case 'GET_CONFIG': {
        const c = msg.config;
        if (c.offset + c.size > VHOST_USER_MAX_CONFIG_SIZE) {
          throw new RequestFailure(`config access [${c.offset}, +${c.size}) is out of range`);
        }
        const out = new Uint8Array(c.size);
        device.readConfig(c.offset, out);
        return encodeConfigReply({ offset: c.offset, flags: c.flags, payload: out });
      }
      case 'SET_CONFIG': {
        const c = msg.config;
        if (c.offset + c.size > VHOST_USER_MAX_CONFIG_SIZE) {
          throw new RequestFailure(`config access [${c.offset}, +${c.size}) is out of range`);
        }
        device.writeConfig(c.offset, c.payload);
        return null;
      }
      case 'SET_LOG_BASE': {
        if (!this.hasProtocolFeature(VhostUserProtocolFeature.LOG_SHMFD)) {
          throw new RequestFailure('SET_LOG_BASE without LOG_SHMFD');
        }
        const m = mapShared(this.native, msg.fd, msg.log.mmapOffset, msg.log.mmapSize, 'log');
        this.setLog({ buffer: m.buffer, offset: m.offset, size: msg.log.mmapSize }, this.mlog.fd);
        // "SET_LOG_BASE": with LOG_SHMFD the front-end waits for this (zero) answer.
        return encodeU64Reply(msg.request, 0);
      }
      case 'SET_LOG_FD':
        if (!this.hasProtocolFeature(VhostUserProtocolFeature.LOG_SHMFD)) {
          throw new RequestFailure('SET_LOG_FD without LOG_SHMFD');
        }
        this.kept.add(msg.fd);
        this.setLog(this.mlog.area, msg.fd);
        return null;
      case 'GET_INFLIGHT_FD': {
        const made = newInflightBuffer(this.inflightContext(), msg.inflight);
        // Sent with the reply, then closed (message() closes it on every path).
        this.replyFds.push(made.fd);
        this.inflight = made.buffer;
        return made.reply;
      }
      case 'SET_INFLIGHT_FD':
        this.inflight = adoptInflightBuffer(this.inflightContext(), msg.inflight, msg.fd);
        return null;
      default:
        throw new RequestFailure(`${msg.kind} is not supported by this back-end`);
    }
  }

  private hasProtocolFeature(bit: number): boolean {
    return (this.protocolFeatures & protocolFeatureMask(bit)) !== 0n;
  }

  private inflightContext(): InflightContext {
    return {
      native: this.native,
      negotiated: this.hasProtocolFeature(VhostUserProtocolFeature.INFLIGHT_SHMFD),
      queueMaxSizes: this.device.queueMaxSizes,
    };
  }

  // ---- dirty logging (LOG_SHMFD) ----

  /**
   * Replaces the log and its eventfd (closing an old eventfd once no worker uses it), flushing
   * into the old log first.
   */
  private setLog(area: SharedArea | null, fd: number | null): void {
    this.flushLog();
    const oldFd = this.mlog.replace(area, fd, null);
    try {
      this.loggingChanged();
    } finally {
      if (oldFd !== null) this.closeFds([oldFd]);
    }
  }

  /** What the ring workers log into: nothing unless the front-end has logging on. */
  private ringLog(): RingLog {
    return { area: this.logging ? this.mlog.area : null, fd: this.mlog.fd };
  }

  /**
   * Logging was switched or moved: running ring workers follow. Pages written before logging
   * started are still in GuestMemory's record and reach the log too; the front-end copies
   * them anyway, so that costs a little bandwidth and keeps every page accounted for.
   */
  private loggingChanged(): void {
    // Pages are recorded only while the front-end logs (before the workers are told: the
    // in-process device and the next turn see it at once).
    this.table.memory?.setDirtyTracking(this.logging);
    for (let i = 0; i < this.rings.length; i++) {
      if (this.rings[i]!.running) this.plane.logChanged(i, this.ringLog());
    }
  }

  /**
   * Moves the pages the device wrote since the last call into the dirty log (see
   * {@link MigrationLog}), and tells the front-end through the log eventfd when there were any.
   */
  private flushLog(): void {
    if (!this.logging) return;
    this.counters.loggedPages += this.mlog.flush(
      this.table.memory,
      this.packed ? undefined : () => this.usedRingsLoggedElsewhere(),
    );
  }

  /**
   * "Migration": used-ring writes are logged at log_guest_addr. QEMU passes the ring's own
   * guest address, which the flush has covered; a front-end that passes another gets the whole
   * ring marked there too.
   */
  private *usedRingsLoggedElsewhere(): Iterable<readonly [number, number]> {
    for (const ring of this.rings) {
      if (ring.running && ring.logUsed && ring.logGuestAddr !== ring.used) {
        yield [ring.logGuestAddr, usedRingBytes(ring.num)];
      }
    }
  }

  /** Translates a ring's user addresses through the table (or throws). */
  private translate(ring: RingState, user: { desc: number; avail: number; used: number }): void {
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

  private setTable(table: MemoryTable): void {
    this.flushLog();
    this.table = table;
    const memory = table.memory;
    memory?.setDirtyTracking(this.logging);
    // Running rings move to the new mappings (QEMU updates the table on memory hot-plug).
    if (memory !== null) this.plane.memoryChanged(memory);
    for (let i = 0; i < this.rings.length; i++) {
      const ring = this.rings[i]!;
      if (!ring.running) continue;
      this.stopRing(i);
      try {
        if (ring.userAddr !== null) this.translate(ring, ring.userAddr);
        this.tryStart(i);
      } catch (e) {
        this.logger.warn('vhost-user: ring stopped by a memory table change', {
          index: i,
          error: (e as Error).message,
        });
      }
    }
  }

  // ---- rings ----

  private get packed(): boolean {
    return hasFeature(this.features, VIRTIO_F_RING_PACKED);
  }

  /** Starts ring `index` if it is started, enabled and fully configured. */
  private tryStart(index: number): void {
    const ring = this.rings[index]!;
    const protocolAcked = (this.features & PROTOCOL_FEATURES_BIT) !== 0n;
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
    const packed = this.packed;
    const f = this.negotiatedFeatures;
    // The queue is built and checked here in both modes: a ring the front-end got wrong is
    // refused to it, never found out on a worker.
    const buffer = this.inflightBuffer();
    if (buffer === null && this.inflight !== null) {
      this.logger.warn('vhost-user: IN_ORDER ring served without crash recovery', { index });
    }
    let region: SplitInflight | PackedInflight | null =
      buffer === null ? null : packed ? buffer.packed(index) : buffer.split(index);
    const max = this.device.queueMaxSizes[index]!;
    const options = { logger: this.logger };
    // Only a tracked queue pays for the inflight bookkeeping.
    const q =
      region === null
        ? createQueue(packed ? 'packed' : 'split', max, options)
        : packed
          ? new TrackedPackedQueue(max, options)
          : new TrackedSplitQueue(max, options);
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
    if (region !== null && q.activeSize > region.descNum) {
      // Regions are sized for the device's largest ring; only a buffer from elsewhere (another
      // back-end's, handed back by the front-end) can be smaller. Served, without recovery.
      this.logger.warn('vhost-user: ring larger than its inflight region; served untracked', {
        index,
        size: q.activeSize,
        descNum: region.descNum,
      });
      region = null;
    }
    ring.running = true;
    this.plane.start({
      index,
      queue: q,
      region,
      features: f,
      memory,
      table: this.table,
      ring,
      log: this.ringLog(),
    });
  }

  /** The inflight buffer rings record in, when INFLIGHT_SHMFD gave one. */
  private inflightBuffer(): InflightBuffer | null {
    if (!this.hasProtocolFeature(VhostUserProtocolFeature.INFLIGHT_SHMFD)) return null;
    // In-order batches publish one used element for several chains; the region's batch list
    // needs every chain's own element.
    if (hasFeature(this.features, VIRTIO_F_IN_ORDER)) return null;
    return this.inflight;
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
  private stopRing(index: number): void {
    const ring = this.rings[index]!;
    if (!ring.running) return;
    // "Migration": the used ring is logged at log_guest_addr while the ring still counts as
    // running.
    this.flushLog();
    ring.running = false;
    const base = this.plane.stop(index);
    if (base === null) ring.lost = true;
    else ring.base = base;
  }

  private stopKick(ring: RingState): void {
    ring.kickWatcher?.stop();
    ring.kickWatcher = null;
    if (ring.kickFd !== null) this.closeFds([ring.kickFd]);
    ring.kickFd = null;
  }

  /** Resets the device once no ring runs or waits to resume. */
  private resetDeviceIfIdle(): void {
    if (!this.plane.deviceActive) return;
    if (this.rings.some((r) => r.started)) return;
    this.plane.resetDevice();
  }

  /** Forgets every ring and resets the device (disconnect, RESET_OWNER, RESET_DEVICE). */
  private resetState(): void {
    // Workers let go of the rings' eventfds before they are closed.
    for (let i = 0; i < this.rings.length; i++) this.stopRing(i);
    for (const ring of this.rings) {
      this.stopKick(ring);
      if (ring.callFd !== null) this.closeFds([ring.callFd]);
      if (ring.errFd !== null) this.closeFds([ring.errFd]);
    }
    this.rings = this.device.queueMaxSizes.map(freshRing);
    this.plane.resetDevice();
  }

  private kicked(index: number, error: Error | null): void {
    const ring = this.rings[index];
    if (ring === undefined || ring.kickFd === null) return;
    if (error !== null) {
      this.logger.warn('vhost-user: polling a kick fd failed', { index, error: error.message });
      this.stopKick(ring);
      return;
    }
    try {
      // Drain the eventfd: the poll is level-triggered.
      this.native.eventfdRead(ring.kickFd);
    } catch (e) {
      this.logger.warn('vhost-user: reading a kick fd failed', {
        index,
        error: (e as Error).message,
      });
      this.stopKick(ring);
      return;
    }
    this.counters.kicks++;
    this.plane.kicked(index);
  }
}
