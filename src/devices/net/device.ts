import { SnapshotError } from '../../errors.js';
import { copyBytes, LARGE_COPY_BYTES } from '../../iovec/copy.js';
import { ChainReader } from '../../iovec/reader.js';
import { ChainWriter } from '../../iovec/writer.js';
import { DescriptorChain } from '../../queue/chain.js';
import type { Queue } from '../../queue/queue.js';
import { type DeviceContext, hasFeature, VIRTIO_ID_NET, VirtioDeviceBase } from '../device.js';
import { formatMac, type NetBackend, type NetPort } from './backend.js';
import { type NetOptions, planNetDevice, writeNetConfig } from './config.js';
import { HeldRxChains } from './held-rx.js';
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
  type NetOffloads,
  type NetRxBuffer,
  type NetTxUnsupportedReason,
  parseRxBuffer,
  parseTxRequest,
  txFrameScratch,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_SIZE,
  VIRTIO_NET_S_LINK_UP,
} from './request.js';
import { RxFrames } from './rx-frames.js';
import { emptyNetStats, type NetState, type NetStats, readNetState } from './state.js';

/** Queue indices (§5.1.2): one receive/transmit pair, no control queue. */
export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;

const NO_OFFLOADS: NetOffloads = { csum: false, tso4: false, tso6: false, ecn: false };

/**
 * virtio-net (device id 1, VIRTIO 1.2 §5.1) with one receive/transmit queue pair, in front of
 * a pluggable {@link NetBackend}.
 *
 * Transmit: each chain is a 12-byte virtio header and a frame; the header is parsed into a
 * typed request, checked against the negotiated features (an unsupported one is dropped and
 * counted, §5.1.6.2) and the frame is handed to the backend. When the backend cannot take it,
 * the chain is given back to the ring (`undoPop`) and transmission waits for the backend.
 *
 * Receive: frames from the backend wait in a bounded ring inside the device until the driver
 * posts receive buffers; when the ring is full the backend is told to wait, so no frame is
 * lost. With VIRTIO_NET_F_MRG_RXBUF a frame fills as many receive chains as it needs
 * (`num_buffers`); the device holds the chains it popped until the frame fits. Offloads the
 * receiving driver did not negotiate are done in software: a partial checksum is completed,
 * a TCP segmentation offload frame is cut into segments.
 *
 * Frames waiting in the device survive a device reset (they belong to the link, not to the
 * driver session) and are part of the saved state. The per-frame path allocates nothing in
 * steady state.
 */
export class NetDevice extends VirtioDeviceBase {
  readonly backend: NetBackend;
  readonly stats: NetStats = emptyNetStats();
  /** The MTU offered with VIRTIO_NET_F_MTU, or null. */
  readonly mtu: number | null;
  /** The reason of the last transmit chain dropped as unsupported. */
  lastTxUnsupported: NetTxUnsupportedReason | null = null;

  private link: boolean;
  private readonly frames: RxFrames;
  private readonly port: NetPort;

  // What the driver negotiated (set at activation).
  private mergeable = false;
  private host: NetOffloads = NO_OFFLOADS;

  // Transmit side.
  private readonly txChain = new DescriptorChain();
  private readonly txReader = new ChainReader();
  private readonly txReq = txFrameScratch();
  /** The device's scratch buffer for one transmitted frame. */
  private readonly txBuf = new Uint8Array(NET_MAX_FRAME + 8);
  private readonly txView = new DataView(this.txBuf.buffer);
  /**
   * `txBuf` from each of its first eight offsets: a large frame is copied to the one whose
   * address has the guest buffer's alignment, since V8 copies out of shared memory a byte at a
   * time when the two addresses are not aligned alike (about 5x slower for 1500 bytes).
   */
  private readonly txAligned = Array.from({ length: 8 }, (_, k) => this.txBuf.subarray(k));
  private txBlocked = false;
  private txResumes = 0;
  private txBusy = false;
  private txAgain = false;

  // Receive side: chains popped and held until a frame fits them.
  private readonly held = new HeldRxChains();
  private readonly rxInfo: NetRxBuffer = { kind: 'buffer', capacity: 0 };
  private readonly rxWriter = new ChainWriter();
  private rxBusy = false;
  private rxAgain = false;
  /** Used entries added to the receive queue and not yet published. */
  private rxUsed = false;
  /** The backend was refused a frame and waits for {@link NetBackend.resumeRx}. */
  private backendWaiting = false;
  /** A frame arrived during a transmit pass: the receive side runs after it. */
  private rxDeferred = false;

