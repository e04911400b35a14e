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
import { isVirtqError } from '../errors.js';
import { VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED } from '../queue/constants.js';
import { consoleLogger, type Logger } from '../queue/logger.js';
import {
  checkBackendOptions,
  VHOST_USER_BACKEND_MAX_MEM_SLOTS,
  type VhostUserBackendOptions,
  type VhostUserBackendStats,
} from './backend-options.js';
import {
  encodeConfigReply,
  encodeU64Reply,
  protocolFeatureMask,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_MAX_CONFIG_SIZE,
  type VhostUserMessage,
  VhostUserProtocolFeature,
} from './codec.js';
import {
  closeFds,
  type MessageFds,
  type RequestHandler,
  SocketListener,
  VhostUserConnection,
} from './connection.js';
import { InProcessPlane } from './data-plane.js';
import { MigrationLog } from './dirty-log.js';
import type { InflightBuffer } from './inflight.js';
import { adoptInflightBuffer, type InflightContext, newInflightBuffer } from './inflight-fd.js';
import { MemoryTable, MemoryTableError, mapShared } from './memory-table.js';
import { loadNative, type VhostUserNative } from './native.js';
import { RequestFailure } from './request-failure.js';
import { servedQueueSizes } from './ring-state.js';
import { DEFAULT_ACK_TIMEOUT_MS, type RingLog, type SharedArea } from './ring-worker-protocol.js';
import { Rings } from './rings.js';
import { WorkerPlane } from './worker-plane.js';

