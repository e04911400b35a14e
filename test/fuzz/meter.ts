/**
 * Counting what a device does, from outside it (device-level fuzzer, device-fuzz.test.ts):
 * {@link WorkMeter} and {@link instrument} count each turn (a notification, or a continuation
 * the device scheduled itself): chains its queues hand out, bytes through its backend, bytes
 * written to receive buffers. {@link makeDevice} builds each of virtq's devices over a backend
 * that counts. A device that forgets its own budget is caught, whatever it believes it spent.
 */
import { BlockDevice, MemoryBackend } from '../../src/devices/block/index.js';
import {
  DEFAULT_BYTES_PER_TURN,
  defaultScheduler,
  type Scheduler,
} from '../../src/devices/budget.js';
import { CONSOLE_DEFAULT_MAX_BYTES_PER_TRANSMIT } from '../../src/devices/console/device.js';
import { ConsoleDevice, ConsolePipe } from '../../src/devices/console/index.js';
import type { VirtioDevice, VirtioDeviceBase } from '../../src/devices/device.js';
import {
  NET_MAX_FRAME,
  NET_OFFLOAD_FEATURES,
  type NetBackend,
  NetDevice,
  type NetHeader,
  type NetPort,
} from '../../src/devices/net/index.js';
import { RNG_DEFAULT_MAX_BYTES_PER_REQUEST, RngDevice } from '../../src/devices/rng/index.js';
import type { Queue } from '../../src/queue/index.js';
import type { DeviceKind, Rand } from './layout.js';

/** Work a device did, in total and per turn, with the turns that went over their bounds. */
export class WorkMeter {
  /** Bytes through the device's backend (entropy made, disk bytes, console output, frames sent). */
  backendBytes = 0;
  /** Bytes the device reported written into receive buffers (console and net receive queues). */
  rxBytes = 0;
  /** Chains taken from any queue. */
  chains = 0;
  turns = 0;
  maxTurnChains = 0;
  maxTurnBytes = 0;
  /** Continuations scheduled and not yet run or dropped (a scheduler may drop them). */
  pending = 0;
  readonly violations: string[] = [];
  /** Errors other than a guest's that escaped the device. */
  readonly escaped: unknown[] = [];
  /** Runs before each continuation (a guest on another vCPU refilling its ring). */
  beforeContinuation: (() => void) | null = null;
  private depth = 0;
  private startChains = 0;
  private startBytes = 0;

  /**
   * @param chainBound most chains one turn may take
   * @param byteBound most bytes one turn may move (the byte budget plus one request's cap)
   */
  constructor(
    public chainBound: number,
    public byteBound: number,
  ) {}

  get bytes(): number {
    return this.backendBytes + this.rxBytes;
  }

  enter(): void {
    if (this.depth++ > 0) return;
    this.turns++;
    this.startChains = this.chains;
    this.startBytes = this.bytes;
  }

  exit(what: string): void {
    if (--this.depth > 0) return;
    const chains = this.chains - this.startChains;
    const bytes = this.bytes - this.startBytes;
    this.maxTurnChains = Math.max(this.maxTurnChains, chains);
    this.maxTurnBytes = Math.max(this.maxTurnBytes, bytes);
    if (chains > this.chainBound || bytes > this.byteBound) {
      this.violations.push(
        `turn ${this.turns} (${what}): ${chains} chains (bound ${this.chainBound}), ${bytes} bytes (bound ${this.byteBound})`,
      );
    }
  }
}

/**
 * Wraps `device` so that `meter` sees every turn: `queueNotify` (notifications and the
 * device's own continuations, which call it again), the chains each queue hands out, the
 * bytes written to the queues in `rxQueues`, and the scheduler of each activation (counting
 * pending continuations, running `meter.beforeContinuation` first, catching what escapes).
 */
export function instrument(device: VirtioDevice, meter: WorkMeter, rxQueues: readonly number[]) {
  // The queues of the current activation; a vhost-user back-end replaces a ring's queue in
  // this array when the ring restarts, so each turn wraps what is new.
  let queues: readonly Queue[] = [];
  const wrapped = new WeakSet<Queue>();
  const wrapQueues = (): void => {
    queues.forEach((q, i) => {
      if (q === undefined || wrapped.has(q)) return;
      wrapped.add(q);
      const pop = q.popOrEnableNotification.bind(q);
      q.popOrEnableNotification = ((chain) => {
        const c = pop(chain);
        if (c !== null) meter.chains++;
        return c;
      }) as Queue['popOrEnableNotification'];
      if (rxQueues.includes(i)) {
        const addUsed = q.addUsed.bind(q);
        q.addUsed = (id: number, len: number) => {
          meter.rxBytes += len;
          addUsed(id, len);
        };
      }
    });
  };
  const notify = device.queueNotify.bind(device);
  device.queueNotify = (index: number) => {
    wrapQueues();
    meter.enter();
    try {
      notify(index);
    } catch (e) {
      meter.escaped.push(e);
    } finally {
      meter.exit(`queue ${index}`);
    }
  };
  const activate = device.activate.bind(device);
  device.activate = (ctx) => {
    queues = ctx.queues;
    wrapQueues();
    const inner: Scheduler = ctx.schedule ?? defaultScheduler;
    const schedule: Scheduler = (callback, queue) => {
      meter.pending++;
      inner(() => {
        meter.pending--;
        try {
          meter.beforeContinuation?.();
          callback();
        } catch (e) {
          meter.escaped.push(e);
        }
      }, queue);
    };
    activate({ ...ctx, schedule });
  };
}

