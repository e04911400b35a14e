import type { Readable, Writable } from 'node:stream';
import type { ConsoleBackend, ConsolePort } from '../devices/console/backend.js';

/**
 * A console backend over Node streams: bytes read from `readable` go to the guest, the guest's
 * output is written to `writable`. Back-pressure both ways: `readable` is paused while the device
 * holds its high-water mark of input and resumed when it drains; when `writable.write` returns
 * false the device stops reading the guest's output until the stream's 'drain'.
 */
export class ConsoleStreamBackend implements ConsoleBackend {
  private port: ConsolePort | null = null;
  private waitingDrain = false;
  private readonly onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    if (this.port !== null && !this.port.input(bytes)) this.readable?.pause();
  };
  private readonly onDrain = (): void => {
    this.waitingDrain = false;
    this.port?.outputReady();
  };

  constructor(
    /** Where the guest's input comes from. */
    readonly readable: Readable | null,
    /** Where the guest's output goes. */
    readonly writable: Writable | null,
  ) {}

  attach(port: ConsolePort): void {
    this.port = port;
    this.readable?.on('data', this.onData);
  }

  detach(port: ConsolePort): void {
    if (this.port !== port) return;
    this.port = null;
    this.readable?.off('data', this.onData);
    this.writable?.off('drain', this.onDrain);
  }

  output(bytes: Uint8Array): boolean {
    const out = this.writable;
    if (out === null) return true;
    // The device reuses its buffer: the stream gets a copy.
    if (out.write(Buffer.from(bytes))) return true;
    if (!this.waitingDrain) {
      this.waitingDrain = true;
      out.once('drain', this.onDrain);
    }
    return false;
  }

  inputDrained(): void {
    this.readable?.resume();
  }
}
