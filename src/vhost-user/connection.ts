/**
 * The socket side of vhost-user: one front-end's connection (framing, and ownership of every fd
 * received on it) and the listening socket front-ends connect to. No protocol logic: complete
 * messages go to the back-end, which decodes and answers them.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { VhostUserError } from '../errors.js';
import type { Logger } from '../queue/logger.js';
import {
  decodeHeader,
  decodeMessage,
  encodeAckReply,
  encodeConfigErrorReply,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_PAYLOAD_SIZE,
  VhostUserFlags,
  type VhostUserMessage,
  VhostUserRequest,
} from './codec.js';
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

/** What a request handler may do with the fds of the message it handles. */
export interface MessageFds {
  /** Keeps `fd`: the handler stores it (every other fd of the message is closed after it). */
  keep(fd: number): void;
  /** Sends `fd` with the reply; it is closed after the message, sent or not. */
  attach(fd: number): void;
}

/**
 * The protocol side of a connection: handles each decoded request (one method per request
 * behind it), with no I/O of its own. A refusal is a throw; the connection answers it.
 */
export interface RequestHandler {
  /** REPLY_ACK was negotiated: a request with NEED_REPLY gets an ack (0) or a failure (1). */
  readonly replyAck: boolean;
  /** Every message that arrives, before it is decoded (counters). */
  arrived(): void;
  /** Every decoded request, before it is handled (tracing). */
  decoded(msg: VhostUserMessage): void;
  /** Handles a request; returns its reply (null: none, or only an ack). */
  handle(msg: VhostUserMessage, fds: MessageFds): Uint8Array | null;
  /**
   * A message the codec rejected (`request` undefined when even its header did not decode)
   * or a request the handler refused.
   */
  refused(error: unknown, request: VhostUserMessage | null): void;
}

/** Requests whose reply the front-end always waits for (so a failure cannot stay silent). */
const REPLYING_REQUESTS: ReadonlySet<number> = new Set([
  VhostUserRequest.GET_FEATURES,
  VhostUserRequest.GET_PROTOCOL_FEATURES,
  VhostUserRequest.GET_QUEUE_NUM,
  VhostUserRequest.GET_VRING_BASE,
  VhostUserRequest.GET_CONFIG,
  VhostUserRequest.GET_MAX_MEM_SLOTS,
  VhostUserRequest.GET_INFLIGHT_FD,
  VhostUserRequest.GET_STATUS,
  VhostUserRequest.SET_LOG_BASE,
]);

/**
 * One front-end's connection. Reads messages (a 12-byte header, then the payload it
 * announces; fds may come with any of their bytes), decodes them, hands each request to the
 * handler and sends its reply. It owns the socket and every fd received: the fds of a message
 * the handler did not keep are closed after it, and `close()` releases everything it holds.
 * Refusals are answered as the protocol says: a failure ack where the front-end asked for one
 * (REPLY_ACK), an empty GET_CONFIG, and for a request whose answer the front-end waits for and
 * cannot be given, the end of the connection.
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

  private readonly kept = new Set<number>();
  private readonly replyFds: number[] = [];
  private readonly fdsOfMessage: MessageFds = {
    keep: (fd) => this.kept.add(fd),
    attach: (fd) => this.replyFds.push(fd),
  };

  constructor(
    private readonly native: VhostUserNative,
    readonly fd: number,
    private readonly handler: RequestHandler,
    /** The connection ended by itself (the peer left, a socket error); not after `close()`. */
    private readonly ended: (reason: string) => void,
  ) {
    this.watcher = native.watch(fd, native.constants.POLL_READABLE, (error) => {
      if (!this.open) return;
      if (error !== null) {
        // libuv reports POLLERR as EBADF and stops the watcher. On a Unix socket POLLERR is
        // mostly a front-end that died with replies unread (ECONNRESET): a read says which,
        // and hands over any complete messages before it. If the read does not end the
        // connection, say what is known: the socket reported an error (our fd is fine).
        this.readable();
        this.end('the socket reported an error (POLLERR)');
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
    this.ended(reason);
  }

  /** Decodes and handles one complete message, and answers it. */
  private message(bytes: Uint8Array, fds: number[], fdsTruncated: boolean): void {
    const handler = this.handler;
    handler.arrived();
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const request = view.getUint32(0, true);
    const needReply = (view.getUint32(4, true) & VhostUserFlags.NEED_REPLY) !== 0;
    let msg: VhostUserMessage;
    try {
      if (fdsTruncated) {
        throw new VhostUserError(
          'VHOST_BAD_FDS',
          request,
          fds,
          'more fds than one message may carry',
        );
      }
      msg = decodeMessage(bytes, fds);
    } catch (e) {
      if (!(e instanceof VhostUserError)) throw e;
      closeFds(this.native, e.fds);
      handler.refused(e, null);
      this.failed(request, needReply, e.message);
      return;
    }
    this.kept.clear();
    let reply: Uint8Array | null;
    try {
      handler.decoded(msg);
      reply = handler.handle(msg, this.fdsOfMessage);
    } catch (e) {
      this.closeUnkept(msg.fds);
      closeFds(this.native, this.replyFds.splice(0));
      handler.refused(e, msg);
      this.failed(msg.request, msg.needReply, (e as Error).message);
      return;
    }
    this.closeUnkept(msg.fds);
    const replyFds = this.replyFds.splice(0);
    if (reply !== null) this.send(reply, replyFds);
    closeFds(this.native, replyFds);
    if (reply === null && msg.needReply && handler.replyAck) {
      this.send(encodeAckReply(msg.request, 0));
    }
  }

  /** Answers a refused request: a failure ack, an empty config, or the end of the connection. */
  private failed(request: number, needReply: boolean, why: string): void {
    if (!this.open) return;
    if (request === VhostUserRequest.GET_CONFIG) {
      this.send(encodeConfigErrorReply());
    } else if (REPLYING_REQUESTS.has(request)) {
      // The front-end waits for a reply that cannot be given.
      this.end(`cannot answer request ${request}: ${why}`);
    } else if (needReply && this.handler.replyAck) {
      this.send(encodeAckReply(request, 1));
    }
  }

  private closeUnkept(fds: readonly number[]): void {
    for (const fd of fds) {
      if (!this.kept.has(fd)) closeFds(this.native, [fd]);
    }
    this.kept.clear();
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
          if (e instanceof VhostUserError) closeFds(this.native, e.fds);
          this.handler.refused(e, null);
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
      this.message(bytes, fds, truncated);
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
