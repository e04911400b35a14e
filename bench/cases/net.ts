/**
 * virtio-net frames per second between two devices cable-connected by the in-process pair
 * backend, on one thread: guest A (NetGuestDriver over an MmioTransport) sends a batch of
 * frames, device A hands each to the pair, device B queues it and writes it into guest B's
 * receive buffers, guest B reads the batch and guest A collects its transmit completions.
 * Driver and device costs are both in the figure (as for a VM whose guest runs on the same
 * thread).
 *
 * Variants: frame size 64 or 1514 bytes, split or packed ring, EVENT_IDX off or on,
 * mergeable receive buffers of 2048 bytes.
 * Output: `virtq net frame=<bytes> ring=<split|packed> evidx=<0|1> batch=<n>
 * frames_per_s=<n> ns_per_frame=<f> gbit_per_s=<f>`, from the best of 5 runs of at least
 * 0.5 s (bench/lib/harness.ts).
 *
 * {@link buildNetRig} builds the two VMs and returns a step function, so a worker variant
 * (device in another thread) can reuse the same workload.
 */

import { featureBit } from '../../src/devices/device.js';
import {
  createNetPair,
  NetDevice,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
} from '../../src/devices/net/index.js';
import { GuestAllocator } from '../../src/driver/allocator.js';
import { NetGuestDriver } from '../../src/driver/devices/net.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  silentLogger,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';
import { type BenchCase, bestOf, describeRuns, fmt, nsPerUnit } from '../lib/harness.js';

export interface NetRigOptions {
  /** Frame size in bytes, Ethernet header included (14..1514). */
  frameBytes: number;
  /** Frames per round. */
  batch: number;
  packed: boolean;
  eventIdx: boolean;
  /** Queue size of both devices (default 256). */
  queueSize?: number;
}

export interface NetRig {
  /** Runs `rounds` rounds of `batch` frames A -> B. */
  step(rounds: number): void;
  /** Frames B received so far. */
  readonly received: number;
  /** Throws unless every frame arrived, intact and in order. */
  verify(expected: number): void;
  devices: [NetDevice, NetDevice];
}

/** Two guests with a network device each, on one in-process cable. */
export function buildNetRig(o: NetRigOptions): NetRig {
  const [ea, eb] = createNetPair();
  const features =
    featureBit(VIRTIO_F_VERSION_1) |
    featureBit(VIRTIO_NET_F_MAC) |
    featureBit(VIRTIO_NET_F_MRG_RXBUF) |
    (o.packed ? featureBit(VIRTIO_F_RING_PACKED) : 0n) |
    (o.eventIdx ? featureBit(VIRTIO_F_EVENT_IDX) : 0n);
  const side = (backend: typeof ea, mac: string) => {
    const memory = GuestMemory.create(8 << 20);
    const device = new NetDevice({ backend, mac, queueSize: o.queueSize ?? 256 });
    const transport = new MmioTransport(device, memory, { logger: silentLogger });
    const guest = new NetGuestDriver(
      transport,
      memory,
      new GuestAllocator(memory, 0x1000, memory.size),
      {
        rxBufferSize: 2048,
        txSlots: Math.max(o.batch, 16),
      },
    );
    guest.init(features);
    return { device, guest };
  };
  const a = side(ea, '52:54:00:00:00:0a');
  const b = side(eb, '52:54:00:00:00:0b');
  const frame = new Uint8Array(o.frameBytes);
  frame.set([0x52, 0x54, 0, 0, 0, 0x0b, 0x52, 0x54, 0, 0, 0, 0x0a, 0x88, 0xb5]);
  const view = new DataView(frame.buffer);
  let sent = 0;
  let received = 0;
  let bad = 0;
  return {
    step(rounds: number): void {
      for (let r = 0; r < rounds; r++) {
        for (let i = 0; i < o.batch; i++) {
          if (frame.length >= 18) view.setUint32(14, sent);
          if (!a.guest.trySend(frame)) throw new Error('transmit queue full');
          sent++;
        }
        for (let f = b.guest.tryReceive(); f !== null; f = b.guest.tryReceive()) {
          if (f.data.length !== frame.length) bad++;
          else if (frame.length >= 18 && seqOf(f.data) !== received) bad++;
          received++;
        }
        a.guest.reapTx();
      }
    },
    get received() {
      return received;
    },
    verify(expected: number): void {
      if (received !== expected || bad !== 0) {
        throw new Error(`received ${received} frames of ${expected}, ${bad} bad`);
      }
    },
    devices: [a.device, b.device],
  };
}

/** The big-endian sequence number at offset 14 of a frame. */
function seqOf(f: Uint8Array): number {
  return ((f[14]! << 24) | (f[15]! << 16) | (f[16]! << 8) | f[17]!) >>> 0;
}

function netCase(frameBytes: number, packed: boolean, eventIdx: boolean, batch: number): BenchCase {
  const ring = packed ? 'packed' : 'split';
  const evidx = eventIdx ? 1 : 0;
  return {
    name: `net/frame=${frameBytes}/${ring}/evidx=${evidx}/batch=${batch}`,
    run(ctx) {
      const rig = buildNetRig({ frameBytes, batch, packed, eventIdx });
      let rounds = 0;
      const m = bestOf((n) => {
        rig.step(n);
        rounds += n;
      });
      rig.verify(rounds * batch);
      const ns = nsPerUnit(m, batch);
      ctx.log(`net frame=${frameBytes} ${ring} evidx=${evidx}: ${describeRuns(m, batch)}`);
      return (
        `virtq net frame=${frameBytes} ring=${ring} evidx=${evidx} batch=${batch}` +
        ` frames_per_s=${Math.round(1e9 / ns)} ns_per_frame=${fmt(ns)}` +
        ` gbit_per_s=${fmt((frameBytes * 8) / ns)}`
      );
    },
  };
}

export const cases: BenchCase[] = [64, 1514].flatMap((size) =>
  [false, true].flatMap((packed) => [false, true].map((evidx) => netCase(size, packed, evidx, 32))),
);
