/**
 * `virtq vhost-user-net` against real Linux guests under QEMU (TCG, always under `timeout`):
 * QEMU's virtio-net model on a `-netdev vhost-user` (PCI with `vectors=0`, or virtio-mmio on
 * microvm; split and packed rings) and the kernel's own virtio_net driver. Checked:
 * - eth0 comes up (operstate up, carrier 1) with the MAC given to both virtq and QEMU;
 * - the negotiated feature bits are the ones virtq's device offers, as far as QEMU 7.2 lets
 *   the back-end decide them, with the packed ring exactly when asked for;
 * - `--backend sink` counts exactly the frames the guest sent (20 pings, IPv6 off, a static
 *   ARP entry: nothing else leaves), equal to the guest's own tx_packets and tx_bytes;
 * - `--backend generate --count 500` delivers exactly 500 frames: the guest's rx_packets;
 * - `--backend pair`: two guests, one on each socket, move a file over TCP and its md5 matches.
 *
 * When QEMU, the kernel or busybox is missing the tests are skipped with a loud warning, or
 * fail when CI is set. See docs/REAL-GUEST.md.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NetBackend } from '../../src/devices/net/backend.js';
import { NetDevice } from '../../src/devices/net/device.js';
import { GenerateBackend, SinkBackend } from '../../src/devices/net/lab-backends.js';
import { VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ } from '../../src/devices/net/request.js';
import {
  buildGuest,
  guestDepsFor,
  type LoggedProcess,
  type Machine,
  type QemuResult,
  runQemu,
  sharedMemoryArgs,
  stopProcess,
  virtqCliArgs,
  waitFor,
} from './guest.js';
import {
  expectedGuestBits,
  guestBits,
  netUpScript,
  parseFacts,
  startNetBackend,
  vhostUserNetArgs,
  waitForStatScript,
} from './net-guest.js';

const { missing, inCi } = await guestDepsFor('test/real/vhost-user-net.test.ts');

const MEM_MIB = 256;
const BOOT_TIMEOUT_MS = 60_000;
/** ICMP echo requests the guest sends into the sink. */
const PINGS = 20;
/** Frames the generate back-end offers, and their size. */
const GENERATED = 500;
const FRAME_SIZE = 128;
/** Bytes the pair test moves from guest B to guest A. */
const FILE_BYTES = 1_500_000;
/** Guest A prints this just before it listens. */
const LISTENING = 'VIRTQ-NET-LISTENING';

let workDir = '';
let cli: { args: string[]; what: string } = { args: [], what: '' };
let runs = 0;

interface Boot {
  qemu: QemuResult;
  facts: Map<string, string>;
  diagnostics: string;
}

function boot(
  what: string,
  script: string,
  machine: Machine,
  net: Parameters<typeof vhostUserNetArgs>[0] | { args: string[]; smp: number },
  onOutput?: (chunk: string) => void,
): Promise<Boot> {
  return buildGuest({ script }).then(async (guest) => {
    const own = 'args' in net;
    const qemu = await runQemu({
      ...guest,
      memMiB: MEM_MIB,
      timeoutMs: BOOT_TIMEOUT_MS,
      ...(own ? { smp: net.smp } : {}),
      ...(onOutput !== undefined ? { onOutput } : {}),
      args: [...sharedMemoryArgs(MEM_MIB, machine), ...(own ? net.args : vhostUserNetArgs(net))],
    });
    return {
      qemu,
      facts: parseFacts(qemu.stdout),
      diagnostics: `===== ${what}: ${qemu.command.join(' ')}\n--- guest ---\n${qemu.stdout}`,
    };
  });
}

/** What every boot must show: the guest ran, virtio_net bound, eth0 up with `mac`. */
function expectUp(b: Boot, mac: string, d: string): void {
  expect(b.qemu.timedOut, d).toBe(false);
  expect(b.qemu.guestRc, d).toBe(0);
  expect(b.qemu.stdout, d).toContain('VIRTQ-GUEST-SCRIPT-DONE');
  expect(b.facts.get('driver'), d).toBe('virtio_net');
  expect(b.facts.get('mac'), d).toBe(mac);
  expect(b.facts.get('operstate'), d).toBe('up');
  expect(b.facts.get('carrier'), d).toBe('1');
}

