/**
 * The socket side of vhost-user: one front-end's connection (framing, and ownership of every fd
 * received on it) and the listening socket front-ends connect to. No protocol logic: complete
 * messages go to the back-end, which decodes and answers them.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import type { Logger } from '../queue/logger.js';
import { decodeHeader, VHOST_USER_HEADER_SIZE, VHOST_USER_MAX_PAYLOAD_SIZE } from './codec.js';
import type { FdWatcher, VhostUserNative } from './native.js';

const MESSAGE_BUFFER = VHOST_USER_HEADER_SIZE + VHOST_USER_MAX_PAYLOAD_SIZE;

/** Closes every fd of `fds`, ignoring ones already closed. */
export function closeFds(native: VhostUserNative, fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // Already closed.
    }
  }
}

/** What a connection reports to its owner. */
export interface ConnectionEvents {
  /**
   * A whole message: its bytes and the fds that came with them (now the callee's to keep or
   * close); `fdsTruncated` when the kernel dropped fds beyond what one message may carry.
   */
  message(bytes: Uint8Array, fds: number[], fdsTruncated: boolean): void;
  /** A header that does not decode: the framing is lost, and the connection ends next. */
  badHeader(error: unknown): void;
  /** The connection ended by itself (the peer left, a socket error); not after `close()`. */
  ended(reason: string): void;
}

/**
 * One front-end's connection. Reads messages (a 12-byte header, then the payload it
 * announces; fds may come with any of their bytes) and sends replies. It owns the socket and
 * the fds of a message until it hands them over; `close()` releases everything it still holds.
 */
export class VhostUserConnection {
  private watcher: FdWatcher | null = null;
  private readonly rx = new Uint8Array(MESSAGE_BUFFER);
  private received = 0;
  /** Header + payload bytes of the message being received, once its header is in. */
  private expected = VHOST_USER_HEADER_SIZE;
  private fds: number[] = [];
  private fdsTruncated = false;
  private open = true;

  constructor(
    private readonly native: VhostUserNative,
    readonly fd: number,
    private readonly events: ConnectionEvents,
  ) {
    this.watcher = native.watch(fd, native.constants.POLL_READABLE, (error) => {
      if (!this.open) return;
      if (error !== null) {
        this.end(`polling the connection failed: ${error.message}`);
        return;
      }
      this.readable();
    });
  }

  /** True until the connection ends or is closed. */
  get isOpen(): boolean {
    return this.open;
  }

  /** Sends one reply with `fds`; a failure ends the connection. */
  send(bytes: Uint8Array, fds: readonly number[] = []): void {
    if (!this.open) return;
    try {
      // Replies are small; a socket buffer too full for one means the front-end stopped reading.
      const n = this.native.sendmsg(this.fd, bytes, fds);
      if (n !== bytes.length) this.end('the front-end does not read its replies');
    } catch (e) {
      this.end(`send failed: ${(e as Error).message}`);
    }
  }

  /** Stops reading, closes the socket and every fd of a message not yet complete. */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.watcher?.stop();
    this.watcher = null;
    closeFds(this.native, this.fds);
    this.fds = [];
    closeFds(this.native, [this.fd]);
  }

  private end(reason: string): void {
    if (!this.open) return;
    this.close();
    this.events.ended(reason);
  }

  /** Reads whatever the socket holds, handing over each complete message. */
  private readable(): void {
    const maxFds = this.native.constants.MAX_FDS_PER_MESSAGE;
    // Bounded: every pass either consumes bytes from the socket or returns.
    while (this.open) {
      let r: ReturnType<VhostUserNative['recvmsg']>;
      try {
        r = this.native.recvmsg(this.fd, this.rx.subarray(this.received, this.expected), maxFds);
      } catch (e) {
        this.end(`receive failed: ${(e as Error).message}`);
        return;
      }
      for (const fd of r.fds) this.fds.push(fd);
      if (r.controlTruncated) this.fdsTruncated = true;
      if (r.bytes < 0) return;
      if (r.bytes === 0) {
        this.end('the front-end closed the connection');
        return;
      }
      this.received += r.bytes;
      if (this.received < this.expected) continue;
      if (this.expected === VHOST_USER_HEADER_SIZE) {
        let size: number;
        try {
          size = decodeHeader(this.rx.subarray(0, VHOST_USER_HEADER_SIZE), this.fds).size;
        } catch (e) {
          // The framing is lost: nothing after this header can be trusted.
          this.events.badHeader(e);
          this.end(`bad message header: ${(e as Error).message}`);
          return;
        }
        this.expected = VHOST_USER_HEADER_SIZE + size;
        if (size > 0) continue;
      }
      const bytes = this.rx.slice(0, this.expected);
      const fds = this.fds;
      const truncated = this.fdsTruncated;
      this.received = 0;
      this.expected = VHOST_USER_HEADER_SIZE;
      this.fds = [];
      this.fdsTruncated = false;
      this.events.message(bytes, fds, truncated);
    }
  }
}

/**
 * A listening Unix socket that hands over one front-end at a time: after a connection is
 * accepted it stops accepting until {@link resume}.
 */
export class SocketListener {
  private watcher: FdWatcher | null = null;

  private constructor(
    private readonly native: VhostUserNative,
    private readonly logger: Logger,
    private fd: number | null,
    readonly path: string,
    private readonly accepted: (fd: number) => void,
  ) {}

  /**
   * Listens at `path`. A stale socket file there (one nobody answers on) is removed; a socket
   * another back-end answers on, or any other file, is an error.
   */
  static open(
    native: VhostUserNative,
    logger: Logger,
    path: string,
    accepted: (fd: number) => void,
  ): SocketListener {
    let stale = false;
    try {
      stale = lstatSync(path).isSocket();
      if (!stale) throw new Error(`${path} exists and is not a socket`);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (stale) {
      // A socket file is left behind by a back-end that died, but it may also belong to one
      // that is running: taking it over would silently cut that one off from its front-ends.
      if (socketAnswers(native, path)) {
        throw new Error(
          `${path}: another back-end is listening on this socket; stop it first or choose another path`,
        );
      }
      unlinkSync(path);
    }
    return new SocketListener(native, logger, native.listen(path, 1), path, accepted);
  }

  /** Accepts the next front-end (one at a time). */
  resume(): void {
    const fd = this.fd;
    if (fd === null || this.watcher !== null) return;
    this.watcher = this.native.watch(fd, this.native.constants.POLL_READABLE, (error) => {
      if (error !== null) {
        this.logger.warn('vhost-user: polling the listening socket failed', {
          error: error.message,
        });
        return;
      }
      let client: number;
      try {
        client = this.native.accept(fd);
      } catch (e) {
        this.logger.warn('vhost-user: accept failed', { error: (e as Error).message });
        return;
      }
      if (client < 0) return;
      // One front-end at a time: stop accepting until this one leaves.
      this.watcher?.stop();
      this.watcher = null;
      this.accepted(client);
    });
  }

  /** Stops listening and removes the socket file. */
  close(): void {
    this.watcher?.stop();
    this.watcher = null;
    if (this.fd !== null) {
      closeFds(this.native, [this.fd]);
      this.fd = null;
      try {
        unlinkSync(this.path);
      } catch {
        // Already gone.
      }
    }
  }
}

/**
 * True when something accepts connections on the socket file `path` (a connect that succeeds,
 * or finds the listener's backlog full); false when the file is a leftover nobody listens on.
 */
function socketAnswers(native: VhostUserNative, path: string): boolean {
  let fd: number;
  try {
    fd = native.connect(path);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EAGAIN';
  }
  native.close(fd);
  return true;
}