  constructor(options: NetOptions) {
    const plan = planNetDevice(options);
    super(VIRTIO_ID_NET, [plan.queueSize, plan.queueSize], plan.features, NET_CONFIG_SIZE, options);
    this.backend = options.backend;
    this.mtu = plan.mtu;
    this.link = options.linkUp ?? true;
    this.frames = new RxFrames(options.pendingFrames ?? 256, plan.pendingBytes, this.stats);
    writeNetConfig(this.config, plan, this.link);
    this.port = {
      receive: (frame, length, header) => this.receiveFrame(frame, length, header),
      canReceive: (length) => this.canReceive(length),
      resumeTx: () => {
        this.txBlocked = false;
        this.txResumes++;
        this.queueNotify(NET_TX_QUEUE);
      },
    };
    this.backend.attach(this.port);
  }

  /** The MAC address in the configuration space. */
  get mac(): Uint8Array {
    return this.config.slice(NET_CONFIG_MAC, NET_CONFIG_MAC + 6);
  }

  get linkUp(): boolean {
    return this.link;
  }

  /** Frames waiting inside the device for receive buffers. */
  get pendingFrames(): number {
    return this.frames.pending.length;
  }

  /** Receive chains the device popped and holds (mergeable buffers waiting for a frame to fit). */
  get heldRxChains(): number {
    return this.held.count;
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
   * Processes both queues as if the driver had notified them, and wakes a waiting backend.
   * Call it after restoring a snapshot (once every device of the link is restored), as the
   * restored device does no I/O on its own.
   */
  kick(): void {
    this.queueNotify(NET_TX_QUEUE);
    this.queueNotify(NET_RX_QUEUE);
    const pending = this.frames.pending;
    if (this.backendWaiting && pending.length < pending.maxFrames) {
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
    this.mergeable = hasFeature(f, VIRTIO_NET_F_MRG_RXBUF);
    this.host = hostOffloads(f);
    this.frames.configure(
      guestOffloads(f),
      this.mtu !== null && hasFeature(f, VIRTIO_NET_F_MTU) ? this.mtu : 0,
    );
    this.held.reset(ctx.queues[NET_RX_QUEUE]?.size ?? 1);
  }

  protected override onReset(): void {
    // Chains belong to the driver session that ends; pending frames belong to the link.
    this.held.reset(this.held.cap);
    this.txBlocked = false;
    this.rxUsed = false;
    this.rxDeferred = false;
  }

  protected processQueue(index: number, queue: Queue): void {
    if (index === NET_RX_QUEUE) this.receive(queue);
    else if (index === NET_TX_QUEUE) this.transmit(queue);
  }

  // ---- transmit ----

  private transmit(q: Queue): void {
    if (this.txBusy) {
      this.txAgain = true;
      return;
    }
    this.txBusy = true;
    try {
      do {
        this.txAgain = false;
        this.transmitPass(q);
      } while (this.txAgain);
    } finally {
      this.txBusy = false;
    }
    // Frames the backend handed back while the transmit side ran (a reflector, a loop) are
    // delivered in one receive pass: one publication, one interrupt decision.
    if (this.rxDeferred) {
      this.rxDeferred = false;
      this.queueNotify(NET_RX_QUEUE);
    }
  }

  private transmitPass(q: Queue): void {
    let any = false;
    const reader = this.txReader;
    while (!this.txBlocked && this.withinBudget(NET_TX_QUEUE)) {
      const c = q.popOrEnableNotification(this.txChain);
      if (c === null) break;
      const req = parseTxRequest(c, reader, this.host, this.txReq);
      if (req.kind === 'unsupported') {
        // §5.1.6.2: a frame the device cannot send as described is dropped, and counted.
        this.stats.txUnsupported++;
        this.lastTxUnsupported = req.reason;
        q.addUsed(c.head, 0);
        any = true;
        continue;
      }
      if (!this.link) {
        this.stats.txLinkDown++;
        q.addUsed(c.head, 0);
        any = true;
        continue;
      }
      const frame = this.copyTxFrame(reader, req.length);
      const resumes = this.txResumes;
      if (!this.backend.send(frame, req.length, req.header)) {
        // Back-pressure: the chain goes back to the ring and is sent after resumeTx.
        q.undoPop();
        if (this.txResumes !== resumes) continue;
        this.txBlocked = true;
        break;
      }
      this.stats.txFrames++;
      this.stats.txBytes += req.length;
      this.spend(req.length);
      q.addUsed(c.head, 0);
      any = true;
    }
    if (any) this.publish(NET_TX_QUEUE);
  }

  /** Copies the frame the reader is at out of guest memory; returns the buffer it is in. */
  private copyTxFrame(reader: ChainReader, len: number): Uint8Array {
    const at = reader.claim(len);
    if (at < 0) {
      // Spread over several buffers.
      reader.readExact(this.txBuf, 0, len);
      return this.txBuf;
    }
    const src = reader.claimed;
    if (len < LARGE_COPY_BYTES) {
      copyBytes(this.txBuf, this.txView, 0, src, reader.claimedView, at, len);
      return this.txBuf;
    }
    const dst = this.txAligned[(src.byteOffset + at) & 7]!;
    dst.set(src.subarray(at, at + len));
    return dst;
  }

  // ---- receive ----

  private canReceive(length: number): boolean {
    if (length < ETH_HLEN || length > NET_MAX_FRAME || !this.link) return true; // dropped anyway
    if (this.frames.pending.canFit(length)) return true;
    // The backend will wait: wake it when room appears.
    this.backendWaiting = true;
    return false;
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
    if (!this.frames.pending.push(frame, length, header)) {
      this.backendWaiting = true;
      return false;
    }
    if (this.txBusy) this.rxDeferred = true;
    else this.queueNotify(NET_RX_QUEUE);
    return true;
  }

  private receive(q: Queue): void {
    if (this.rxBusy) {
      this.rxAgain = true;
      return;
    }
    this.rxBusy = true;
    try {
      do {
        this.rxAgain = false;
        this.receivePass(q);
      } while (this.rxAgain);
    } finally {
      this.rxBusy = false;
    }
  }

  private receivePass(q: Queue): void {
    const frames = this.frames;
    frames.freed = false;
    // prepare first: a turn that finds nothing pending schedules no continuation. Chains
    // count against the turn as holdNext takes them; bytes are checked between frames.
    while (frames.prepare()) {
      if (this.bytesLeft <= 0) {
        this.continueLater(NET_RX_QUEUE);
        break;
      }
      const need = VIRTIO_NET_HDR_SIZE + frames.len;
      const k = this.gather(q, need);
      if (k === 0) break; // wait for the driver's next receive buffers
      if (k < 0) {
        this.stats.rxTooBig++;
      } else {
        this.writeOut(q, k);
        this.stats.rxFrames++;
        this.stats.rxBytes += frames.len;
        this.spend(frames.len);
      }
      frames.advance();
    }
    if (this.rxUsed) {
      this.rxUsed = false;
      this.publish(NET_RX_QUEUE);
    }
    if (frames.freed && this.backendWaiting) {
      this.backendWaiting = false;
      this.backend.resumeRx();
    }
  }

  /**
   * Pops one more receive chain into the held ring; false when the driver has none, or when
   * this turn may take no more chains (the rest continues in a later turn).
   */
  private holdNext(q: Queue): boolean {
    for (;;) {
      // Every chain taken counts against the turn: with MRG_RXBUF one frame may take up to a
      // ring's worth of small buffers, and a guest may keep posting unusable ones.
      if (!this.withinBudget(NET_RX_QUEUE)) return false;
      const c = q.popOrEnableNotification(this.held.at(this.held.count));
      if (c === null) return false;
      if (parseRxBuffer(c, this.rxInfo).kind === 'unsupported') {
        this.stats.rxBadBuffers++;
        q.addUsed(c.head, 0);
        this.rxUsed = true;
        continue;
      }
      this.held.keepNext();
      return true;
    }
  }

  /**
   * Makes sure the held chains can take `need` bytes: returns how many chains the frame uses,
   * 0 to wait for more buffers, or -1 when it can never fit (drop it).
   */
  private gather(q: Queue, need: number): number {
    const held = this.held;
    if (!this.mergeable) {
      // §5.1.6.3.2: without MRG_RXBUF the device MUST use a single descriptor chain.
      if (held.count === 0 && !this.holdNext(q)) return 0;
      return held.at(0).writableLength >= need ? 1 : -1;
    }
    while (held.bytes < need) {
      // Every slot of the ring is held: the driver cannot add a buffer, the frame never fits.
      if (held.slots >= q.size || held.count >= held.cap) return -1;
      if (!this.holdNext(q)) return 0;
    }
    let k = 0;
    for (let sum = 0; sum < need; k++) sum += held.at(k).writableLength;
    return k;
  }

  /**
   * Writes the frame to deliver into the first `k` held chains: the header (num_buffers = k)
   * and the frame, every chain but the last filled completely (§5.1.6.4.1), and marks them used.
   */
  private writeOut(q: Queue, k: number): void {
    const w = this.rxWriter;
    const frames = this.frames;
    const h = frames.header;
    let src = frames.off;
    let left = frames.len;
    if (k === 1) {
      // The usual case: header and frame in the first buffer's one piece, written in place.
      const c = this.held.at(0);
      w.reset(c);
      const at = w.claim(VIRTIO_NET_HDR_SIZE + left);
      if (at >= 0) {
        const b = w.claimed;
        b[at] = h.flags;
        b[at + 1] = h.gsoType;
        b[at + 2] = h.hdrLen;
        b[at + 3] = h.hdrLen >>> 8;
        b[at + 4] = h.gsoSize;
        b[at + 5] = h.gsoSize >>> 8;
        b[at + 6] = h.csumStart;
        b[at + 7] = h.csumStart >>> 8;
        b[at + 8] = h.csumOffset;
        b[at + 9] = h.csumOffset >>> 8;
        b[at + 10] = 1; // num_buffers
        b[at + 11] = 0;
        copyBytes(b, w.claimedView, at + VIRTIO_NET_HDR_SIZE, frames.buf, frames.view, src, left);
        q.addUsed(c.head, VIRTIO_NET_HDR_SIZE + left);
        w.reset();
        this.held.release(1);
        this.rxUsed = true;
        return;
      }
    }
    for (let j = 0; j < k; j++) {
      const c = this.held.at(j);
      w.reset(c);
      if (j === 0) {
        w.writeU8(h.flags);
        w.writeU8(h.gsoType);
        w.writeU16(h.hdrLen);
        w.writeU16(h.gsoSize);
        w.writeU16(h.csumStart);
        w.writeU16(h.csumOffset);
        // §5.1.6.4.1: num_buffers is 1 without MRG_RXBUF, else the chains the frame uses.
        w.writeU16(k);
      }
      const n = Math.min(left, w.remaining);
      w.write(frames.buf, src, n);
      src += n;
      left -= n;
      q.addUsed(c.head, w.bytesWritten);
    }
    w.reset();
    this.held.release(k);
    this.rxUsed = true;
  }

  // ---- snapshots ----

  protected override saveDevice(): NetState {
    return {
      mac: formatMac(this.config.subarray(NET_CONFIG_MAC, NET_CONFIG_MAC + 6)),
      linkUp: this.link,
      stats: { ...this.stats },
      ...this.frames.save(),
      heldRx: this.held.save(),
    };
  }

  /**
   * Validates a saved state: frames waiting in the device, held receive chains (each buffer
   * checked against guest memory again, and against the packed ring's buffers in flight),
   * segmentation progress, link state, MAC and counters; throws {@link SnapshotError} on
   * anything inconsistent, changing nothing. The commit replaces what the device holds.
   */
  protected override prepareDevice(state: unknown, ctx: DeviceContext | null): () => void {
    const rxq = ctx?.queues[NET_RX_QUEUE];
    const txq = ctx?.queues[NET_TX_QUEUE];
    const s = readNetState(state, {
      maxPending: this.frames.pending.maxFrames,
      maxHeld: rxq?.size ?? 0,
    });
    const commitFrames = this.frames.prepareRestore(s.pending, s.segmentsDone);
    const commitHeld = this.held.prepareRestore(s.heldRx, ctx === null ? undefined : rxq);
    // A packed ring tracks the buffers in flight: they must be exactly the held chains.
    if (rxq?.isActive && rxq.inFlight !== undefined && rxq.inFlight !== s.heldRx.length) {
      throw new SnapshotError(
        'device.net.heldRx',
        `the receive queue has ${rxq.inFlight} buffers in flight`,
      );
    }
    if (txq?.isActive && (txq.inFlight ?? 0) !== 0) {
      throw new SnapshotError('device.net', 'the transmit queue has buffers in flight');
    }
    return () => {
      this.config.set(s.mac, NET_CONFIG_MAC);
      this.link = s.linkUp;
      if (hasFeature(this.offeredFeatures, VIRTIO_NET_F_STATUS)) {
        new DataView(this.config.buffer).setUint16(
          NET_CONFIG_STATUS,
          s.linkUp ? VIRTIO_NET_S_LINK_UP : 0,
          true,
        );
      }
      Object.assign(this.stats, s.stats);
      commitFrames();
      commitHeld();
      this.backendWaiting = true;
    };
  }
}
