/** The demo guest's virtio-net workload (see demo-workloads.ts for the others). */
import { featureBit } from '../devices/device.js';
import {
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_STATUS,
} from '../devices/net/request.js';
import { NetGuestDriver } from '../driver/devices/net.js';

import {
  DRAIN_MS,
  describeNegotiated,
  emptyReport,
  equal,
  type GuestDevice,
  pause,
  type Workload,
  Xorshift,
} from './demo-workloads.js';

const ETHERTYPE_DEMO = 0x88b5; // IEEE local experimental
const FRAME_HEADER = 14;

/**
 * virtio-net: two devices joined by an in-process cable; each guest driver sends frames of
 * random length (60 to 1514 bytes) to the other, at most 64 ahead, and checks that every
 * frame arrives once, in order, with its bytes intact.
 */
export class NetWorkload implements Workload {
  readonly report = emptyReport('net');
  private readonly a: NetGuestDriver;
  private readonly b: NetGuestDriver;

  constructor(
    private readonly devs: [GuestDevice, GuestDevice],
    private readonly seed: number,
  ) {
    const [a, b] = devs;
    this.a = new NetGuestDriver(a.bus, a.mmio.memory, a.alloc, {
      waiter: a.waiter,
      queueSize: 128,
    });
    this.b = new NetGuestDriver(b.bus, b.mmio.memory, b.alloc, {
      waiter: b.waiter,
      queueSize: 128,
    });
  }

  init(wanted: bigint): void {
    const net =
      wanted |
      featureBit(VIRTIO_NET_F_MAC) |
      featureBit(VIRTIO_NET_F_STATUS) |
      featureBit(VIRTIO_NET_F_MRG_RXBUF);
    const fa = this.a.init(net);
    this.b.init(net);
    describeNegotiated(this.report, fa);
    if (this.a.mac === null || this.b.mac === null)
      throw new Error('the net devices did not offer MAC addresses');
    if (!this.a.linkUp || !this.b.linkUp) throw new Error('the link is down');
    this.report.note =
      'frames of 60 to 1514 bytes both ways over the cable, each checked once, in order';
  }

  async run(deadline: number, tick: () => void): Promise<void> {
    // `frame` holds the next frame to send (`len` bytes; 0: not made yet): a frame the
    // driver had no room for is offered again as it was.
    const end = (drv: NetGuestDriver, peer: NetGuestDriver, txSeed: number, rxSeed: number) => ({
      drv,
      peer,
      tx: new Xorshift(txSeed),
      rx: new Xorshift(rxSeed),
      frame: new Uint8Array(1514),
      len: 0,
      sent: 0,
      got: 0,
    });
    const ends = [
      end(this.a, this.b, this.seed, this.seed + 1),
      end(this.b, this.a, this.seed + 1, this.seed),
    ];
    const want = new Uint8Array(1514);
    let rounds = 0;
    let drainUntil = 0;
    const waiters = [this.devs[0].waiter, this.devs[1].waiter];
    for (;;) {
      const now = performance.now();
      const submitting = now < deadline;
      const inflight = ends[0]!.sent - ends[1]!.got + (ends[1]!.sent - ends[0]!.got);
      if (!submitting && inflight === 0) break;
      if (!submitting && drainUntil === 0) drainUntil = now + DRAIN_MS;
      if (drainUntil !== 0 && now > drainUntil) throw new Error(`${inflight} frames never arrived`);
      let progressed = false;
      for (let e = 0; e < 2; e++) {
        const me = ends[e]!;
        const other = ends[1 - e]!;
        // Send: at most 64 frames ahead of what the other end received.
        while (submitting && me.sent - other.got < 64) {
          if (me.len === 0) me.len = makeFrame(me.frame, me.peer.mac!, me.drv.mac!, me.sent, me.tx);
          if (!me.drv.trySend(me.frame.subarray(0, me.len))) break;
          me.len = 0;
          me.sent++;
          progressed = true;
        }
        // Receive what the other end sent, in order.
        for (let f = me.drv.tryReceive(); f !== null; f = me.drv.tryReceive()) {
          const len = makeFrame(want, me.drv.mac!, me.peer.mac!, me.got, me.rx);
          if (!equal(f.data, want.subarray(0, len))) {
            this.report.errors++;
            throw new Error(
              `frame ${me.got} to ${e === 0 ? 'A' : 'B'} arrived damaged or out of order`,
            );
          }
          me.got++;
          this.report.requests++;
          this.report.bytes += len;
          progressed = true;
        }
      }
      this.report.errors = this.a.rxErrors + this.b.rxErrors;
      tick();
      if (!progressed) await Promise.race([waiters[0]!.wait(), waiters[1]!.wait()]);
      else if ((++rounds & 15) === 0) await pause();
    }
  }

  finish(): void {
    this.a.reset();
    this.b.reset();
  }
}

/** Frame `seq` of a stream: Ethernet header, the sequence number, then bytes from `rand`. */
function makeFrame(
  out: Uint8Array,
  dst: Uint8Array,
  src: Uint8Array,
  seq: number,
  rand: Xorshift,
): number {
  const len = 60 + rand.below(1514 - 60 + 1);
  out.set(dst, 0);
  out.set(src, 6);
  out[12] = ETHERTYPE_DEMO >> 8;
  out[13] = ETHERTYPE_DEMO & 0xff;
  new DataView(out.buffer, out.byteOffset).setUint32(FRAME_HEADER, seq, true);
  for (let i = FRAME_HEADER + 4; i < len; i++) out[i] = rand.next() & 0xff;
  return len;
}