/** The negotiated bits against what `backend`'s device offers (the CLI builds the same). */
function expectFeatures(b: Boot, backend: NetBackend, mac: string, packed: boolean, d: string) {
  const offered = new NetDevice({ backend, mac }).offeredFeatures;
  const want = expectedGuestBits(offered, packed);
  const features = b.facts.get('features') ?? '';
  expect(features, d).toMatch(/^[01]{64}$/);
  expect(Object.fromEntries(guestBits(features, want.keys())), d).toEqual(Object.fromEntries(want));
}

/** A back-end that exits 0 on SIGTERM and printed no warning. */
function expectCleanBackend(b: LoggedProcess, log: string, d: string): void {
  expect(b.exitCode, d).toBe(0);
  expect(log, d).not.toMatch(/warn|error|refused|failed/i);
  expect(log, d).toMatch(/stopping[^;]*; \{"connections":1,/);
}

/**
 * Starts the back-end on `socket` with `args`, boots with `run`, stops the back-end; returns
 * the boot, the back-end and its log, and the diagnostics to print on a failure.
 */
async function withBackend(
  used: { args: string[]; what: string },
  socket: string,
  args: string[],
  run: () => Promise<Boot>,
) {
  const backend = await startNetBackend(used.args, ['--socket-path', socket, ...args], socket);
  let b: Boot;
  try {
    b = await run();
  } finally {
    await stopProcess(backend);
  }
  const log = backend.log.join('');
  return { b, backend, log, d: `${b.diagnostics}\n--- back-end (${used.what}) ---\n${log}` };
}

/** Guest lines: eth0 up, `PINGS` pings to an address with a static ARP entry (so nothing else
 * leaves), the frames given back, then the transmit counters as facts. */
function pingScript(...more: string[]): string {
  return [
    netUpScript('10.0.0.2'),
    ...more,
    'arp -s 10.0.0.1 02:00:00:00:00:01',
    `ping -c ${PINGS} -i 0.05 -W 1 10.0.0.1 > /dev/null`,
    // tx_packets counts frames the device has given back: wait for the last ones.
    waitForStatScript('tx_packets', PINGS),
    'fact tx_packets "$(stat tx_packets)"',
    'fact tx_bytes "$(stat tx_bytes)"',
    'echo VIRTQ-GUEST-SCRIPT-DONE',
  ].join('\n');
}

const macFor = (n: number) => `52:54:00:ab:cd:${n.toString(16).padStart(2, '0')}`;

describe('real guest: virtq vhost-user-net', () => {
  it('has what it needs', () => {
    if (inCi) expect(missing).toEqual([]);
  });

  beforeAll(async () => {
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vu-net-'));
    cli = await virtqCliArgs();
  });
  afterAll(async () => {
    if (workDir !== '') await fs.rm(workDir, { recursive: true, force: true });
  });

  const layouts: [Machine, boolean][] = [
    ['pc', false],
    ['pc', true],
    ['microvm', false],
    ['microvm', true],
  ];

  it.skipIf(missing.length > 0).each(layouts)(
    '%s, packed=%s: eth0 comes up with the MAC and features offered; the sink counts exactly what the guest sent',
    async (machine, packed) => {
      const mac = macFor(++runs);
      const socket = path.join(workDir, `sink${runs}.sock`);
      const { b, backend, log, d } = await withBackend(
        cli,
        socket,
        ['--mac', mac, '--backend', 'sink'],
        () =>
          boot(`sink ${machine} packed=${packed}`, pingScript(), machine, {
            socket,
            machine,
            packed,
            mac,
          }),
      );
      expectUp(b, mac, d);
      expectFeatures(b, new SinkBackend(), mac, packed, d);
      expectCleanBackend(backend, log, d);
      const sank = /sank (\d+) frames, (\d+) bytes/.exec(log);
      expect(sank, d).not.toBeNull();
      expect(b.facts.get('tx_packets'), d).toBe(String(PINGS));
      expect(sank![1], d).toBe(b.facts.get('tx_packets'));
      expect(sank![2], d).toBe(b.facts.get('tx_bytes'));
    },
    120_000,
  );

  const generateLayouts: [Machine, boolean][] = [
    ['pc', false],
    ['microvm', true],
  ];

  it.skipIf(missing.length > 0).each(generateLayouts)(
    `%s, packed=%s: --backend generate --count ${GENERATED}: the guest receives exactly ${GENERATED} frames`,
    async (machine, packed) => {
      const mac = macFor(++runs);
      const socket = path.join(workDir, `gen${runs}.sock`);
      const script = [
        netUpScript(),
        waitForStatScript('rx_packets', GENERATED),
        // Anything beyond the count would show up now.
        'sleep 0.5',
        'fact rx_packets "$(stat rx_packets)"',
        'fact rx_bytes "$(stat rx_bytes)"',
        'echo VIRTQ-GUEST-SCRIPT-DONE',
      ].join('\n');
      const args = ['--mac', mac, '--backend', 'generate', '--count', String(GENERATED)];
      const { b, backend, log, d } = await withBackend(
        cli,
        socket,
        [...args, '--frame-size', String(FRAME_SIZE)],
        () =>
          boot(`generate ${machine} packed=${packed}`, script, machine, {
            socket,
            machine,
            packed,
            mac,
          }),
      );
      expectUp(b, mac, d);
      expectFeatures(
        b,
        new GenerateBackend({ count: GENERATED, size: FRAME_SIZE }),
        mac,
        packed,
        d,
      );
      expectCleanBackend(backend, log, d);
      expect(log, d).toContain(`generated ${GENERATED} of ${GENERATED} frames`);
      // The frames go to the broadcast address; virtio_net counts each one it delivers.
      expect(b.facts.get('rx_packets'), d).toBe(String(GENERATED));
      expect(b.facts.get('rx_bytes'), d).toBe(String(GENERATED * FRAME_SIZE));
    },
    120_000,
  );

  it.skipIf(missing.length > 0)(
    '--backend pair: two guests, one on each socket, move a file over TCP and its md5 matches',
    async () => {
      const [macA, macB] = [macFor(0x10), macFor(0x11)];
      const [sockA, sockB] = [path.join(workDir, 'pair-a.sock'), path.join(workDir, 'pair-b.sock')];
      const scriptA = [
        netUpScript('10.0.0.1'),
        `echo ${LISTENING}`,
        'timeout 60 nc -l -p 5000 > /tmp/f; fact nc_rc $?',
        'fact md5 "$(md5sum < /tmp/f | cut -d" " -f1)"',
        'fact bytes "$(wc -c < /tmp/f)"',
        'echo VIRTQ-GUEST-SCRIPT-DONE',
      ].join('\n');
      const scriptB = [
        netUpScript('10.0.0.2'),
        `yes 'virtq pair: a line of test data' | head -c ${FILE_BYTES} > /tmp/f`,
        'fact md5 "$(md5sum < /tmp/f | cut -d" " -f1)"',
        'fact bytes "$(wc -c < /tmp/f)"',
        // A may still be on its way to listening: try again for a while.
        'i=0',
        'until timeout 60 nc 10.0.0.1 5000 < /tmp/f; do',
        '  i=$((i+1)); [ $i -ge 40 ] && break; sleep 0.25',
        'done',
        'fact nc_rc $?',
        'echo VIRTQ-GUEST-SCRIPT-DONE',
      ].join('\n');
      const backend = await startNetBackend(
        cli.args,
        ['--socket-path', sockA, '--backend', 'pair', '--peer-socket-path', sockB, '--mac', macA],
        sockB,
      );
      let a: Boot;
      let b: Boot;
      try {
        let consoleA = '';
        const bootA = boot('pair guest A', scriptA, 'pc', { socket: sockA, mac: macA }, (s) => {
          consoleA += s;
        });
        let aEnded = false;
        const ended = () => {
          aEnded = true;
        };
        bootA.then(ended, ended);
        // B is started once A is about to listen (or A is over: then B's checks fail fast).
        const listening = await waitFor(
          () => consoleA.includes(LISTENING) || aEnded,
          BOOT_TIMEOUT_MS,
        );
        // B's MAC is --mac plus one, the pair's default.
        b = await boot('pair guest B', scriptB, 'pc', { socket: sockB, mac: macB });
        a = await bootA;
        expect(listening, a.diagnostics).toBe(true);
      } finally {
        await stopProcess(backend);
      }
      const log = backend.log.join('');
      const d = `${a.diagnostics}\n${b.diagnostics}\n--- back-end (${cli.what}) ---\n${log}`;
      expectUp(a, macA, d);
      expectUp(b, macB, d);
      expect(backend.exitCode, d).toBe(0);
      expect(log, d).not.toMatch(/warn|error|refused|failed/i);
      expect(b.facts.get('nc_rc'), d).toBe('0');
      expect(a.facts.get('nc_rc'), d).toBe('0');
      expect(b.facts.get('bytes'), d).toBe(String(FILE_BYTES));
      expect(a.facts.get('bytes'), d).toBe(String(FILE_BYTES));
      expect(a.facts.get('md5'), d).toMatch(/^[0-9a-f]{32}$/);
      expect(a.facts.get('md5'), d).toBe(b.facts.get('md5'));
      // The cable lost nothing: each device received what the other sent while it was there
      // (a guest that powered off first may leave the other's last frames unplugged).
      const stats = [
        ...log.matchAll(/device (\d) \(MAC [^)]*\) sent (\d+) frames, received (\d+), (\d+) sent/g),
      ].map((m) => ({
        device: m[1],
        sent: Number(m[2]),
        received: Number(m[3]),
        lost: Number(m[4]),
      }));
      expect(
        stats.map((s) => s.device),
        d,
      ).toEqual(['1', '2']);
      const [one, two] = stats as [(typeof stats)[0], (typeof stats)[0]];
      expect(one.sent - one.lost, d).toBe(two.received);
      expect(two.sent - two.lost, d).toBe(one.received);
      // B sent the file: over a thousand full frames' worth, fewer frames with TSO.
      expect(one.received, d).toBeGreaterThan(10);
    },
    120_000,
  );
});

