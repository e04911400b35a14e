/**
 * Frame backends for tests and benchmarks, with no network behind them: {@link ReflectBackend}
 * sends every frame back with its MAC addresses swapped, {@link SinkBackend} counts what it is
 * given, {@link GenerateBackend} offers a bounded number of frames of one size. Each is exact
 * about counts, so a test can hold a real driver to them (a driver that sent N frames into a
 * sink sees `frames === N`). Browser-safe: no Node imports.
 */

import { defaultScheduler } from '../budget.js';
import type { NetBackend, NetPort } from './backend.js';
import { ETH_HLEN, NET_MAX_FRAME, NET_OFFLOAD_FEATURES, type NetHeader } from './request.js';

/** Sends every frame back to the device it came from, destination and source MAC swapped. */
export class ReflectBackend implements NetBackend {
  /** The header goes back with the frame, so every offload is carried. */
  readonly offloads = NET_OFFLOAD_FEATURES;
  /** Frames sent back, and their bytes. */
  frames = 0;
  bytes = 0;
  private port: NetPort | null = null;
  /** A send was refused because the device had no room to receive; resume it with room. */
  private waiting = false;

  attach(port: NetPort): void {
    this.port = port;
  }

  detach(port: NetPort): void {
    if (this.port === port) this.port = null;
    this.waiting = false;
  }

  send(frame: Uint8Array, length: number, header: NetHeader): boolean {
    const port = this.port;
    if (port === null) return true;
    // The MAC addresses are swapped in the device's own scratch (NetBackend.send allows it),
    // and the device copies the frame in as it receives it: one copy per frame, not two.
    if (length >= ETH_HLEN) {
      for (let i = 0; i < 6; i++) {
        const t = frame[i]!;
        frame[i] = frame[i + 6]!;
        frame[i + 6] = t;
      }
    }
    if (!port.receive(frame, length, header)) {
      // The device's receive side is full: hold the transmit side until it has room.
      this.waiting = true;
      return false;
    }
    this.frames++;
    this.bytes += length;
    return true;
  }

  resumeRx(): void {
    if (!this.waiting) return;
    this.waiting = false;
    this.port?.resumeTx();
  }
}

/** Takes every frame and counts it: frames, bytes, and the last frame's first bytes. */
export class SinkBackend implements NetBackend {
  readonly offloads = NET_OFFLOAD_FEATURES;
  /** It reads nothing of a frame but its length. */
  readonly readsFramesOnly = true;
  frames = 0;
  bytes = 0;

  attach(_port: NetPort): void {}
  detach(_port: NetPort): void {}

  send(_frame: Uint8Array, length: number, _header: NetHeader): boolean {
    this.frames++;
    this.bytes += length;
    return true;
  }

  resumeRx(): void {}
}

/** What a {@link GenerateBackend} offers. */
export interface GenerateOptions {
  /** Frames to offer in all (a non-negative integer; 0: none). */
  count: number;
  /** Bytes per frame, Ethernet header included (60 to {@link NET_MAX_FRAME}). */
  size: number;
  /** Destination MAC (default broadcast, which every driver accepts). */
  destination?: Uint8Array;
  /** Source MAC (default 02:00:00:00:00:01, locally administered). */
  source?: Uint8Array;
  /**
   * Runs the generator's continuation in a later task, after it offered 8 bursts of 32
   * frames that the device all took (default: the devices' `defaultScheduler`): a driver that
   * keeps up must not keep the event loop from everything else.
   */
  schedule?: (run: () => void) => void;
}

/** The EtherType of generated frames: IEEE 802 local experimental 1. */
export const GENERATE_ETHERTYPE = 0x88b5;

/**
 * Frames the generator offers per burst ({@link NetPort.burst}): the device delivers them in
 * one receive pass. As many as a driver's receive burst (DPDK's is 32).
 */
