/** The device end of console port 0, as a backend sees it. */
export interface ConsolePort {
  /**
   * Bytes for the guest, copied by the device, which keeps them until the driver posts
   * receive buffers: none is ever dropped. Returns false when the device holds its high-water
   * mark of input or more: the producer should stop until {@link ConsoleBackend.inputDrained}.
   */
  input(bytes: Uint8Array): boolean;
  /** The backend can take output again (after {@link ConsoleBackend.output} returned false). */
  outputReady(): void;
}

/** Where the bytes of console port 0 go and come from. */
export interface ConsoleBackend {
  /** The device `port` is now this backend's device end. */
  attach(port: ConsolePort): void;
  /** The device goes away. */
  detach(port: ConsolePort): void;
  /**
   * Bytes the guest wrote, in a view of the device's buffer valid only during the call (copy
   * what you keep). The bytes are taken either way; return false to make the device stop
   * reading the transmit queue until {@link ConsolePort.outputReady}.
   */
  output(bytes: Uint8Array): boolean;
  /** The device's input fell below its low-water mark after `input` returned false. */
  inputDrained(): void;
}

/** Options of a {@link ConsolePipe}. */
export interface ConsolePipeOptions {
  /**
   * Output bytes collected (with no {@link ConsolePipe.onOutput}) before the guest's output
   * is paused until {@link ConsolePipe.takeOutput} (default 1 MiB). Nothing is dropped: the
   * collection holds at most this plus one transmit chain.
   */
  maxCollectedBytes?: number;
}

/**
 * A browser-safe in-memory byte pipe for console port 0: {@link push} feeds the guest;
 * the guest's output goes to {@link onOutput}, or, when that is null, collects until
 * {@link takeOutput}, bounded: a full collection pauses the guest's output until it is taken.
 * {@link pauseOutput} / {@link resumeOutput} apply back-pressure to the guest's output;
 * {@link push} returns false (as a Node stream's `write` does) when the device holds its
 * high-water mark of input, and {@link onDrain} fires once it has room again.
 */
export class ConsolePipe implements ConsoleBackend {
  /** Receives a copy of each piece of output; null: output collects for {@link takeOutput}. */
  onOutput: ((bytes: Uint8Array) => void) | null = null;
  /** Called when the device can take more input after {@link push} returned false. */
  onDrain: (() => void) | null = null;
  private port: ConsolePort | null = null;
  /** Input pushed before a device attached. */
  private early: Uint8Array[] = [];
  private collected: Uint8Array[] = [];
  private collectedBytes = 0;
  private readonly maxCollected: number;
  /** Output was refused because the collection was full. */
  private full = false;
  private paused = false;
  private refused = false;

  constructor(options: ConsolePipeOptions = {}) {
    const max = options.maxCollectedBytes ?? 1024 * 1024;
    if (!Number.isSafeInteger(max) || max < 1)
      throw new RangeError(`maxCollectedBytes ${max} is not an integer of at least 1`);
    this.maxCollected = max;
  }

  /** Output bytes collected and not yet taken. */
  get collectedLength(): number {
    return this.collectedBytes;
  }

  attach(port: ConsolePort): void {
    this.port = port;
    const early = this.early;
    this.early = [];
    for (const b of early) port.input(b);
  }

  detach(port: ConsolePort): void {
    if (this.port === port) this.port = null;
  }

  /** Sends bytes (a string is UTF-8 encoded) to the guest. False: slow down (nothing is lost). */
  push(data: Uint8Array | string): boolean {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    if (this.port === null) {
      this.early.push(Uint8Array.from(bytes));
      return true;
    }
    const ok = this.port.input(bytes);
    if (!ok) this.refused = true;
    return ok;
  }

  output(bytes: Uint8Array): boolean {
    const copy = Uint8Array.from(bytes);
    if (this.onOutput !== null) {
      this.onOutput(copy);
      return !this.paused;
    }
    this.collected.push(copy);
    this.collectedBytes += copy.length;
    if (this.collectedBytes >= this.maxCollected) this.full = true;
    return !this.paused && !this.full;
  }

  inputDrained(): void {
    if (!this.refused) return;
    this.refused = false;
    this.onDrain?.();
  }

  /** Everything output since the last call (when {@link onOutput} is null). */
  takeOutput(): Uint8Array {
    const total = this.collected.reduce((n, b) => n + b.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const b of this.collected) {
      out.set(b, at);
      at += b.length;
    }
    this.collected = [];
    this.collectedBytes = 0;
    if (this.full) {
      this.full = false;
      if (!this.paused) this.port?.outputReady();
    }
    return out;
  }

  /** Makes the device stop reading the guest's output after the current chain. */
  pauseOutput(): void {
    this.paused = true;
  }

  /** Lets the guest's output flow again. */
  resumeOutput(): void {
    if (!this.paused) return;
    this.paused = false;
    if (!this.full) this.port?.outputReady();
  }
}