// ---------------------------------------------------------------------------------------------
// Devices over counting backends

/** A network backend that counts what the device sends and offers frames to it. */
export class CountingNet implements NetBackend {
  readonly offloads = NET_OFFLOAD_FEATURES;
  port: NetPort | null = null;
  /** The last frame sent, copied. */
  last: Uint8Array | null = null;
  refuse = false;
  /**
   * `readsFramesOnly`: large frames in one guest buffer then arrive as views of guest memory
   * (the lending path), else always in the device's scratch.
   */
  constructor(
    private readonly meter: WorkMeter,
    readonly readsFramesOnly = false,
  ) {}
  attach(port: NetPort): void {
    this.port = port;
  }
  detach(): void {
    this.port = null;
  }
  send(frame: Uint8Array, length: number, _header: NetHeader): boolean {
    if (this.refuse) return false;
    this.meter.backendBytes += length;
    this.last = frame.slice(0, length);
    return true;
  }
  resumeRx(): void {}
  /** Offers a frame of `length` bytes to the device (when it has room). */
  offer(length: number, fill: number): boolean {
    const p = this.port;
    if (p === null || !p.canReceive(length)) return false;
    return p.receive(new Uint8Array(length).fill(fill), length, null);
  }
}

/** A disk that counts the bytes it moves. */
class CountingDisk extends MemoryBackend {
  constructor(
    size: number,
    private readonly meter: WorkMeter,
  ) {
    super(size);
  }
  override read(offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
    this.meter.backendBytes += length;
    super.read(offset, dst, dstOffset, length);
  }
  override write(offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    this.meter.backendBytes += length;
    super.write(offset, src, srcOffset, length);
  }
  override writeZeroes(offset: number, length: number, unmap: boolean): void {
    this.meter.backendBytes += length;
    super.writeZeroes(offset, length, unmap);
  }
}

const latin1 = new TextDecoder('latin1');

export const DISK_BYTES = 64 * 1024;

/** A device of `kind` with its counting backend, and the bound of one request's bytes. */
export interface MadeDevice {
  device: VirtioDeviceBase;
  /** Queues whose used lengths are bytes the device wrote (receive queues). */
  rxQueues: number[];
  /** Most bytes one request may move. */
  requestCap: number;
  disk?: CountingDisk;
  pipe?: ConsolePipe;
  /** Console output seen, as text (the last 256 bytes). */
  output?: { text: string };
  /** Console: most bytes of a transmit chain that reach the output. */
  txCap?: number;
  net?: CountingNet;
}

export interface Budget {
  maxChainsPerTurn?: number;
  maxBytesPerTurn?: number;
}

export function makeDevice(
  kind: DeviceKind,
  meter: WorkMeter,
  budget: Budget,
  queueSize: number,
  rand: Rand,
): MadeDevice {
  switch (kind) {
    case 'rng': {
      const cap = rand.chance(0.5) ? RNG_DEFAULT_MAX_BYTES_PER_REQUEST : 1 + rand.int(8192);
      const device = new RngDevice({
        ...budget,
        queueSize,
        maxBytesPerRequest: cap,
        source: (out) => {
          meter.backendBytes += out.length;
          out.fill(0xa5);
        },
      });
      return { device, rxQueues: [], requestCap: cap };
    }
    case 'block': {
      const disk = new CountingDisk(DISK_BYTES, meter);
      for (let i = 0; i < DISK_BYTES; i += 512) disk.bytes[i] = (i >> 9) & 0xff;
      const device = new BlockDevice({ ...budget, backend: disk, queueSize, id: 'fuzz-disk' });
      // A request moves at most the disk (reads and writes past its end fail whole).
      return { device, rxQueues: [], requestCap: DISK_BYTES, disk };
    }
    case 'console': {
      const pipe = new ConsolePipe();
      const output = { text: '' };
      pipe.onOutput = (bytes) => {
        meter.backendBytes += bytes.length;
        // Only the tail matters (the clean request's text): decode at most its last 256 bytes.
        const tail = bytes.subarray(Math.max(0, bytes.length - 256));
        output.text = (output.text + latin1.decode(tail)).slice(-256);
      };
      const cap = rand.chance(0.5) ? CONSOLE_DEFAULT_MAX_BYTES_PER_TRANSMIT : 1 + rand.int(4096);
      const device = new ConsoleDevice({
        ...budget,
        backend: pipe,
        queueSize,
        maxBytesPerTransmit: cap,
      });
      // A receive chain takes at most what input the device holds: its high-water mark (64 KiB
      // by default) plus the one push that crossed it (the test respects back-pressure).
      return {
        device,
        rxQueues: [0],
        requestCap: Math.max(cap, 64 * 1024 + 4096),
        pipe,
        output,
        txCap: cap,
      };
    }
    case 'net': {
      const net = new CountingNet(meter, rand.chance(0.5));
      const device = new NetDevice({
        ...budget,
        backend: net,
        queueSize,
        mac: '52:54:00:12:34:56',
      });
      return { device, rxQueues: [0], requestCap: NET_MAX_FRAME, net };
    }
  }
}

/** Bounds of one turn for a device built with `budget` whose queues have `queueSize` entries. */
export function turnBounds(budget: Budget, queueSize: number, requestCap: number) {
  return {
    chains: budget.maxChainsPerTurn ?? queueSize,
    bytes: (budget.maxBytesPerTurn ?? DEFAULT_BYTES_PER_TURN) + requestCap,
  };
}
