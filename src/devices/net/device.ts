import { VIRTIO_F_IN_ORDER } from '../../queue/constants.js';
import type { Queue } from '../../queue/queue.js';
import {
  type DeviceContext,
  type FrontEndQueues,
  hasFeature,
  VIRTIO_ID_NET,
  VirtioDeviceBase,
} from '../device.js';
import { formatMac, type NetBackend, type NetPort } from './backend.js';
import { type NetOptions, netFrontEndQueues, planNetDevice, writeNetConfig } from './config.js';
import { NET_CONTROL_QUEUE_SIZE, NetControl, type NetControlTarget } from './control.js';
import {
  ETH_HLEN,
  guestOffloads,
  hostOffloads,
  missingNetRequirement,
  NET_CONFIG_MAC,
  NET_CONFIG_SIZE,
  NET_CONFIG_STATUS,
  NET_MAX_FRAME,
  type NetHeader,
  type NetTxUnsupportedReason,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_S_LINK_UP,
} from './request.js';
import { NetRxQueue, type NetTurn } from './rx-queue.js';
import { prepareNetRestore, restoreNetConfig, saveNet } from './snapshot.js';
import { emptyNetStats, type NetState, type NetStats } from './state.js';
import { steerPair } from './steer.js';
import { NetTransmitter } from './transmit.js';

/** Queue indices of the first pair (§5.1.2): receiveq1 and transmitq1. */
export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;

/**
 * virtio-net (device id 1, VIRTIO 1.2 §5.1) with one or more receive/transmit queue pairs and,
 * with several, the control queue, in front of a pluggable {@link NetBackend}. Queues are laid
 * out as §5.1.2 says: receiveq1, transmitq1, ..., receiveqN, transmitqN, controlq.
 *
 * Transmit: each chain is a 12-byte virtio header and a frame; the header is parsed into a
 * typed request, checked against the negotiated features (an unsupported one is dropped and
 * counted, §5.1.6.2) and the frame is handed to the backend. When the backend cannot take it,
 * the chain is given back to the ring (`undoPop`) and transmission waits for the backend. Every
 * transmit queue the driver set up is served.
 *
 * Receive: frames from the backend are steered to a receive queue in use by a hash of their
 * flow (see steer.ts). In a backend's burst with one pair in use, a plain frame goes straight
 * into a receive buffer, or waits with the backend when there is none. Other frames wait in
 * the queue's bounded ring inside the device until the driver posts buffers; when it is full
 * the backend waits. No frame is lost. With VIRTIO_NET_F_MRG_RXBUF a frame fills as many
 * chains as it needs (`num_buffers`); the device holds the chains it popped until the frame
 * fits. Offloads the driver did not negotiate are done in software (checksum, TCP segments).
 *
 * Multiqueue (VIRTIO_NET_F_MQ, §5.1.6.5.5): after a reset only the first pair is used; the
 * driver sets the pairs in use with VQ_PAIRS_SET on the control queue (control.ts). Over
 * vhost-user the front-end serves the control queue and enables rings itself
 * ({@link frontEndQueues}): every pair whose receive queue runs is then used.
 *
 * Frames waiting in the device survive a device reset (they belong to the link, not to the
 * driver session; those of other queues move to the first one) and are part of the saved
 * state. The per-frame path allocates nothing in steady state.
 */
export class NetDevice extends VirtioDeviceBase {
  readonly backend: NetBackend;
  readonly stats: NetStats = emptyNetStats();
  /** The MTU offered with VIRTIO_NET_F_MTU, or null. */
  readonly mtu: number | null;
  /** Receive/transmit pairs offered (max_virtqueue_pairs). */
  readonly queuePairs: number;
  /** The control queue with MQ (the last queue), or -1 if none; without MQ, 2 (§5.1.2). */
  readonly controlQueue: number;
  /** Commands answered on the control queue. */
  readonly control = new NetControl();
  readonly frontEndQueues: FrontEndQueues;

  private link: boolean;
  private readonly rx: NetRxQueue[];
  private readonly port: NetPort;
  private readonly turn: NetTurn;
  private readonly controlTarget: NetControlTarget;

