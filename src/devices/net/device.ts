import { DescriptorError, SnapshotError } from '../../errors.js';
import { ChainReader } from '../../iovec/reader.js';
import { ChainWriter } from '../../iovec/writer.js';
import { DescriptorChain } from '../../queue/chain.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from '../../queue/constants.js';
import type { Queue } from '../../queue/queue.js';
import type { DeviceBudgetOptions } from '../budget.js';
import {
  type DeviceContext,
  featureBit,
  hasFeature,
  VIRTIO_ID_NET,
  VirtioDeviceBase,
} from '../device.js';
import { formatMac, type NetBackend, type NetPort, parseMac } from './backend.js';
import { FrameRing } from './frame-ring.js';
import { buildTcpSegment, completeChecksum, parseTcpGso, tcpGsoScratch } from './offload.js';
import {
  ETH_HLEN,
  guestOffloads,
  hostOffloads,
  missingNetRequirement,
  NET_CONFIG_MAC,
  NET_CONFIG_MAX_VIRTQUEUE_PAIRS,
  NET_CONFIG_MTU,
  NET_CONFIG_SIZE,
  NET_CONFIG_STATUS,
  NET_MAX_FRAME,
  NET_OFFLOAD_FEATURES,
  type NetHeader,
  type NetOffloads,
  type NetRxBuffer,
  type NetTxUnsupportedReason,
  parseRxBuffer,
  parseTxRequest,
  plainHeader,
  txFrameScratch,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
  VIRTIO_NET_HDR_GSO_ECN,
  VIRTIO_NET_HDR_GSO_NONE,
  VIRTIO_NET_HDR_GSO_TCPV4,
  VIRTIO_NET_HDR_GSO_TCPV6,
  VIRTIO_NET_HDR_SIZE,
  VIRTIO_NET_S_LINK_UP,
} from './request.js';
import { emptyNetStats, type NetState, type NetStats, readNetState, toBase64 } from './state.js';

/** Queue indices (§5.1.2): one receive/transmit pair, no control queue. */
export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;

export interface NetOptions extends DeviceBudgetOptions {
  /** Where frames go and come from. */
  backend: NetBackend;
  /**
   * The MAC address offered with VIRTIO_NET_F_MAC (6 bytes or "52:54:00:12:34:56"). Default:
   * a random locally administered unicast address. `null`: VIRTIO_NET_F_MAC is not offered.
   */
  mac?: Uint8Array | string | null;
  /** Offer VIRTIO_NET_F_MTU with this MTU (68..65535, §5.1.4.1). Default: not offered. */
  mtu?: number;
  /** Offer VIRTIO_NET_F_STATUS (default true). */
  status?: boolean;
  /** Initial link state (default up). */
  linkUp?: boolean;
  /** Offer VIRTIO_NET_F_MRG_RXBUF (default true). */
  mergeableRxBuffers?: boolean;
  /**
   * Offload features to offer, further limited to what the backend carries (default: all the
   * backend carries). A feature whose requirement (§5.1.3.1) is not offered is not offered.
   */
  offloads?: bigint;
  /** Size of each queue (default 256). */
  queueSize?: number;
  /** Most frames waiting inside the device for receive buffers (default 256). */
  pendingFrames?: number;
  /** Most bytes of frames waiting inside the device (default 1 MiB; at least NET_MAX_FRAME). */
  pendingBytes?: number;
}

