/**
 * `virtq vhost-user-net`: virtq's network device served over vhost-user, with a frame backend
 * that needs no network: `reflect` (every frame back to the driver, MAC addresses swapped),
 * `sink` (counts) or `generate` (a bounded number of frames of one size), for drivers under
 * test such as DPDK's virtio-user and for benchmarks; or `pair` (two devices on two sockets,
 * cable-connected, so two guests talk to each other); or `tap`, a Linux tap interface, which puts
 * the guest on the host's network.
 */
import { InvalidArgumentError } from 'commander';
import { formatMac, type NetBackend, parseMac } from '../devices/net/backend.js';
import { NET_MAX_QUEUE_PAIRS } from '../devices/net/config.js';
import { NetDevice } from '../devices/net/device.js';
import { GenerateBackend, ReflectBackend, SinkBackend } from '../devices/net/lab-backends.js';
import { TapNetBackend, tapNameProblem } from '../node/net-tap.js';
import { type SocketOptions, serve } from './vhost-user.js';
import { checkPeerOptions, vhostUserNetPair } from './vhost-user-net-pair.js';

/** The frame backends `--backend` names. */
export const NET_BACKEND_KINDS = ['reflect', 'sink', 'generate', 'pair', 'tap'] as const;
export type NetBackendKind = (typeof NET_BACKEND_KINDS)[number];

export interface VhostUserNetOptions extends SocketOptions {
  backend: NetBackendKind;
  /** The MAC address offered; undefined: a random locally administered one. */
  mac?: string;
  /** Largest ring size a front-end may set. */
  queueSize: number;
  /** Receive/transmit queue pairs (`--queues`). */
  queues: number;
  /** generate: frames in all, and bytes per frame. */
  count: number;
  frameSize: number;
  /** pair: the second device's socket, and its MAC (default: --mac plus one, else random). */
  peerSocketPath?: string;
  peerMac?: string;
  /** tap: the interface to create or attach to (default {@link DEFAULT_TAP}). */
  tap?: string;
}

export { NET_MAX_QUEUE_PAIRS };

/** The interface `--backend tap` uses when `--tap` is not given. */
export const DEFAULT_TAP = 'virtq0';

/** A `--tap` argument: an interface name the kernel accepts. */
export function tapName(v: string): string {
  const problem = tapNameProblem(v);
  if (problem !== null) throw new InvalidArgumentError(`--tap ${JSON.stringify(v)}: ${problem}.`);
  return v;
}

/**
 * A MAC address argument, as "52:54:00:12:34:56": a unicast one (a guest's driver refuses a
 * multicast or all-zero address, and its interface does not come up).
 */
export function macAddress(v: string): string {
  let mac: Uint8Array;
  try {
    mac = parseMac(v);
  } catch {
    throw new InvalidArgumentError(
      `${v} is not a MAC address (six hex bytes, e.g. 52:54:00:12:34:56).`,
    );
  }
  if ((mac[0]! & 1) !== 0 || mac.every((b) => b === 0)) {
    throw new InvalidArgumentError(
      `${v} is a ${mac[0]! & 1 ? 'multicast' : 'zero'} address; a device needs a unicast one (e.g. 52:54:00:12:34:56).`,
    );
  }
  return formatMac(mac);
}

export function vhostUserNet(opts: VhostUserNetOptions): void {
  if (opts.backend === 'pair') {
    vhostUserNetPair(opts);
    return;
  }
  checkPeerOptions(opts);
  if (opts.tap !== undefined && opts.backend !== 'tap') {
    throw new InvalidArgumentError(
      `--tap is for --backend tap; it cannot be used with --backend ${opts.backend}.`,
    );
  }
  let backend: NetBackend;
  let counters: () => string;
  let what =
    opts.backend === 'generate'
      ? `${opts.count} generated frames of ${opts.frameSize} bytes`
      : `a ${opts.backend} frame backend`;
  switch (opts.backend) {
    case 'reflect': {
      const b = new ReflectBackend();
      backend = b;
      counters = () => `reflected ${b.frames} frames, ${b.bytes} bytes`;
      break;
    }
    case 'sink': {
      const b = new SinkBackend();
      backend = b;
      counters = () => `sank ${b.frames} frames, ${b.bytes} bytes`;
      break;
    }
    case 'generate': {
      const b = new GenerateBackend({ count: opts.count, size: opts.frameSize });
      backend = b;
      counters = () => `generated ${b.frames} of ${b.count} frames, ${b.bytes} bytes`;
      break;
    }
    case 'tap': {
      // A host that cannot open the interface throws a TapUnavailableError whose message says
      // why in one line; main() prints it and exits with status 1.
      const b = TapNetBackend.open({ name: opts.tap ?? DEFAULT_TAP });
      backend = b;
      what = `tap interface ${b.name}`;
      counters = () =>
        `tap ${b.name}: sent ${b.sent} frames, received ${b.received}, send errors ${b.sendErrors}, receive errors ${b.receiveErrors}`;
      break;
    }
  }
  const device = new NetDevice({
    backend,
    queueSize: opts.queueSize,
    queuePairs: opts.queues,
    ...(opts.mac !== undefined ? { mac: opts.mac } : {}),
  });
  serve(
    'vhost-user-net',
    device,
    opts,
    `a network device (MAC ${formatMac(device.mac)}${opts.queues > 1 ? `, ${opts.queues} queue pairs` : ''}) with ${what}`,
    {},
    () =>
      console.error(`virtq vhost-user-net: ${counters()}; device ${JSON.stringify(device.stats)}`),
  );
}