  // What the driver negotiated (set at activation).
  private multiqueue = false;
  /** The front-end serves the control queue (the context has no queue for it). */
  private frontEndControl = false;
  /** Pairs in use: 1 after a reset, then what VQ_PAIRS_SET says (§5.1.6.5.5). */
  private active = 1;
  /** The control queue's index for the negotiated features (-1: none). */
  private ctrlIndex = -1;
  /** Queues carrying frames for the negotiated features: 2 without MQ. */
  private dataQueues = 2;

  private readonly tx: NetTransmitter;
  /** Per pair: a transmit pass runs, and another was asked for meanwhile. */
  private readonly txBusy: Uint8Array;
  private readonly txAgain: Uint8Array;
  /** Transmit passes and receive bursts under way: frames received meanwhile wait for them. */
  private rxHeld = 0;
  /** The backend was refused a frame and waits for {@link NetBackend.resumeRx}. */
  private backendWaiting = false;
  /** Pairs (bit k) whose receive queue got a frame while {@link rxHeld}: served after. */
  private rxDeferred = 0;

  constructor(options: NetOptions) {
    const plan = planNetDevice(options);
    const sizes: number[] = [];
    for (let k = 0; k < plan.queuePairs; k++) sizes.push(plan.queueSize, plan.queueSize);
    if (plan.controlQueue) sizes.push(NET_CONTROL_QUEUE_SIZE);
    super(VIRTIO_ID_NET, sizes, plan.features, NET_CONFIG_SIZE, options);
    this.backend = options.backend;
    this.tx = new NetTransmitter(options.backend, this.stats);
    this.mtu = plan.mtu;
    this.queuePairs = plan.queuePairs;
    this.controlQueue = plan.controlQueue ? 2 * plan.queuePairs : -1;
    this.link = options.linkUp ?? true;
    const maxFrames = options.pendingFrames ?? 256;
    this.rx = Array.from(
      { length: plan.queuePairs },
      (_, k) => new NetRxQueue(2 * k, maxFrames, plan.pendingBytes, this.stats),
    );
    this.txBusy = new Uint8Array(plan.queuePairs);
    this.txAgain = new Uint8Array(plan.queuePairs);
    writeNetConfig(this.config, plan, this.link);
    this.frontEndQueues = netFrontEndQueues(plan.queuePairs);
    this.port = {
      receive: (frame, length, header) => this.receiveFrame(frame, length, header),
      burst: (run) => this.burst(run),
      canReceive: (length) => this.canReceive(length),
      resumeTx: () => {
        this.tx.resume();
        for (let k = 0; k < this.queuePairs; k++) this.queueNotify(2 * k + 1);
      },
    };
    this.turn = {
      withinBudget: (index) => this.withinBudget(index),
      bytesLeft: () => this.bytesLeft,
      spend: (bytes) => this.spend(bytes),
      continueLater: (index) => this.continueLater(index),
      publish: (index) => this.publish(index),
      fail: (error) => this.fail(error),
    };
    const self = this;
    this.controlTarget = {
      queuePairs: plan.queuePairs,
      get multiqueue(): boolean {
        return self.multiqueue;
      },
      setActivePairs: (pairs) => this.setActivePairs(pairs),
    };
    this.backend.attach(this.port);
  }

  /** The reason of the last transmit chain dropped as unsupported. */
  get lastTxUnsupported(): NetTxUnsupportedReason | null {
    return this.tx.lastUnsupported;
  }

  /** The MAC address in the configuration space. */
  get mac(): Uint8Array {
    return this.config.slice(NET_CONFIG_MAC, NET_CONFIG_MAC + 6);
  }

  get linkUp(): boolean {
    return this.link;
  }

  /**
   * Queue pairs in use: 1 after a reset, then what the driver set with VQ_PAIRS_SET; with a
   * front-end serving the control queue, every pair (those whose receive queue runs get frames).
   */
  get activePairs(): number {
    return this.active;
  }

  /** Frames waiting inside the device for receive buffers (all receive queues). */
  get pendingFrames(): number {
    let n = 0;
    for (const r of this.rx) n += r.frames.pending.length;
    return n;
  }

