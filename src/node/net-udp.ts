import { createSocket, type Socket } from 'node:dgram';
import type { NetBackend, NetPort } from '../devices/net/backend.js';
import type { NetHeader } from '../devices/net/request.js';

export interface UdpNetOptions {
  /** Address to bind (default 127.0.0.1). */
  localAddress?: string;
  /** Port to bind (default 0: any free port; see {@link UdpNetBackend.localPort}). */
  localPort?: number;
  /** Where frames are sent (may also be set later with {@link UdpNetBackend.connect}). */
  remoteAddress?: string;
  remotePort?: number;
  /** Datagrams being sent at once before the device is told to wait (default 64). */
  maxInFlight?: number;
  /** Received frames kept while the device has no room, beyond which they are dropped (default 256). */
  backlog?: number;
}

/**
 * A frame backend over a UDP socket (Node only): each frame is one datagram, with no virtio
 * header, so checksum and segmentation metadata cannot travel and the backend declares no
 * offload (a device on it offers none).
 *
 * Transmit back-pressure: at most `maxInFlight` datagrams are handed to the socket at once;
 * past that the device waits until one completes. Receive: UDP cannot ask the other side to
 * slow down, so frames the device has no room for wait in a bounded backlog, and past it are
 * dropped and counted in {@link dropped}, as the kernel drops datagrams when a socket's
 * buffer is full.
 */
export class UdpNetBackend implements NetBackend {
  readonly offloads = 0n;
  /** A frame is copied into a datagram buffer of the backend's own in {@link send}. */
  readonly readsFramesOnly = true;
  /** Frames sent and received, received frames dropped, and socket send errors. */
  sent = 0;
  received = 0;
  dropped = 0;
  sendErrors = 0;
  private port: NetPort | null = null;
  private remotePort: number;
  private remoteAddress: string;
  private readonly pool: Buffer[] = [];
  private inFlight = 0;
  private readonly maxInFlight: number;
  private readonly maxBacklog: number;
  private readonly backlog: Buffer[] = [];
  private txWaiting = false;
  private closed = false;

  private constructor(
    private readonly socket: Socket,
    options: UdpNetOptions,
  ) {
    this.remotePort = options.remotePort ?? 0;
    this.remoteAddress = options.remoteAddress ?? '127.0.0.1';
    this.maxInFlight = options.maxInFlight ?? 64;
    this.maxBacklog = options.backlog ?? 256;
    socket.on('message', (msg: Buffer) => this.onMessage(msg));
  }

  /** Binds a socket and returns the backend. */
  static open(options: UdpNetOptions = {}): Promise<UdpNetBackend> {
    const socket = createSocket('udp4');
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(options.localPort ?? 0, options.localAddress ?? '127.0.0.1', () => {
        socket.off('error', reject);
        socket.on('error', () => {
          // Socket errors (an ICMP port unreachable on loopback, say) lose one datagram, as on a wire.
        });
        resolve(new UdpNetBackend(socket, options));
      });
    });
  }

  /** The port the socket is bound to. */
  get localPort(): number {
    return this.socket.address().port;
  }

  /** Sets where frames are sent. */
  connect(remotePort: number, remoteAddress = '127.0.0.1'): void {
    this.remotePort = remotePort;
    this.remoteAddress = remoteAddress;
  }

  attach(port: NetPort): void {
    this.port = port;
  }

  detach(port: NetPort): void {
    if (this.port === port) this.port = null;
  }

  send(frame: Uint8Array, length: number, _header: NetHeader): boolean {
    if (this.closed || this.remotePort === 0) return true;
    if (this.inFlight >= this.maxInFlight) {
      this.txWaiting = true;
      return false;
    }
    // A pooled buffer per datagram: the socket reads it until the send completes.
    let buf = this.pool.pop();
    if (buf === undefined || buf.length < length) buf = Buffer.allocUnsafe(Math.max(length, 2048));
    buf.set(frame.length === length ? frame : frame.subarray(0, length), 0);
    this.inFlight++;
    const done = (err: Error | null): void => {
      this.inFlight--;
      if (err !== null) this.sendErrors++;
      else this.sent++;
      this.pool.push(buf);
      if (this.txWaiting) {
        this.txWaiting = false;
        this.port?.resumeTx();
      }
    };
    this.socket.send(buf, 0, length, this.remotePort, this.remoteAddress, done);
    return true;
  }

  private onMessage(msg: Buffer): void {
    this.received++;
    if (this.backlog.length === 0 && this.port !== null && this.port.receive(msg, msg.length, null))
      return;
    if (this.backlog.length >= this.maxBacklog) {
      this.dropped++;
      return;
    }
    this.backlog.push(msg);
  }

  resumeRx(): void {
    const port = this.port;
    if (port === null) return;
    // The backlog in one burst: one receive pass for all of it.
    port.burst(() => {
      while (this.backlog.length > 0) {
        const msg = this.backlog[0]!;
        if (!port.receive(msg, msg.length, null)) return;
        this.backlog.shift();
      }
    });
  }

  /** Closes the socket. */
  close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    return new Promise((resolve) => this.socket.close(() => resolve()));
  }
}
