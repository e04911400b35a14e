/**
 * A multiqueue virtio-net guest for the tests: a driver over virtio-mmio that sets up every
 * receive/transmit pair and the control queue (VIRTIO 1.2 §5.1.2, §5.1.5), sends control
 * commands (§5.1.6.5), sends and receives frames on a chosen pair; and a backend the test feeds
 * frames into by hand.
 */

import { featureBit, VIRTIO_ID_NET } from '../../src/devices/device.js';
import {
  type NetBackend,
  NetDevice,
  type NetHeader,
  type NetOptions,
  type NetPort,
  VIRTIO_NET_F_CTRL_VQ,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MQ,
  VIRTIO_NET_F_MRG_RXBUF,
} from '../../src/devices/net/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { MmioGuestDriver } from '../../src/driver/mmio.js';
import type { DriverQueue } from '../../src/driver/queue.js';
import { GuestMemory } from '../../src/memory/index.js';
import { silentLogger } from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';
import { type World, WorldBus } from './net-rig.js';

export const MQ_FEATURES =
  featureBit(VIRTIO_NET_F_MAC) |
  featureBit(VIRTIO_NET_F_MRG_RXBUF) |
  featureBit(VIRTIO_NET_F_CTRL_VQ) |
  featureBit(VIRTIO_NET_F_MQ);

const HDR = 12;
const RX_BUF = 1526;
const TX_BUF = 1530;

/** A backend whose incoming frames the test pushes, and which keeps what the device sends. */
export class HandBackend implements NetBackend {
  readonly offloads = 0n;
  port: NetPort | null = null;
  readonly sent: Uint8Array[] = [];
  resumes = 0;
  attach(port: NetPort): void {
    this.port = port;
  }
  detach(port: NetPort): void {
    if (this.port === port) this.port = null;
  }
  send(frame: Uint8Array, length: number, _header: NetHeader): boolean {
    this.sent.push(frame.slice(0, length));
    return true;
  }
  resumeRx(): void {
    this.resumes++;
  }
  /** Offers a frame to the device; false when it has no room. */
  push(frame: Uint8Array): boolean {
    if (this.port === null) throw new Error('no device attached');
    return this.port.receive(frame, frame.length, null);
  }
}

/** A UDP/IPv4 frame of flow `flow` (its addresses and ports) carrying `seq`. */
export function udpFrame(flow: number, seq: number, len = 80): Uint8Array {
  const f = new Uint8Array(len);
  const v = new DataView(f.buffer);
  f.set([0x52, 0x54, 0, 0, 0, 0xa], 0);
  f.set([0x52, 0x54, 0, 0, 0, 0xb], 6);
  v.setUint16(12, 0x0800);
  f[14] = 0x45;
  v.setUint16(16, len - 14);
  f[22] = 64;
  f[23] = 17; // UDP
  v.setUint32(26, 0x0a000000 + (flow >>> 4)); // source 10.0.0.x
  v.setUint32(30, 0x0a000100 + (flow & 15)); // destination 10.0.1.y
  v.setUint16(34, 1000 + flow);
  v.setUint16(36, 2000 + ((flow * 7) & 0xff));
  v.setUint16(38, len - 34);
  v.setUint32(42, flow);
  v.setUint32(46, seq);
  return f;
}

/** The flow and sequence number of a {@link udpFrame}. */
export function udpFlowSeq(f: Uint8Array): [number, number] {
  const v = new DataView(f.buffer, f.byteOffset);
  return [v.getUint32(42), v.getUint32(46)];
}

interface Pair {
  rx: DriverQueue;
  tx: DriverQueue;
  rxAddr: number[];
  rxOfId: Map<number, number>;
  txAddr: number[];
  txFree: number[];
  txOfId: Map<number, number>;
}

export interface MqGuestOptions {
  /** Pairs the driver sets up (default: all the device offers). */
  pairs?: number;
  /** Receive buffers per receive queue (default 32). */
  rxBuffers?: number;
  /** Pairs whose receive buffers are not posted at init. */
  holdRx?: number[];
}