  /** Frames waiting for the receive buffers of pair `pair`. */
  pendingFramesOf(pair: number): number {
    return this.rx[pair]?.frames.pending.length ?? 0;
  }

  /** Receive chains the device popped and holds (mergeable buffers waiting for a frame to fit). */
  get heldRxChains(): number {
    let n = 0;
    for (const r of this.rx) n += r.held.count;
    return n;
  }

  /**
   * Changes the link state: the `status` field and a configuration change interrupt
   * (§5.1.4, VIRTIO_NET_S_LINK_UP). While the link is down, transmitted frames and frames from
   * the backend are dropped and counted; frames already waiting in the device are still
   * delivered.
   */
  setLinkUp(up: boolean): void {
    if (up === this.link) return;
    this.link = up;
    if (hasFeature(this.offeredFeatures, VIRTIO_NET_F_STATUS)) {
      this.updateConfig(NET_CONFIG_STATUS, Uint8Array.of(up ? VIRTIO_NET_S_LINK_UP : 0, 0));
    }
    if (up) this.kick();
  }

  /**
   * Processes every queue as if the driver had notified it, and wakes a waiting backend (a
   * restored device does this once on its own, in a later turn).
   */
  kick(): void {
    for (let k = 0; k < this.queuePairs; k++) {
      this.queueNotify(2 * k + 1);
      this.queueNotify(2 * k);
    }
    if (this.ctrlIndex >= 0) this.queueNotify(this.ctrlIndex);
    if (
      this.backendWaiting &&
      this.rx.some((r) => r.frames.pending.length < r.frames.pending.maxFrames)
    ) {
      this.backendWaiting = false;
      this.backend.resumeRx();
    }
  }

  /** Detaches the device from its backend (it keeps working, with no link partner). */
  detach(): void {
    this.backend.detach(this.port);
  }

  override acceptFeatures(features: bigint): boolean {
    // §5.1.3.1: a feature without the feature it requires is refused (FEATURES_OK stays clear).
    return super.acceptFeatures(features) && missingNetRequirement(features) < 0;
  }

  protected override onActivate(ctx: DeviceContext): void {
    const f = ctx.features;
    const mergeable = hasFeature(f, VIRTIO_NET_F_MRG_RXBUF);
    this.tx.host = hostOffloads(f);
    const guest = guestOffloads(f);
    const mtu = this.mtu !== null && hasFeature(f, VIRTIO_NET_F_MTU) ? this.mtu : 0;
    const inOrder = hasFeature(f, VIRTIO_F_IN_ORDER);
    this.tx.inOrder = inOrder;
    for (const r of this.rx) r.configure(mergeable, inOrder, guest, mtu, ctx.queues[r.index]);
    this.multiqueue = hasFeature(f, VIRTIO_NET_F_MQ);
    this.frontEndControl = this.controlQueue >= 0 && ctx.queues.length <= this.controlQueue;
    // §5.1.2: receiveq1..N, transmitq1..N, then controlq at 2N, N being 1 without MQ.
    this.dataQueues = this.multiqueue ? 2 * this.queuePairs : 2;
    this.ctrlIndex = this.controlIndexFor(f);
    // §5.1.6.5.5: multiqueue starts disabled; a front-end that serves the control queue
    // enables pairs by starting their rings instead.
    this.active = this.frontEndControl && this.multiqueue ? this.queuePairs : 1;
  }

  /** The control queue's index under negotiated features `f` (-1: none). */
  private controlIndexFor(f: bigint): number {
    const dataQueues = hasFeature(f, VIRTIO_NET_F_MQ) ? 2 * this.queuePairs : 2;
    return this.controlQueue >= 0 && hasFeature(f, VIRTIO_NET_F_CTRL_VQ) ? dataQueues : -1;
  }

  /**
   * See `VirtioDevice.giveBackHeld`: the receive buffers held from queue `index` go back to the
   * driver, used with length 0, and are published.
   */
  giveBackHeld(index: number): void {
    const q = this.ctx?.queues[index];
    if (q === undefined || !q.isActive) return;
    for (const r of this.rx) {
      if (r.index === index && r.giveBackHeld(q) > 0) this.publish(index);
    }
  }