// ---- Two queue pairs (issue 13): QEMU serves the control queue, Linux enables both pairs ----

describe('real guest: virtq vhost-user-net --queues 2 (mq=on, 2 vCPUs)', () => {
  let dir = '';
  let cliArgs: { args: string[]; what: string } = { args: [], what: '' };
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vu-net-mq-'));
    cliArgs = await virtqCliArgs();
  });
  afterAll(async () => {
    if (dir !== '') await fs.rm(dir, { recursive: true, force: true });
  });

  it.skipIf(missing.length > 0).each([false, true])(
    'pc, packed=%s: eth0 has rx-0, rx-1, tx-0, tx-1 and VIRTIO_NET_F_MQ; the sink counts exactly what it sent',
    async (packed) => {
      const mac = macFor(packed ? 0x21 : 0x20);
      const socket = path.join(dir, `mq${packed ? 'p' : 's'}.sock`);
      const script = pingScript('fact queues "$(ls /sys/class/net/eth0/queues | tr "\\n" " ")"');
      const netArgs = [
        '-chardev',
        `socket,id=mq0,path=${socket}`,
        '-netdev',
        'vhost-user,id=mq0net,chardev=mq0,queues=2',
        '-device',
        // vectors=0: QEMU 7.2 under TCG needs it with vhost-user net (REAL-DRIVERS.md).
        `virtio-net-pci,netdev=mq0net,mac=${mac},mq=on,vectors=0${packed ? ',packed=on' : ''}`,
      ];
      const { b, backend, log, d } = await withBackend(
        cliArgs,
        socket,
        ['--mac', mac, '--backend', 'sink', '--queues', '2'],
        () => boot('mq', script, 'pc', { args: netArgs, smp: 2 }),
      );
      expectUp(b, mac, d);
      expect(log, d).toContain('2 queue pairs');
      expect((b.facts.get('queues') ?? '').trim().split(/\s+/).sort(), d).toEqual([
        'rx-0',
        'rx-1',
        'tx-0',
        'tx-1',
      ]);
      const offered = new NetDevice({ backend: new SinkBackend(), mac, queuePairs: 2 })
        .offeredFeatures;
      const want = expectedGuestBits(offered, packed);
      want.set(VIRTIO_NET_F_MQ, '1');
      want.set(VIRTIO_NET_F_CTRL_VQ, '1');
      const features = b.facts.get('features') ?? '';
      expect(Object.fromEntries(guestBits(features, want.keys())), d).toEqual(
        Object.fromEntries(want),
      );
      expectCleanBackend(backend, log, d);
      const sank = /sank (\d+) frames, (\d+) bytes/.exec(log);
      expect(sank, d).not.toBeNull();
      expect(b.facts.get('tx_packets'), d).toBe(String(PINGS));
      expect(sank![1], d).toBe(b.facts.get('tx_packets'));
      expect(sank![2], d).toBe(b.facts.get('tx_bytes'));
    },
    120_000,
  );
});