const GENERATE_BURST = 32;
/** Bursts the generator offers before it lets other work run ({@link GenerateOptions.schedule}). */
const GENERATE_BURSTS_PER_TASK = 8;

/**
 * Offers `count` frames of `size` bytes to the device, as fast as the device takes them: while
 * it has room, then again each time it makes room (no frame is dropped, none is offered twice).
 * Each frame carries its sequence number (u32, big-endian) right after the Ethernet header, the
 * rest of the payload is a fixed pattern.
 */
export class GenerateBackend implements NetBackend {
  /** Plain frames only: nothing to offload. */
  readonly offloads = 0n;
  /** Frames sent to it are dropped unread. */
  readonly readsFramesOnly = true;
  readonly count: number;
  readonly size: number;
  /** Frames the device has taken, and their bytes. */
  frames = 0;
  bytes = 0;
  /** Frames the device sent to this backend (they go nowhere). */
  dropped = 0;
  private port: NetPort | null = null;
  private readonly frame: Uint8Array;
  private readonly view: DataView;
  private generating = false;
  /** Go round the generating loop once more. */
  private again = false;
  /** A continuation is scheduled. */
  private continuing = false;
  private readonly schedule: (run: () => void) => void;

  constructor(options: GenerateOptions) {
    const { count, size } = options;
    if (!(Number.isSafeInteger(count) && count >= 0)) {
      throw new RangeError(`count ${count} is not a non-negative integer`);
    }
    if (!(Number.isInteger(size) && size >= 60 && size <= NET_MAX_FRAME)) {
      throw new RangeError(`frame size ${size} is not in 60..${NET_MAX_FRAME}`);
    }
    this.count = count;
    this.size = size;
    const f = new Uint8Array(size);
    f.set(options.destination ?? Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), 0);
    f.set(options.source ?? Uint8Array.of(0x02, 0, 0, 0, 0, 0x01), 6);
    f[12] = GENERATE_ETHERTYPE >>> 8;
    f[13] = GENERATE_ETHERTYPE & 0xff;
    for (let i = ETH_HLEN + 4; i < size; i++) f[i] = i & 0xff;
    this.frame = f;
    this.view = new DataView(f.buffer, f.byteOffset, f.byteLength);
    this.schedule = options.schedule ?? ((run) => defaultScheduler(run, 0));
  }

  /** True once every frame was taken. */
  get done(): boolean {
    return this.frames === this.count;
  }

  attach(port: NetPort): void {
    this.port = port;
    this.generate();
  }

  detach(port: NetPort): void {
    if (this.port === port) this.port = null;
  }

  send(_frame: Uint8Array, _length: number, _header: NetHeader): boolean {
    this.dropped++;
    return true;
  }

  resumeRx(): void {
    this.generate();
  }

  private generate(): void {
    // The device may ask for more from inside a burst (it made room): one loop at a time,
    // which goes round again.
    if (this.generating) {
      this.again = true;
      return;
    }
    this.generating = true;
    try {
      for (let b = 0; ; b++) {
        if (b === GENERATE_BURSTS_PER_TASK) {
          if (!this.continuing) {
            this.continuing = true;
            this.schedule(this.resume);
          }
          return;
        }
        this.again = false;
        this.port?.burst(this.produce);
        if (!this.again) return;
      }
    } finally {
      this.generating = false;
    }
  }

  private readonly resume = (): void => {
    this.continuing = false;
    this.generate();
  };

  /** Offers up to `GENERATE_BURST` frames, in one burst (created once: no closure per burst). */
  private readonly produce = (): void => {
    const view = this.view;
    for (let k = 0; k < GENERATE_BURST; k++) {
      if (this.port === null || this.frames >= this.count) return;
      view.setUint32(ETH_HLEN, this.frames);
      if (!this.port.receive(this.frame, this.size, null)) return;
      this.frames++;
      this.bytes += this.size;
    }
    // A full burst: go round for the next one.
    this.again = true;
  };
}