/** A guest driver for a multiqueue network device over virtio-mmio. */
export class MqGuest {
  readonly mmio: MmioGuestDriver;
  features = 0n;
  pairs: Pair[] = [];
  ctrl: DriverQueue | null = null;
  ctrlIndex = -1;
  private ctrlCmd = 0;
  private ctrlAck = 0;

  constructor(
    bus: WorldBus,
    readonly memory: GuestMemory,
    readonly alloc: GuestAllocator,
  ) {
    this.mmio = new MmioGuestDriver(bus, memory, alloc);
  }

  /** Negotiates `wanted` (what the device offers of it) and sets everything up (§5.1.5). */
  init(wanted: bigint, o: MqGuestOptions = {}): bigint {
    const m = this.mmio;
    if (m.probe() !== VIRTIO_ID_NET) throw new Error('not a network device');
    this.features = m.negotiate(wanted);
    const maxPairs = this.has(VIRTIO_NET_F_MQ) ? m.readConfig(8, 2) : 1;
    const n = Math.min(o.pairs ?? maxPairs, maxPairs);
    this.pairs = [];
    for (let k = 0; k < n; k++) {
      const rx = m.setupQueue(2 * k, 64);
      const tx = m.setupQueue(2 * k + 1, 64);
      const nRx = o.rxBuffers ?? 32;
      this.pairs.push({
        rx,
        tx,
        rxAddr: Array.from({ length: nRx }, () => this.alloc.alloc(RX_BUF, 16)),
        rxOfId: new Map(),
        txAddr: Array.from({ length: 16 }, () => this.alloc.alloc(TX_BUF, 16)),
        txFree: Array.from({ length: 16 }, (_, i) => 15 - i),
        txOfId: new Map(),
      });
    }
    this.ctrl = null;
    if (this.has(VIRTIO_NET_F_CTRL_VQ)) {
      this.ctrlIndex = 2 * maxPairs;
      this.ctrl = m.setupQueue(this.ctrlIndex, 64);
      this.ctrlCmd = this.alloc.alloc(64, 16);
      this.ctrlAck = this.alloc.alloc(16, 16);
    }
    m.start();
    for (let k = 0; k < n; k++) if (!(o.holdRx ?? []).includes(k)) this.postRx(k);
    return this.features;
  }

  has(bit: number): boolean {
    return (this.features & featureBit(bit)) !== 0n;
  }

  /** Posts every free receive buffer of pair `k`. */
  postRx(k: number): void {
    const p = this.pairs[k]!;
    const inFlight = new Set(p.rxOfId.values());
    let any = false;
    for (let b = 0; b < p.rxAddr.length; b++) {
      if (inFlight.has(b) || p.rx.numFree < 1) continue;
      const id = p.rx.add([], [{ addr: p.rxAddr[b]!, len: RX_BUF }]);
      p.rxOfId.set(id, b);
      any = true;
    }
    if (any) this.mmio.kick(2 * k);
  }

