/**
 * The vhost-user commands of the CLI: `virtq vhost-user-blk` and `virtq vhost-user-rng`. Each
 * builds its device, hands it to one {@link VhostUserBackend} listening on a Unix socket, and
 * serves until SIGINT or SIGTERM, when it prints its counters and exits 0.
 */
import { statSync } from 'node:fs';
import { InvalidArgumentError } from 'commander';
import type { VirtioDevice } from '../devices/device.js';
import { type EntropySource, RngDevice } from '../devices/rng/device.js';
import { openFileEntropySource } from '../node/entropy-file.js';
import {
  VHOST_USER_BACKEND_PROTOCOL_FEATURES,
  VhostUserBackend,
  type VhostUserBackendOptions,
} from '../vhost-user/backend.js';
import type { VhostUserMessage } from '../vhost-user/codec.js';
import { protocolFeatureMask, VhostUserProtocolFeature } from '../vhost-user/protocol.js';
import { type BlkDeviceOptions, createBlkDevice } from './blk-device.js';

/** One device of a command, and the socket it is served on. */
export interface ServedDevice {
  device: VirtioDevice;
  socket: SocketOptions;
  /** What the `serving` line says the device is. */
  what: string;
}

/**
 * Serves `device` on `socketPath` as command `name`: connection and trace lines on stderr,
 * counters on the way out. `extra` adds back-end options (ring workers); `onStop` releases what
 * the command opened.
 */
export function serve(
  name: string,
  device: VirtioDevice,
  socket: SocketOptions,
  what: string,
  extra: VhostUserBackendOptions = {},
  onStop: () => void = () => {},
): void {
  serveDevices(name, [{ device, socket, what }], extra, onStop);
}

/**
 * Serves each device on its own socket, one back-end each, in one process: as {@link serve},
 * and SIGINT or SIGTERM stops them all. With several, each line names its socket. Back-ends
 * that connected (`--connect`) stop the command once every front-end has left.
 */
export function serveDevices(
  name: string,
  served: readonly ServedDevice[],
  extra: VhostUserBackendOptions = {},
  onStop: () => void = () => {},
): void {
  const many = served.length > 1;
  const at = (socket: SocketOptions): string => (many ? ` on ${socket.socketPath}` : '');
  let stop = (): void => {};
  let present = served.length;
  const backends: VhostUserBackend[] = [];
  for (const { device, socket } of served) {
    const socketPath = socket.socketPath;
    const backend = new VhostUserBackend(device, {
      onConnect: () => console.error(`virtq ${name}: front-end connected${at(socket)}`),
      onDisconnect: (why) => {
        console.error(`virtq ${name}: front-end left${at(socket)} (${why})`);
        // A back-end that connected has nobody left to serve.
        if (socket.connect && --present === 0) stop();
      },
      pollIdleMicros: socket.poll,
      ...extra,
      // VIRTQ_VHOST_TRACE=1 prints every request (a debugging aid, not an interface).
      ...(process.env.VIRTQ_VHOST_TRACE === '1'
        ? {
            onMessage: (m: VhostUserMessage) =>
              console.error(
                `virtq ${name}:${at(socket)} ${m.kind} ${JSON.stringify(m, (k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : k === 'payload' ? undefined : v))}`,
              ),
          }
        : {}),
    });
    backends.push(backend);
    try {
      if (socket.connect) backend.connect(socketPath);
      else backend.listen(socketPath);
    } catch (e) {
      for (const b of backends) b.close();
      onStop();
      const err = e as NodeJS.ErrnoException;
      throw new InvalidArgumentError(
        `cannot ${socket.connect ? 'connect to' : 'listen on'} ${socketPath}: ${err.code ?? err.message}${socket.connect ? ' (is the front-end listening there, e.g. QEMU -chardev socket,server=on?)' : ''}`,
      );
    }
  }
  stop = (): void => {
    served.forEach(({ socket }, i) => {
      const where = many ? ` ${socket.socketPath}` : '';
      console.error(`virtq ${name}: stopping${where}; ${JSON.stringify(backends[i]!.stats)}`);
    });
    for (const b of backends) b.close();
    onStop();
    process.exit(0);
  };
  // The handlers come before the "serving" line: whoever waits for that line may signal at once.
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  for (const { socket, what } of served) {
    console.error(
      `virtq ${name}: serving ${what} ${socket.connect ? 'connected to' : 'on'} ${socket.socketPath}`,
    );
  }
}

/** Where a back-end meets its front-end. */
export interface SocketOptions {
  socketPath: string;
  /** Connect to a front-end listening at `socketPath` instead of listening there. */
  connect: boolean;
  /** Polling mode: microseconds a busy ring is polled after it last moved (0: kicks only). */
  poll: number;
}

// ---- vhost-user-blk ----

export interface VhostUserBlkOptions extends SocketOptions {
  blkFile: string;
  readOnly: boolean;
  numQueues: number;
  queueSize: number;
  blockSize: number;
  ringThreads: boolean;
  asyncIo: boolean;
}

/** Bytes of one virtio-blk sector: capacity is counted in these whatever the block size. */
const SECTOR = 512;