  /** See `VirtioDevice.queueStopped`: forgets the receive buffers held from queue `index`. */
  queueStopped(index: number): void {
    for (const r of this.rx) if (r.index === index) r.resetChains();
  }

  protected override onReset(): void {
    // Chains belong to the driver session that ends; pending frames belong to the link.
    for (const r of this.rx) r.resetChains();
    this.tx.blocked = false;
    this.tx.forgetViews();
    this.rxDeferred = 0;
    this.gatherPending();
    this.active = 1;
    this.multiqueue = false;
    this.frontEndControl = false;
    this.ctrlIndex = -1;
    this.dataQueues = 2;
  }

  protected processQueue(index: number, queue: Queue): void {
    if (index === this.ctrlIndex) this.control.pass(index, queue, this.controlTarget, this.turn);
    else if (index >= this.dataQueues)
      return; // no such queue with these features
    else if ((index & 1) === 0) this.receive(index >>> 1, queue);
    else this.transmit(index >>> 1, queue);
  }

  // ---- control queue ----

  /** VQ_PAIRS_SET: from now on only pairs 0..pairs-1 receive (§5.1.6.5.5). */
  private setActivePairs(pairs: number): void {
    if (pairs < this.active) {
      this.gatherPending(pairs);
      if (this.backendWaiting) {
        this.backendWaiting = false;
        this.backend.resumeRx();
      }
    }
    this.active = pairs;
    this.queueNotify(NET_RX_QUEUE);
  }

  /** Moves the frames waiting for receive queues from pair `from` on to the first one. */
  private gatherPending(from = 1): void {
    const first = this.rx[0]!.frames;
    for (let k = from; k < this.rx.length; k++) {
      this.stats.rxQueueDropped += this.rx[k]!.frames.moveInto(first);
    }
  }

  // ---- transmit ----

  private transmit(pair: number, q: Queue): void {
    if (this.txBusy[pair] === 1) {
      this.txAgain[pair] = 1;
      return;
    }
    this.txBusy[pair] = 1;
    // Frames handed back meanwhile (a reflector) are published after it, as in a burst, and
    // with one pair in use go straight into the receive queue (this turn's budget covers both).
    this.rxHeld++;
    const outer = this.direct;
    const rxq = this.active === 1 ? this.ctx!.queues[NET_RX_QUEUE] : undefined;
    if (rxq?.isActive === true) this.direct = rxq;
    try {
      do {
        this.txAgain[pair] = 0;
        this.tx.pass(2 * pair + 1, q, this.link, this.turn);
      } while (this.txAgain[pair] === 1);
    } finally {
      this.direct = outer;
      this.txBusy[pair] = 0;
      this.endHold();
    }
  }

  // ---- receive ----

  /**
   * {@link NetPort.burst}: frames received in `run` are published after it. With one pair in
   * use the burst is a turn of the receive queue, and frames go straight into its buffers.
   */
  private burst(run: () => void): void {
    this.rxHeld++;
    try {
      if (this.rxHeld === 1 && this.active === 1) {
        this.burstRun = run;
        if (this.serveQueue(NET_RX_QUEUE, this.directBurst)) return;
        this.burstRun = null;
      }
      run();
    } finally {
      this.endHold();
    }
  }

  /** The burst to run as a turn of the receive queue (see {@link burst}). */
  private burstRun: (() => void) | null = null;
  /** The receive queue while a burst runs as its turn: frames may go straight to it. */
  private direct: Queue | null = null;
  private readonly directBurst = (q: Queue): void => {
    const run = this.burstRun!;
    this.burstRun = null;
    const outer = this.direct;
    this.direct = q;
    try {
      run();
    } finally {
      this.direct = outer;
    }
  };

  /** Ends a burst or transmit pass; after the outermost, a receive pass per queue with frames. */
  private endHold(): void {
    if (--this.rxHeld !== 0 || this.rxDeferred === 0) return;
    const deferred = this.rxDeferred;
    this.rxDeferred = 0;
    for (let k = 0; k < this.rx.length; k++)
      if ((deferred & (1 << k)) !== 0) this.queueNotify(2 * k);
  }

