/**
 * Network pieces of the real-guest harness (test/real/guest.ts): QEMU's vhost-user net device
 * on a virtq back-end, the guest shell that brings `eth0` up and reports on it, and the feature
 * bits a Linux 6.1 guest should end up with. Used by test/real/vhost-user-net.test.ts.
 */
import { featureBit } from '../../src/devices/device.js';
import {
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_STATUS,
} from '../../src/devices/net/request.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/constants.js';
import { type LoggedProcess, type Machine, qemuOptValue, spawnLogged, waitFor } from './guest.js';

export interface VhostUserNetArgsOptions {
  /** Unix socket the back-end listens on. */
  readonly socket: string;
  readonly machine?: Machine;
  readonly packed?: boolean;
  /** The MAC the guest sees: QEMU's own `mac=` property (see {@link vhostUserNetArgs}). */
  readonly mac: string;
  /** QEMU ids: chardev `<id>`, netdev `<id>net`. Default `vun0`. */
  readonly id?: string;
}

/**
 * `-chardev socket` + `-netdev vhost-user` + QEMU's virtio-net model: `virtio-net-pci` with
 * `vectors=0` on pc (QEMU 7.2 under TCG crashes with vhost-user net and MSI-X), or
 * `virtio-net-device` on microvm. QEMU 7.2 keeps a vhost-user net device's configuration
 * space to itself (it asks the back-end for it only with vDPA), so the MAC the guest sees is
 * the device's `mac=` property: pass the one the back-end was given.
 */
export function vhostUserNetArgs(o: VhostUserNetArgsOptions): string[] {
  const id = o.id ?? 'vun0';
  const pc = (o.machine ?? 'pc') === 'pc';
  let device = `${pc ? 'virtio-net-pci' : 'virtio-net-device'},netdev=${id}net,mac=${o.mac}`;
  if (pc) device += ',vectors=0';
  if (o.packed === true) device += ',packed=on';
  return [
    '-chardev',
    `socket,id=${id},path=${qemuOptValue(o.socket)}`,
    '-netdev',
    `vhost-user,id=${id}net,chardev=${id}`,
    '-device',
    device,
  ];
}

/**
 * Guest shell: `fact NAME VALUE` prints a `FACT NAME=VALUE` line; waits for eth0 and reports
 * its MAC and the virtio-net device's negotiated features (`/sys/bus/virtio/devices/*` of
 * device id 0x0001); turns IPv6 off (so the kernel sends nothing of its own: no router or
 * neighbour solicitations); brings eth0 up and reports operstate and carrier once up (or after
 * 5 s); with `ip`, gives it that IPv4 address (/24).
 */
export function netUpScript(ip?: string): string {
  const lines = [
    'fact() { echo "FACT $1=$2"; }',
    'stat() { cat /sys/class/net/eth0/statistics/$1; }',
    'wait_for /sys/class/net/eth0 100 || exit 1',
    'fact mac "$(cat /sys/class/net/eth0/address)"',
    'for d in /sys/bus/virtio/devices/*; do',
    '  if [ "$(cat $d/device)" = 0x0001 ]; then',
    '    fact driver "$(basename "$(readlink $d/driver)")"',
    '    fact features "$(cat $d/features)"',
    '  fi',
    'done',
    'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6',
    'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6',
    'ip link set eth0 up',
    'i=0',
    'while [ "$(cat /sys/class/net/eth0/operstate)" != up ] && [ $i -lt 50 ]; do',
    '  sleep 0.1; i=$((i+1))',
    'done',
    'fact operstate "$(cat /sys/class/net/eth0/operstate)"',
    'fact carrier "$(cat /sys/class/net/eth0/carrier)"',
  ];
  if (ip !== undefined) lines.push(`ip addr add ${ip}/24 dev eth0`);
  return `${lines.join('\n')}\n`;
}

/**
 * Guest shell: waits (up to `tenths` tenths of a second) until eth0's statistic `name`
 * (`rx_packets`, `tx_packets`, …) reaches `count`.
 */
export function waitForStatScript(name: string, count: number, tenths = 100): string {
  return [
    'i=0',
    `while [ "$(stat ${name})" -lt ${count} ] && [ $i -lt ${tenths} ]; do`,
    '  sleep 0.1; i=$((i+1))',
    'done',
    '',
  ].join('\n');
}

export { parseFacts } from './guest.js';

/**
 * The feature bits QEMU 7.2's vhost-user net negotiates with the back-end (its
 * `user_feature_bits`) that Linux 6.1's virtio_net also knows: the guest has each of them
 * exactly when the back-end offered it.
 */
export const BACKEND_NEGOTIATED_BITS: readonly number[] = [
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_GUEST_CSUM,
  VIRTIO_NET_F_MTU,
  VIRTIO_NET_F_GUEST_TSO4,
  VIRTIO_NET_F_GUEST_TSO6,
  VIRTIO_NET_F_GUEST_ECN,
  VIRTIO_NET_F_GUEST_UFO,
  VIRTIO_NET_F_HOST_TSO4,
  VIRTIO_NET_F_HOST_TSO6,
  VIRTIO_NET_F_HOST_ECN,
  VIRTIO_NET_F_HOST_UFO,
  VIRTIO_NET_F_MRG_RXBUF,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  VIRTIO_F_RING_PACKED,
];

/**
 * Bits QEMU 7.2 provides itself, from its own configuration space, whatever the back-end
 * offers (virtq offers them too).
 */
export const FRONTEND_BITS: readonly number[] = [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS];

/**
 * What the guest's features string (bit 0 first) should say for each checked bit, given what
 * the back-end offered and whether QEMU was given `packed=on`: bit -> '0' or '1'.
 */
export function expectedGuestBits(offered: bigint, packed: boolean): Map<number, string> {
  const want = new Map<number, string>();
  for (const bit of BACKEND_NEGOTIATED_BITS) {
    let on = (offered & featureBit(bit)) !== 0n;
    if (bit === VIRTIO_F_RING_PACKED) on &&= packed;
    want.set(bit, on ? '1' : '0');
  }
  for (const bit of FRONTEND_BITS) want.set(bit, '1');
  return want;
}

/** The same bits read from a features string. */
export function guestBits(features: string, bits: Iterable<number>): Map<number, string> {
  const got = new Map<number, string>();
  for (const bit of bits) got.set(bit, features.charAt(bit));
  return got;
}

/**
 * Starts `virtq vhost-user-net` (the CLI as `cliArgs`, see virtqCliArgs) and waits until it
 * serves on `lastSocket` (the second socket of a pair); throws with its output if it does not.
 */
export async function startNetBackend(
  cliArgs: readonly string[],
  args: readonly string[],
  lastSocket: string,
): Promise<LoggedProcess> {
  const b = spawnLogged(process.execPath, [...cliArgs, 'vhost-user-net', ...args]);
  const up = await waitFor(
    () => b.log.join('').includes(`on ${lastSocket}`) || b.exitCode !== undefined,
    30_000,
  );
  if (!up || b.exitCode !== undefined) {
    b.child.kill('SIGKILL');
    throw new Error(`virtq vhost-user-net did not start:\n${b.log.join('')}`);
  }
  return b;
}