export {
  VHOST_USER_BACKEND_MAX_MEM_SLOTS,
  VHOST_USER_BACKEND_PROTOCOL_FEATURES,
  type VhostUserBackendOptions,
  type VhostUserBackendStats,
} from './backend-options.js';

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
    droppedLogPages: 0,
    resubmitted: 0,
    polls: 0,
    pollTurns: 0,
  };
  private readonly native: VhostUserNative;
  private readonly logger: Logger;
  private readonly onConnect: (() => void) | undefined;
  private readonly onMessage: ((message: VhostUserMessage) => void) | undefined;
  private readonly onDisconnect: ((reason: string) => void) | undefined;

  private listener: SocketListener | null = null;
  private conn: VhostUserConnection | null = null;

  // Negotiated state of the current front-end.
  private features = 0n;
  private protocolFeatures = 0n;
  private readonly offeredProtocolFeatures: bigint;
  private table: MemoryTable = MemoryTable.empty;
  /** Every ring's state and lifecycle, and the data plane serving the started ones. */
  private readonly rings: Rings;
  /** The dirty log of SET_LOG_BASE, and the eventfd of SET_LOG_FD. */
  private readonly mlog: MigrationLog;
  /** The inflight buffer of GET/SET_INFLIGHT_FD. */
  private inflight: InflightBuffer | null = null;
  /** The fds of the message being handled (see {@link handle}). */
  private msgFds: MessageFds | null = null;
  /** The protocol side of the connection: requests in, replies or refusals out. */
  private readonly handler: RequestHandler;

  constructor(device: VirtioDevice, options: VhostUserBackendOptions = {}) {
    this.device = device;
    const { offered, poll } = checkBackendOptions(device, options);
    this.offeredProtocolFeatures = offered;
    this.native = options.native ?? loadNative();
    this.logger = options.logger ?? consoleLogger;
    this.mlog = new MigrationLog(this.native, (message, detail) =>
      this.logger.warn(`vhost-user: ${message}`, detail),
    );
    this.onConnect = options.onConnect;
    this.onMessage = options.onMessage;
    this.onDisconnect = options.onDisconnect;
    const backend = this;
    this.handler = {
      get replyAck(): boolean {
        return backend.replyAck;
      },
      arrived: () => {
        this.counters.messages++;
      },
      decoded: (msg) => this.onMessage?.(msg),
      handle: (msg, fds) => {
        this.msgFds = fds;
        try {
          return this.handle(msg);
        } finally {
          this.msgFds = null;
        }
      },
      refused: (e, msg) => this.refused(e, msg),
    };
    const workers = options.ringWorkers;
    this.rings = new Rings(
      {
        device,
        native: this.native,
        logger: this.logger,
        counters: this.counters,
        features: () => this.features,
        deviceFeatures: () => this.negotiatedFeatures,
        protocolAcked: () => (this.features & PROTOCOL_FEATURES_BIT) !== 0n,
        table: () => this.table,
        inflightBuffer: () => this.inflightBuffer(),
        hasInflight: () => this.inflight !== null,
        ringLog: () => this.ringLog(),
        flushLog: () => this.flushLog(),
        closeFds: (fds) => this.closeFds(fds),
        keep: (fd) => this.msgFds?.keep(fd),
      },
      (host) =>
        workers === undefined
          ? new InProcessPlane(host, poll)
          : new WorkerPlane(host, {
              spec: workers.spec,
              quiet: workers.quiet ?? false,
              ackTimeoutMs: workers.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS,
              pollIdleMicros: poll,
            }),
    );
  }

  /** Counters of this back-end and its ring workers. */
  get stats(): VhostUserBackendStats {
    const s = { ...this.counters };
    this.rings.plane.addStats(s);
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
    this.rings.plane.close();
    this.listener?.close();
    this.listener = null;
  }

  // ---- connections ----

  private startConnection(fd: number): void {
    this.counters.connections++;
    this.rings.plane.connected();
    this.conn = new VhostUserConnection(this.native, fd, this.handler, (reason) =>
      this.disconnect(reason),
    );
    this.onConnect?.();
  }

  /** Ends the connection, resets the device and all negotiated state, and listens again. */
  private disconnect(reason: string): void {
    const conn = this.conn;
    if (conn === null) return;
    this.conn = null;
    conn.close();
    this.rings.resetAll();
    this.setLog(null, null);
    this.features = 0n;
    this.protocolFeatures = 0n;
    this.table = MemoryTable.empty;
    // The front-end keeps the inflight buffer and sends it again when it reconnects.
    this.inflight = null;
    this.onDisconnect?.(reason);
    this.listener?.resume();
  }

  /** Counts and reports a message the codec rejected or a request refused. */
  private refused(e: unknown, msg: VhostUserMessage | null): void {
    this.counters.rejected++;
    if (msg === null) {
      this.logger.warn('vhost-user: message rejected', { error: (e as Error).message });
      return;
    }
    if (!(e instanceof RequestFailure || e instanceof MemoryTableError || isVirtqError(e))) {
      // A bug of the back-end or the device, not of the front-end: report it, never crash.
      this.logger.warn('vhost-user: internal error while handling a request', {
        request: msg.kind,
        error: e instanceof Error ? (e.stack ?? e.message) : String(e),
      });
    }
    this.logger.warn('vhost-user: request refused', {
      request: msg.kind,
      error: (e as Error).message,
    });
  }

  private get replyAck(): boolean {
    return (this.protocolFeatures & protocolFeatureMask(VhostUserProtocolFeature.REPLY_ACK)) !== 0n;
  }

  private closeFds(fds: readonly number[]): void {
    closeFds(this.native, fds);
  }

  // ---- requests ----

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
        const acked = msg.features & ~VHOST_FEATURE_BITS;
        const deviceFeatures = device.frontEndQueues?.completeFeatures(acked) ?? acked;
        if (this.rings.all.some((r) => r.running || r.started)) {
          // "Migration": while rings run, the front-end only turns LOG_ALL on or off.
          if (deviceFeatures !== this.negotiatedFeatures) {
            throw new RequestFailure('device features cannot change while rings run');
          }
        } else if (!device.acceptFeatures(deviceFeatures)) {
          throw new RequestFailure(`the device refuses features 0x${msg.features.toString(16)}`);
        }
        const wasLogging = this.logging;
        this.features = deviceFeatures | (msg.features & VHOST_FEATURE_BITS);
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
        this.rings.resetAll();
        this.features = 0n;
        this.setLog(null, null);
        return null;
      case 'GET_QUEUE_NUM': {
        // QEMU's net/vhost-user.c reads it as queue pairs: such a device says what to answer.
        const queues = device.frontEndQueues?.queueNum ?? this.rings.all.length;
        return encodeU64Reply(msg.request, queues);
      }
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
      case 'SET_VRING_NUM':
        return this.rings.setNum(msg);
      case 'SET_VRING_ADDR':
        return this.rings.setAddr(msg);
      case 'SET_VRING_BASE':
        return this.rings.setBase(msg);
      case 'GET_VRING_BASE':
        return this.rings.getBase(msg);
      case 'SET_VRING_KICK':
        return this.rings.setKick(msg);
      case 'SET_VRING_CALL':
        return this.rings.setCall(msg);
      case 'SET_VRING_ERR':
        return this.rings.setErr(msg);
      case 'SET_VRING_ENABLE':
        return this.rings.setEnable(msg);
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
        this.msgFds!.keep(msg.fd);
        this.setLog(this.mlog.area, msg.fd);
        return null;
      case 'GET_INFLIGHT_FD': {
        const made = newInflightBuffer(this.inflightContext(), msg.inflight);
        // Sent with the reply, then closed (message() closes it on every path).
        this.msgFds!.attach(made.fd);
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
      queueMaxSizes: servedQueueSizes(this.device),
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
    this.rings.logChanged();
  }

  /**
   * Moves the pages the device wrote since the last call into the dirty log (see
   * {@link MigrationLog}), and tells the front-end through the log eventfd when there were any.
   */
  private flushLog(): void {
    if (!this.logging) return;
    this.counters.loggedPages += this.mlog.flush(
      this.table.memory,
      this.packed ? undefined : () => this.rings.usedRingsLoggedElsewhere(),
    );
    this.counters.droppedLogPages = this.mlog.dropped;
  }

  private setTable(table: MemoryTable): void {
    this.flushLog();
    this.table = table;
    table.memory?.setDirtyTracking(this.logging);
    this.rings.tableChanged();
  }

  // ---- rings ----

  private get packed(): boolean {
    return hasFeature(this.features, VIRTIO_F_RING_PACKED);
  }

  /** The inflight buffer rings record in, when INFLIGHT_SHMFD gave one. */
  private inflightBuffer(): InflightBuffer | null {
    if (!this.hasProtocolFeature(VhostUserProtocolFeature.INFLIGHT_SHMFD)) return null;
    // In-order batches publish one used element for several chains; the region's batch list
    // needs every chain's own element.
    if (hasFeature(this.features, VIRTIO_F_IN_ORDER)) return null;
    return this.inflight;
  }
}