export function vhostUserBlk(opts: VhostUserBlkOptions): void {
  if (opts.asyncIo && !opts.ringThreads) {
    throw new InvalidArgumentError(
      '--async-io needs ring threads (they wait for transfers under way before a ring stops); it cannot be combined with --no-ring-threads.',
    );
  }
  const size = statSync(opts.blkFile).size;
  // FileBackend serves the file padded with zeroes to a whole sector (a write there lengthens
  // the file); a guest addresses whole logical blocks of the disk that makes.
  const disk = Math.ceil(size / SECTOR) * SECTOR;
  if (size === 0 || disk < opts.blockSize) {
    throw new InvalidArgumentError(
      `--blk-file ${opts.blkFile} is ${size} bytes, less than one ${opts.blockSize}-byte block: there is nothing to serve (make it larger, e.g. truncate -s 1G ${opts.blkFile}).`,
    );
  }
  if (disk !== size) {
    console.error(
      `virtq vhost-user-blk: note: ${opts.blkFile} is ${size} bytes, not a whole number of ${SECTOR}-byte sectors; the guest sees ${disk / SECTOR} sectors (${disk} bytes): the last sector's missing ${disk - size} bytes read as zeroes, and a write there makes the file ${disk} bytes long.`,
    );
  }
  const reach = Math.floor(disk / opts.blockSize) * opts.blockSize;
  if (reach !== disk) {
    console.error(
      `virtq vhost-user-blk: note: with ${opts.blockSize}-byte blocks the guest uses whole blocks only (${reach} bytes); the last ${disk - reach} bytes of the disk are out of its reach.`,
    );
  }
  const blk: BlkDeviceOptions = {
    file: opts.blkFile,
    readOnly: opts.readOnly,
    numQueues: opts.numQueues,
    queueSize: opts.queueSize,
    blockSize: opts.blockSize,
    // Ring workers drain transfers under way before a ring stops; the main thread cannot.
    asyncIo: opts.ringThreads && opts.asyncIo,
  };
  const device = createBlkDevice(blk);
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  serve(
    'vhost-user-blk',
    device,
    opts,
    `${opts.blkFile} (${device.backend.size} bytes${opts.readOnly ? ', read-only' : ''}, ${opts.numQueues} queue${opts.numQueues > 1 ? 's' : ''}${opts.ringThreads ? ', one thread each' : ''})`,
    // Each ring on its own thread, with its own handle on the image.
    opts.ringThreads
      ? {
          ringWorkers: {
            spec: {
              kind: 'module',
              module: new URL(`./blk-device${ext}`, import.meta.url).href,
              export: 'createBlkDevice',
              options: blk,
            },
          },
        }
      : {},
  );
}

// ---- vhost-user-rng ----

export interface VhostUserRngOptions extends SocketOptions {
  /** Bytes per period; undefined: no limit. */
  maxBytes?: number;
  /** Milliseconds per period. */
  period: number;
  /** A file to read entropy from; undefined: the platform's cryptographic generator. */
  source?: string;
}

/** rust-vmm's vhost-device-rng (and QEMU's virtio-rng) allow periods up to 65536 ms. */
export const RNG_MAX_PERIOD_MS = 65536;

export function vhostUserRng(opts: VhostUserRngOptions): void {
  let file: ReturnType<typeof openFileEntropySource> | null = null;
  if (opts.source !== undefined) {
    try {
      file = openFileEntropySource(opts.source);
    } catch (e) {
      throw new InvalidArgumentError(
        `--source ${opts.source} cannot be used: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}.`,
      );
    }
    if (file.regular) {
      console.error(
        `virtq vhost-user-rng: note: ${opts.source} is a regular file; its bytes are served in a loop, which is for tests, not for entropy.`,
      );
    }
  }
  let failures = 0;
  const source: EntropySource | undefined =
    file === null
      ? undefined
      : (out) => {
          try {
            file!.source(out);
          } catch (e) {
            // The device puts the request back and asks again later; say so, but not forever.
            if (failures++ < 10) {
              console.error(
                `virtq vhost-user-rng: reading ${opts.source} failed (${(e as Error).message}); the request waits and is tried again`,
              );
            }
            throw e;
          }
        };
  const device = new RngDevice({
    // QEMU's virtio-mmio transport offers the guest 1024 entries whatever the back-end's
    // maximum, and Linux takes them (as for vhost-user-blk).
    queueSize: 1024,
    ...(source !== undefined ? { source } : {}),
    ...(opts.maxBytes !== undefined
      ? { rateLimit: { maxBytes: opts.maxBytes, periodMs: opts.period } }
      : {}),
  });
  const limit =
    opts.maxBytes === undefined
      ? 'no rate limit'
      : `at most ${opts.maxBytes} bytes per ${opts.period} ms`;
  serve(
    'vhost-user-rng',
    device,
    opts,
    `entropy from ${opts.source ?? 'the platform generator (Web Crypto)'}, ${limit},`,
    {
      // QEMU 7.2's vhost-user-rng does not negotiate again with a restarted back-end: it
      // carries on as if the new one had agreed to what the old one did. So offer only what
      // needs no agreement to be understood: no configuration space (CONFIG), no replies it
      // would wait for (REPLY_ACK), and the whole memory table on every start rather than
      // slot by slot (CONFIGURE_MEM_SLOTS: QEMU keeps its record of the slots it sent and would
      // send the new back-end none).
      protocolFeatures:
        VHOST_USER_BACKEND_PROTOCOL_FEATURES &
        ~protocolFeatureMask(VhostUserProtocolFeature.CONFIG) &
        ~protocolFeatureMask(VhostUserProtocolFeature.REPLY_ACK) &
        ~protocolFeatureMask(VhostUserProtocolFeature.CONFIGURE_MEM_SLOTS),
    },
    () => file?.close(),
  );
}
