/**
 * `virtq vhost-user-net --backend pair`: two network devices in one process, each served on its
 * own socket and cable-connected to the other ({@link createNetPair}), so that two guests (or
 * two DPDK drivers) talk to each other through virtq alone.
 */
import { InvalidArgumentError } from 'commander';
import { createNetPair, formatMac, parseMac } from '../devices/net/backend.js';
import { NetDevice } from '../devices/net/device.js';
import { serveDevices } from './vhost-user.js';
import type { VhostUserNetOptions } from './vhost-user-net.js';

/** Refuses the peer options where they mean nothing, and a pair without its second socket. */
export function checkPeerOptions(opts: VhostUserNetOptions): void {
  if (opts.backend !== 'pair') {
    for (const [flag, value] of [
      ['--peer-socket-path', opts.peerSocketPath],
      ['--peer-mac', opts.peerMac],
    ] as const) {
      if (value !== undefined) {
        throw new InvalidArgumentError(
          `${flag} is for --backend pair (the second device of the pair); it cannot be used with --backend ${opts.backend}.`,
        );
      }
    }
    return;
  }
  if (opts.peerSocketPath === undefined) {
    throw new InvalidArgumentError(
      '--backend pair needs --peer-socket-path <path>: the socket of the second device, the other end of the cable.',
    );
  }
  if (opts.peerSocketPath === opts.socketPath) {
    throw new InvalidArgumentError(
      `--peer-socket-path must differ from --socket-path (both are ${opts.socketPath}).`,
    );
  }
  if (opts.mac !== undefined && opts.peerMac !== undefined && opts.mac === opts.peerMac) {
    throw new InvalidArgumentError(
      `--peer-mac must differ from --mac (both are ${opts.mac}): the two guests share a link.`,
    );
  }
}

/**
 * The MAC address after `mac`, its last three bytes (the part an organisation assigns) counted
 * up by one and wrapping within them: "52:54:00:ab:cd:ff" gives "52:54:00:ab:ce:00".
 */
export function nextMac(mac: string): string {
  const b = parseMac(mac);
  const low = (((b[3]! << 16) | (b[4]! << 8) | b[5]!) + 1) & 0xffffff;
  b.set([low >>> 16, (low >>> 8) & 0xff, low & 0xff], 3);
  return formatMac(b);
}

/** Serves the two devices of `--backend pair` until SIGINT or SIGTERM. */
export function vhostUserNetPair(opts: VhostUserNetOptions): void {
  checkPeerOptions(opts);
  const ends = createNetPair();
  const macs = [opts.mac, opts.peerMac ?? (opts.mac !== undefined ? nextMac(opts.mac) : undefined)];
  const sockets = [opts.socketPath, opts.peerSocketPath!];
  const devices = ends.map(
    (backend, i) =>
      new NetDevice({
        backend,
        queueSize: opts.queueSize,
        queuePairs: opts.queues,
        ...(macs[i] !== undefined ? { mac: macs[i] } : {}),
      }),
  );
  const served = devices.map((device, i) => ({
    device,
    socket: { ...opts, socketPath: sockets[i]! },
    what: `network device ${i + 1} of a pair (MAC ${formatMac(device.mac)}), cable-connected to ${formatMac(devices[1 - i]!.mac)},`,
  }));
  serveDevices('vhost-user-net', served, {}, () => {
    devices.forEach((device, i) => {
      console.error(
        `virtq vhost-user-net: device ${i + 1} (MAC ${formatMac(device.mac)}) sent ${device.stats.txFrames} frames, received ${device.stats.rxFrames}, ${ends[i]!.unplugged} sent with no device at the other end; device ${JSON.stringify(device.stats)}`,
      );
    });
  });
}
