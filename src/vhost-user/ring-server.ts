/**
 * Serving rings, the same on the back-end's thread (InProcessPlane) and in a ring worker
 * (ring-worker-main.ts): a kick is drained from its eventfd and starts a turn of the device; a
 * turn never throws out (a device failure is reported) and is followed by the dirty log's
 * flush; a used-buffer interrupt flushes the log first, then writes the ring's call eventfd; a
 * device that needs a reset writes the rings' error eventfds.
 */
import type { InterruptSink, VirtioDevice } from '../devices/device.js';
import type { Logger } from '../queue/logger.js';
import type { VhostUserNative } from './native.js';
import { signalError } from './ring-state.js';

/** What a ring server needs of its plane. */
export interface RingServerHost {
  readonly device: VirtioDevice;
  readonly native: VhostUserNative;
  readonly logger: Logger;
  /** Prefix of every warning ('vhost-user', 'vhost-user ring worker'). */
  readonly who: string;
  /** Moves the pages the device wrote into the dirty log, when there is one. */
  flushLog(): void;
  /** Ring `index`'s call eventfd, or null. */
  callFd(index: number): number | null;
  /** The error eventfds of every ring served here. */
  errFds(): Iterable<number | null>;
  /** Counts a kick drained or a call written. */
  count(what: 'kicks' | 'calls'): void;
}

export class RingServer {
  /** The interrupt sink of the device's context. */
  readonly sink: InterruptSink;

  constructor(private readonly host: RingServerHost) {
    this.sink = {
      usedBuffer: (index) => this.call(index),
      configChanged: () => {
        const device = host.device;
        if (device.needsReset) {
          // DEVICE_NEEDS_RESET has no vhost-user message: the rings' error eventfds are what
          // tells the front-end (QEMU reports "vhost vring error in virtqueue N").
          host.logger.warn(`${host.who}: the device needs a reset`, {
            error: String(device.lastError ?? ''),
          });
          for (const fd of host.errFds()) signalError(host.native, fd, host.logger);
          return;
        }
        // Without the back-end request channel there is no way to tell the front-end.
        host.logger.warn(`${host.who}: device configuration changed (not signalled)`);
      },
    };
  }

  /**
   * A kick eventfd of ring `index` is readable: drains it (the poll is level-triggered) and
   * counts the kick. False when it cannot be read (the caller stops watching it).
   */
  drainKick(index: number, fd: number): boolean {
    try {
      this.host.native.eventfdRead(fd);
    } catch (e) {
      this.host.logger.warn(`${this.host.who}: reading a kick fd failed`, {
        index,
        error: (e as Error).message,
      });
      return false;
    }
    this.host.count('kicks');
    return true;
  }

  /**
   * A turn of the device on ring `index` (`turn`, or by default a notification), then the dirty
   * log. The default is called here rather than made a default parameter, which would be a new
   * closure per turn: a polled ring is served hundreds of thousands of times a second.
   */
  serve(index: number, turn?: () => void): void {
    try {
      if (turn === undefined) this.host.device.queueNotify(index);
      else turn();
    } catch (e) {
      this.host.logger.warn(`${this.host.who}: the device failed while serving a ring`, {
        index,
        error: e instanceof Error ? (e.stack ?? e.message) : String(e),
      });
    }
    this.host.flushLog();
  }

  /** Writes ring `index`'s call eventfd, after logging the pages the guest is about to see. */
  private call(index: number): void {
    const host = this.host;
    host.flushLog();
    const fd = host.callFd(index);
    if (fd === null) return;
    try {
      host.native.eventfdWrite(fd, 1);
      host.count('calls');
    } catch (e) {
      host.logger.warn(`${host.who}: writing a call fd failed`, {
        index,
        error: (e as Error).message,
      });
    }
  }
}