  /**
   * Sends a control command (class, command, data) and returns the device's `ack`, or -1 when
   * the device returned the chain with nothing written. `ackBytes` 0 sends a chain with no
   * device-writable part.
   */
  control(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0), ackBytes = 1): number {
    const q = this.ctrl;
    if (q === null) throw new Error('no control queue');
    const mem = this.memory;
    mem.writeU8(this.ctrlCmd, cls);
    mem.writeU8(this.ctrlCmd + 1, cmd);
    mem.write(this.ctrlCmd + 2, data);
    mem.writeU8(this.ctrlAck, 0xee);
    const writable = ackBytes > 0 ? [{ addr: this.ctrlAck, len: ackBytes }] : [];
    const id = q.add([{ addr: this.ctrlCmd, len: 2 + data.length }], writable);
    this.mmio.kick(this.ctrlIndex);
    const got = q.popUsed();
    if (got !== id) throw new Error(`control chain ${id} not completed (${got})`);
    return q.lastUsedLen === 0 ? -1 : mem.readU8(this.ctrlAck);
  }

  /** VQ_PAIRS_SET (§5.1.6.5.5). */
  setPairs(pairs: number): number {
    return this.control(4, 0, Uint8Array.of(pairs & 0xff, pairs >>> 8));
  }

  /** Sends a plain frame on pair `k`'s transmit queue; false when no slot is free. */
  send(k: number, frame: Uint8Array): boolean {
    const p = this.pairs[k]!;
    this.reap(p);
    const slot = p.txFree.pop();
    if (slot === undefined) return false;
    const addr = p.txAddr[slot]!;
    this.memory.write(addr, new Uint8Array(HDR));
    this.memory.write(addr + HDR, frame);
    const id = p.tx.add([{ addr, len: HDR + frame.length }]);
    p.txOfId.set(id, slot);
    this.mmio.kick(2 * k + 1);
    this.reap(p);
    return true;
  }

  private reap(p: Pair): void {
    for (let id = p.tx.popUsed(); id >= 0; id = p.tx.popUsed()) {
      p.txFree.push(p.txOfId.get(id)!);
      p.txOfId.delete(id);
    }
  }

  /** Every frame pair `k` has received now (buffers posted again unless `repost` is false). */
  receiveAll(k: number, repost = true): Uint8Array[] {
    const p = this.pairs[k]!;
    const out: Uint8Array[] = [];
    this.mmio.ackInterrupt();
    for (let id = p.rx.popUsed(); id >= 0; id = p.rx.popUsed()) {
      const b = p.rxOfId.get(id);
      if (b === undefined) throw new Error(`receive id ${id} not in flight`);
      p.rxOfId.delete(id);
      const len = p.rx.lastUsedLen;
      const addr = p.rxAddr[b]!;
      if (this.memory.readU16(addr + 10) !== 1) throw new Error('a frame over several buffers');
      out.push(this.memory.slice(addr + HDR, len - HDR).slice());
    }
    if (repost && out.length > 0) this.postRx(k);
    return out;
  }

  reset(): void {
    this.mmio.reset();
  }
}

export interface MqSide {
  memory: GuestMemory;
  device: NetDevice;
  transport: MmioTransport;
  bus: WorldBus;
  guest: MqGuest;
  options: NetOptions;
}

/** A guest with a multiqueue network device on `backend`. */
export function mqSide(
  world: World,
  backend: NetBackend,
  device: Omit<NetOptions, 'backend'> = {},
): MqSide {
  const memory = GuestMemory.create(4 << 20);
  const options: NetOptions = { queueSize: 64, queuePairs: 2, ...device, backend };
  const dev = new NetDevice(options);
  const transport = new MmioTransport(dev, memory, { logger: silentLogger });
  const bus = new WorldBus(world, transport);
  world.pairs.push({ driver: memory, device: memory });
  const guest = new MqGuest(bus, memory, new GuestAllocator(memory, 0x1000, memory.size));
  return { memory, device: dev, transport, bus, guest, options };
}

/** Moves a guest to a fresh device and transport restored from a JSON round trip of its state. */
export function migrateMq(world: World, side: MqSide, backend: NetBackend): MqSide {
  const state: unknown = JSON.parse(JSON.stringify(side.transport.save()));
  side.device.detach();
  const copy = GuestMemory.create(side.memory.size);
  copy.write(0, side.memory.slice(0, side.memory.size));
  const options: NetOptions = { ...side.options, backend };
  const device = new NetDevice(options);
  const transport = new MmioTransport(device, copy, { logger: silentLogger });
  transport.restore(state);
  const pair = world.pairs.find((p) => p.driver === side.memory)!;
  pair.device = copy;
  side.bus.transport = transport;
  return { ...side, device, transport, options };
}