  /** True when pair `k` (below {@link active}) may be given frames now. */
  private usable(k: number): boolean {
    // Over vhost-user a pair is in use while its receive ring runs (SET_VRING_ENABLE).
    return !this.frontEndControl || this.ctx?.queues[2 * k]?.isActive === true;
  }

  /** The receive queue a frame goes to: one per flow among the pairs in use (steer.ts). */
  private steer(frame: Uint8Array, length: number): NetRxQueue {
    if (this.active === 1) return this.rx[0]!;
    let inUse = 0;
    for (let k = 0; k < this.active; k++) if (this.usable(k)) inUse |= 1 << k;
    return this.rx[inUse === 0 ? 0 : steerPair(frame, length, inUse)]!;
  }

  private canReceive(length: number): boolean {
    if (length < ETH_HLEN || length > NET_MAX_FRAME || !this.link) return true; // dropped anyway
    // The frame's queue is not known yet: every queue in use must have room.
    for (let k = 0; k < this.active; k++) {
      if (!this.usable(k) || this.rx[k]!.frames.pending.canFit(length)) continue;
      // The backend will wait: wake it when room appears.
      this.backendWaiting = true;
      return false;
    }
    return true;
  }

  private receiveFrame(frame: Uint8Array, length: number, header: NetHeader | null): boolean {
    if (!(length >= ETH_HLEN && length <= NET_MAX_FRAME && length <= frame.length)) {
      this.stats.rxMalformed++;
      return true;
    }
    if (!this.link) {
      this.stats.rxLinkDown++;
      return true;
    }
    const rx = this.steer(frame, length);
    if (this.direct !== null && !this.needsReset && rx.index === NET_RX_QUEUE) {
      const before = rx.hasUnpublished;
      const r = rx.deliverNow(this.direct, frame, length, header, this.turn);
      // Delivered (published by the pass after the burst), or to be offered again; buffers
      // this offer gave back unused while looking for room are published by that pass too.
      if (r > 0 || (!before && rx.hasUnpublished)) this.rxDeferred |= 1;
      if (r === 0) this.backendWaiting = true;
      if (r >= 0) return r > 0;
    }
    if (!rx.frames.pending.push(frame, length, header)) {
      this.backendWaiting = true;
      return false;
    }
    if (this.rxHeld > 0) this.rxDeferred |= 1 << (rx.index >>> 1);
    else this.queueNotify(rx.index);
    return true;
  }

  private receive(pair: number, q: Queue): void {
    const rx = this.rx[pair];
    if (rx === undefined) return;
    if (rx.busy) {
      rx.again = true;
      return;
    }
    rx.busy = true;
    try {
      do {
        rx.again = false;
        if ((rx.pass(q, this.turn) || rx.frames.pending.length === 0) && this.backendWaiting) {
          this.backendWaiting = false;
          this.backend.resumeRx();
        }
      } while (rx.again);
    } finally {
      rx.busy = false;
    }
  }

  // ---- snapshots ----

  protected override saveDevice(): NetState {
    const mac = formatMac(this.config.subarray(NET_CONFIG_MAC, NET_CONFIG_MAC + 6));
    const link = { mac, linkUp: this.link, stats: { ...this.stats } };
    return saveNet(this.rx, link, this.queuePairs > 1 ? this.active : null);
  }

  /** See `prepareNetRestore` (snapshot.ts); the commit also sets the MAC, link state and counters. */
  protected override prepareDevice(state: unknown, ctx: DeviceContext | null): () => void {
    // The control queue of the session restored, not of the one now (none, on a new device).
    const ctrl = ctx === null ? -1 : this.controlIndexFor(ctx.features);
    const { saved: s, commit } = prepareNetRestore(state, ctx, this.rx, ctrl);
    return () => {
      restoreNetConfig(this.config, this.offeredFeatures, s);
      this.link = s.linkUp;
      Object.assign(this.stats, s.stats);
      commit();
      this.active = s.activePairs;
      this.backendWaiting = true;
    };
  }
}