const NO_OFFLOADS: NetOffloads = { csum: false, tso4: false, tso6: false, ecn: false };
const ETHERTYPE_VLAN = 0x8100;

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
  private readonly pending: FrameRing;
  private readonly port: NetPort;

  // What the driver negotiated (set at activation).
  private mergeable = false;
  private host: NetOffloads = NO_OFFLOADS;
  private guest: NetOffloads = NO_OFFLOADS;
  private mtuLimit = 0;

  // Transmit side.
  private readonly txChain = new DescriptorChain();
  private readonly txReader = new ChainReader();
  private readonly txReq = txFrameScratch();
  /** The device's scratch buffer for one transmitted frame. */
  private readonly txBuf = new Uint8Array(NET_MAX_FRAME);
  private txBlocked = false;
  private txResumes = 0;
  private txBusy = false;
  private txAgain = false;

  // Receive side: chains popped and held, as a ring over lazily created chain objects.
  private held: DescriptorChain[] = [];
  private heldFirst = 0;
  private heldCount = 0;
  private heldBytes = 0;
  /** Ring slots the held chains take (an indirect chain takes one). */
  private heldSlots = 0;
  private heldCap = 1;
  private readonly rxInfo: NetRxBuffer = { kind: 'buffer', capacity: 0 };
  private readonly rxWriter = new ChainWriter();
  private readonly frameHdr = plainHeader();
  private readonly outHdr = plainHeader();
  private outBuf: Uint8Array;
  private outOff = 0;
  private outLen = 0;
  private rxBusy = false;
  private rxAgain = false;
  /** Used entries added to the receive queue and not yet published. */
  private rxUsed = false;
  /** A frame was removed from the pending ring in this pass. */
  private rxFreed = false;
  /** The backend was refused a frame and waits for {@link NetBackend.resumeRx}. */
  private backendWaiting = false;

  // Software segmentation of the oldest pending frame.
  private readonly seg = tcpGsoScratch();
  private segActive = false;
  private segIndex = 0;
  /** Scratch for one software segment. */
  private readonly segBuf = new Uint8Array(NET_MAX_FRAME);

  constructor(options: NetOptions) {
    const mtu = options.mtu ?? null;
    if (mtu !== null && !(Number.isInteger(mtu) && mtu >= 68 && mtu <= 65535)) {
      // §5.1.4.1: the device MUST set mtu to between 68 and 65535.
      throw new RangeError(`mtu ${mtu} is not in 68..65535`);
    }
    const mac = resolveMac(options.mac);
    const status = options.status ?? true;
    let features =
      featureBit(VIRTIO_F_EVENT_IDX) |
      featureBit(VIRTIO_F_INDIRECT_DESC) |
      featureBit(VIRTIO_F_RING_PACKED);
    if (mac !== null) features |= featureBit(VIRTIO_NET_F_MAC);
    if (status) features |= featureBit(VIRTIO_NET_F_STATUS);
    if (mtu !== null) features |= featureBit(VIRTIO_NET_F_MTU);
    if (options.mergeableRxBuffers ?? true) features |= featureBit(VIRTIO_NET_F_MRG_RXBUF);
    let offloads =
      options.backend.offloads & NET_OFFLOAD_FEATURES & (options.offloads ?? NET_OFFLOAD_FEATURES);
    // Offer no feature whose requirement is not offered (§5.1.3.1).
    for (
      let bit = missingNetRequirement(offloads);
      bit >= 0;
      bit = missingNetRequirement(offloads)
    ) {
      offloads &= ~featureBit(bit);
    }
    features |= offloads;
    const queueSize = options.queueSize ?? 256;
    super(VIRTIO_ID_NET, [queueSize, queueSize], features, NET_CONFIG_SIZE, options);
    this.backend = options.backend;
    this.mtu = mtu;
    this.link = options.linkUp ?? true;
    const pendingBytes = options.pendingBytes ?? 1 << 20;
    if (!(pendingBytes >= NET_MAX_FRAME))
      throw new RangeError(`pendingBytes must be at least ${NET_MAX_FRAME}`);
    this.pending = new FrameRing(options.pendingFrames ?? 256, pendingBytes);
    this.outBuf = this.pending.data;
    const cfg = new DataView(this.config.buffer);
    if (mac !== null) this.config.set(mac, NET_CONFIG_MAC);
    cfg.setUint16(NET_CONFIG_STATUS, status && this.link ? VIRTIO_NET_S_LINK_UP : 0, true);
    // max_virtqueue_pairs exists only with MQ (not offered: it needs CTRL_VQ); it reads 1.
    cfg.setUint16(NET_CONFIG_MAX_VIRTQUEUE_PAIRS, 1, true);
    if (mtu !== null) cfg.setUint16(NET_CONFIG_MTU, mtu, true);
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
    return this.pending.length;
  }

  /** Receive chains the device popped and holds (mergeable buffers waiting for a frame to fit). */
  get heldRxChains(): number {
    return this.heldCount;
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
    if (this.backendWaiting && this.pending.length < this.pending.maxFrames) {
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
    this.guest = guestOffloads(f);
    this.mtuLimit = this.mtu !== null && hasFeature(f, VIRTIO_NET_F_MTU) ? this.mtu : 0;
    const rxq = ctx.queues[NET_RX_QUEUE];
    this.heldCap = Math.max(1, rxq?.size ?? 1);
    this.heldFirst = 0;
    this.heldCount = 0;
    this.heldBytes = 0;
    this.heldSlots = 0;
  }

  protected override onReset(): void {
    // Chains belong to the driver session that ends; pending frames belong to the link.
    this.heldFirst = 0;
    this.heldCount = 0;
    this.heldBytes = 0;
    this.heldSlots = 0;
    this.txBlocked = false;
    this.rxUsed = false;
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
      reader.readExact(this.txBuf, 0, req.length);
      const resumes = this.txResumes;
      if (!this.backend.send(this.txBuf, req.length, req.header)) {
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

  // ---- receive ----

  private canReceive(length: number): boolean {
    if (length < ETH_HLEN || length > NET_MAX_FRAME || !this.link) return true; // dropped anyway
    if (this.pending.canFit(length)) return true;
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
    if (!this.pending.push(frame, length, header)) {
      this.backendWaiting = true;
      return false;
    }
    this.queueNotify(NET_RX_QUEUE);
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
    this.rxFreed = false;
    // prepareOut first: a turn that finds nothing pending schedules no continuation. Chains
    // count against the turn as holdNext takes them; bytes are checked between frames.
    while (this.prepareOut()) {
      if (this.bytesLeft <= 0) {
        this.continueLater(NET_RX_QUEUE);
        break;
      }
      const need = VIRTIO_NET_HDR_SIZE + this.outLen;
      const k = this.gather(q, need);
      if (k === 0) break; // wait for the driver's next receive buffers
      if (k < 0) {
        this.stats.rxTooBig++;
      } else {
        this.writeOut(q, k);
        this.stats.rxFrames++;
        this.stats.rxBytes += this.outLen;
        this.spend(this.outLen);
      }
      this.advanceOut();
    }
    if (this.rxUsed) {
      this.rxUsed = false;
      this.publish(NET_RX_QUEUE);
    }
    if (this.rxFreed && this.backendWaiting) {
      this.backendWaiting = false;
      this.backend.resumeRx();
    }
  }

  /** The held chain at position `i` (0: oldest), created on first use. */
  private heldAt(i: number): DescriptorChain {
    const slot = (this.heldFirst + i) % this.heldCap;
    let c = this.held[slot];
    if (c === undefined) {
      c = new DescriptorChain();
      this.held[slot] = c;
    }
    return c;
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
      const c = q.popOrEnableNotification(this.heldAt(this.heldCount));
      if (c === null) return false;
      if (parseRxBuffer(c, this.rxInfo).kind === 'unsupported') {
        this.stats.rxBadBuffers++;
        q.addUsed(c.head, 0);
        this.rxUsed = true;
        continue;
      }
      this.heldCount++;
      this.heldBytes += c.writableLength;
      this.heldSlots += c.ringCount;
      return true;
    }
  }

  /**
   * Makes sure the held chains can take `need` bytes: returns how many chains the frame uses,
   * 0 to wait for more buffers, or -1 when it can never fit (drop it).
   */
  private gather(q: Queue, need: number): number {
    if (!this.mergeable) {
      // §5.1.6.3.2: without MRG_RXBUF the device MUST use a single descriptor chain.
      if (this.heldCount === 0 && !this.holdNext(q)) return 0;
      return this.heldAt(0).writableLength >= need ? 1 : -1;
    }
    while (this.heldBytes < need) {
      // Every slot of the ring is held: the driver cannot add a buffer, the frame never fits.
      if (this.heldSlots >= q.size || this.heldCount >= this.heldCap) return -1;
      if (!this.holdNext(q)) return 0;
    }
    let k = 0;
    for (let sum = 0; sum < need; k++) sum += this.heldAt(k).writableLength;
    return k;
  }

  /**
   * Writes the outgoing frame into the first `k` held chains: the header (num_buffers = k)
   * and the frame, every chain but the last filled completely (§5.1.6.4.1), and marks them used.
   */
  private writeOut(q: Queue, k: number): void {
    const w = this.rxWriter;
    const h = this.outHdr;
    let src = this.outOff;
    let left = this.outLen;
    for (let j = 0; j < k; j++) {
      const c = this.heldAt(j);
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
      w.write(this.outBuf, src, n);
      src += n;
      left -= n;
      q.addUsed(c.head, w.bytesWritten);
      this.heldBytes -= c.writableLength;
      this.heldSlots -= c.ringCount;
    }
    w.reset();
    this.heldFirst = (this.heldFirst + k) % this.heldCap;
    this.heldCount -= k;
    this.rxUsed = true;
  }

  private dropOldest(): void {
    this.pending.shift();
    this.rxFreed = true;
  }

  /** Done with the outgoing frame (delivered or dropped): on to the next segment or frame. */
  private advanceOut(): void {
    if (this.segActive) {
      this.segIndex++;
      if (this.segIndex < this.seg.segments) return;
      this.segActive = false;
      this.segIndex = 0;
    }
    this.dropOldest();
  }

  /** True when the receiving driver negotiated what a frame of `gsoType` needs (§5.1.6.4.1). */
  private guestTakesGso(gsoType: number): boolean {
    const gso = gsoType & ~VIRTIO_NET_HDR_GSO_ECN;
    const g = this.guest;
    const ok =
      (gso === VIRTIO_NET_HDR_GSO_TCPV4 && g.tso4) || (gso === VIRTIO_NET_HDR_GSO_TCPV6 && g.tso6);
    return ok && (gso === gsoType || g.ecn);
  }

  /** True when a frame without GSO is longer than the negotiated MTU allows (§5.1.4.1). */
  private overMtu(buf: Uint8Array, off: number, len: number): boolean {
    if (this.mtuLimit === 0) return false;
    const tag = ((buf[off + 12]! << 8) | buf[off + 13]!) === ETHERTYPE_VLAN ? 4 : 0;
    return len > this.mtuLimit + ETH_HLEN + tag;
  }

  /**
   * Sets the outgoing frame (out*) to the next frame or software segment to deliver, adapted
   * to what the driver negotiated; drops the frames that cannot be delivered. False when
   * nothing is pending.
   */
  private prepareOut(): boolean {
    const ring = this.pending;
    const out = this.outHdr;
    while (ring.length > 0) {
      const off = ring.offsetAt(0);
      const len = ring.lengthAt(0);
      if (this.segActive) {
        const n = buildTcpSegment(ring.data, off, this.seg, this.segIndex, this.segBuf);
        if (this.overMtu(this.segBuf, 0, n)) {
          this.stats.rxOverMtu++;
          this.advanceOut();
          continue;
        }
        setPlain(out);
        this.outBuf = this.segBuf;
        this.outOff = 0;
        this.outLen = n;
        return true;
      }
      const h = ring.headerAt(0, this.frameHdr);
      if (h.gsoType !== VIRTIO_NET_HDR_GSO_NONE) {
        if (this.guestTakesGso(h.gsoType) && h.flags !== 0) {
          copyHeader(h, out);
          this.outBuf = ring.data;
          this.outOff = off;
          this.outLen = len;
          return true;
        }
        // §5.1.6.4.1: no GSO type the driver did not negotiate: segment in software.
        if (!parseTcpGso(ring.data, off, len, h, this.seg)) {
          this.stats.rxMalformed++;
          this.dropOldest();
          continue;
        }
        this.stats.rxSoftwareSegmented++;
        this.segActive = true;
        this.segIndex = 0;
        continue;
      }
      if ((h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) !== 0 && !this.guest.csum) {
        // §5.1.6.4.1: without GUEST_CSUM, flags are 0 and the packet fully checksummed.
        if (!completeChecksum(ring.data, off, len, h.csumStart, h.csumOffset)) {
          this.stats.rxMalformed++;
          this.dropOldest();
          continue;
        }
        ring.setOldestFlags(0);
        h.flags = 0;
        this.stats.rxSoftwareChecksums++;
      }
      if (this.overMtu(ring.data, off, len)) {
        this.stats.rxOverMtu++;
        this.dropOldest();
        continue;
      }
      if (h.flags !== 0 && h.csumStart + h.csumOffset + 2 > len) {
        this.stats.rxMalformed++;
        this.dropOldest();
        continue;
      }
      copyHeader(h, out);
      out.gsoType = VIRTIO_NET_HDR_GSO_NONE;
      this.outBuf = ring.data;
      this.outOff = off;
      this.outLen = len;
      return true;
    }
    return false;
  }

  // ---- snapshots ----

  protected override saveDevice(): NetState {
    const ring = this.pending;
    const hdr = plainHeader();
    const pending = [];
    for (let i = 0; i < ring.length; i++) {
      ring.headerAt(i, hdr);
      pending.push({
        data: toBase64(ring.data, ring.offsetAt(i), ring.lengthAt(i)),
        header: [
          hdr.flags,
          hdr.gsoType,
          hdr.hdrLen,
          hdr.gsoSize,
          hdr.csumStart,
          hdr.csumOffset,
        ] as [number, number, number, number, number, number],
      });
    }
    const heldRx = [];
    for (let i = 0; i < this.heldCount; i++) {
      const c = this.heldAt(i);
      const buffers: [number, number][] = [];
      for (let d = 0; d < c.count; d++) buffers.push([c.addrs[d]!, c.lens[d]!]);
      heldRx.push({ head: c.head, slots: c.ringCount, buffers });
    }
    return {
      mac: formatMac(this.config.subarray(NET_CONFIG_MAC, NET_CONFIG_MAC + 6)),
      linkUp: this.link,
      stats: { ...this.stats },
      pending,
      segmentsDone: this.segActive ? this.segIndex : 0,
      heldRx,
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
    const s = readNetState(state, { maxPending: this.pending.maxFrames, maxHeld: rxq?.size ?? 0 });
    // A fresh ring places frames one after another from offset 0.
    let total = 0;
    s.pending.forEach((f, i) => {
      total += f.data.length;
      if (total > this.pending.capacity) {
        throw new SnapshotError(
          `device.net.pending.${i}`,
          "does not fit the device's pending ring",
        );
      }
    });
    const hdr = plainHeader();
    if (s.segmentsDone > 0) {
      const f = s.pending[0]!;
      setHeader(hdr, f.header);
      const seg = tcpGsoScratch();
      if (!parseTcpGso(f.data, 0, f.data.length, hdr, seg) || s.segmentsDone >= seg.segments) {
        throw new SnapshotError(
          'device.net.segmentsDone',
          'does not match the oldest pending frame',
        );
      }
    }
    const held = this.readHeld(s.heldRx, rxq, ctx);
    // A packed ring tracks the buffers in flight: they must be exactly the held chains.
    if (rxq?.isActive && rxq.inFlight !== undefined && rxq.inFlight !== held.length) {
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
      const ring = this.pending;
      ring.clear();
      for (const f of s.pending) {
        setHeader(hdr, f.header);
        ring.push(f.data, f.data.length, hdr);
      }
      this.segActive = false;
      this.segIndex = 0;
      if (s.segmentsDone > 0) {
        ring.headerAt(0, hdr);
        parseTcpGso(ring.data, ring.offsetAt(0), ring.lengthAt(0), hdr, this.seg);
        this.segActive = true;
        this.segIndex = s.segmentsDone;
      }
      this.held = held.map((h) => h.chain);
      this.heldFirst = 0;
      this.heldCount = held.length;
      this.heldBytes = 0;
      this.heldSlots = 0;
      for (const h of held) {
        this.heldBytes += h.chain.writableLength;
        this.heldSlots += h.slots;
      }
      this.backendWaiting = true;
    };
  }

  /** Rebuilds saved held receive chains as new chains, validated; changes nothing. */
  private readHeld(
    chains: NetState['heldRx'],
    rxq: Queue | undefined,
    ctx: DeviceContext | null,
  ): { chain: DescriptorChain; slots: number }[] {
    if (chains.length === 0) return [];
    if (ctx === null || rxq === undefined || !rxq.isActive)
      throw new SnapshotError('device.net.heldRx', 'the receive queue is not active');
    const info: NetRxBuffer = { kind: 'buffer', capacity: 0 };
    let slotsTotal = 0;
    return chains.map((saved, i) => {
      const path = `device.net.heldRx.${i}`;
      slotsTotal += saved.slots;
      if (slotsTotal > rxq.size)
        throw new SnapshotError(`${path}.slots`, `held chains take over ${rxq.size} ring slots`);
      let c: DescriptorChain;
      try {
        // Receive buffers are device-writable from the first one on.
        c = rxq.reviveChain(saved.head, saved.slots, saved.buffers, 0);
      } catch (e) {
        if (!(e instanceof DescriptorError)) throw e;
        const badHead = e.code === 'DESC_HEAD_OUT_OF_RANGE' || e.code === 'DESC_PACKED_BAD_ID';
        throw new SnapshotError(`${path}.${badHead ? 'head' : 'buffers'}`, e.message);
      }
      if (parseRxBuffer(c, info).kind === 'unsupported') {
        throw new SnapshotError(`${path}.buffers`, 'smaller than the virtio header');
      }
      return { chain: c, slots: saved.slots };
    });
  }
}

function setHeader(h: NetHeader, f: readonly number[]): void {
  h.flags = f[0]!;
  h.gsoType = f[1]!;
  h.hdrLen = f[2]!;
  h.gsoSize = f[3]!;
  h.csumStart = f[4]!;
  h.csumOffset = f[5]!;
}

function setPlain(h: NetHeader): void {
  h.flags = 0;
  h.gsoType = 0;
  h.hdrLen = 0;
  h.gsoSize = 0;
  h.csumStart = 0;
  h.csumOffset = 0;
}

function copyHeader(from: NetHeader, to: NetHeader): void {
  to.flags = from.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM;
  to.gsoType = from.gsoType;
  to.hdrLen = from.hdrLen;
  to.gsoSize = from.gsoSize;
  to.csumStart = from.flags !== 0 ? from.csumStart : 0;
  to.csumOffset = from.flags !== 0 ? from.csumOffset : 0;
}

function resolveMac(mac: Uint8Array | string | null | undefined): Uint8Array | null {
  if (mac === null) return null;
  if (mac === undefined) {
    const m = new Uint8Array(6);
    globalThis.crypto.getRandomValues(m);
    // A locally administered (bit 1) unicast (bit 0 clear) address.
    m[0] = (m[0]! & 0xfe) | 0x02;
    return m;
  }
  const bytes = typeof mac === 'string' ? parseMac(mac) : mac;
  if (bytes.length !== 6) throw new RangeError('a MAC address has 6 bytes');
  return Uint8Array.from(bytes);
}
