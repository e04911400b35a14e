/**
 * `virtq vhost-user-net --backend tap` under a real Linux guest (QEMU TCG, always under
 * `timeout`): the back-end's tap interface is moved into a network namespace the test creates
 * (no route leads out of it; it is removed afterwards) and the namespace talks to the guest.
 * Checked, on pc with a split and with a packed ring:
 * - the namespace has only its /24 route, no default route, and the host no longer sees the tap;
 * - `ping -c 3` from the namespace gets 3 replies from the guest's eth0, and the namespace's
 *   neighbour entry for the guest holds the MAC given to `--mac` and QEMU's `mac=`;
 * - a 1 MiB file of known bytes sent from the namespace with `nc` arrives whole: the guest's
 *   byte count and md5 equal the file's; the guest sends it back with `nc` to a listener in the
 *   namespace, and those bytes equal the file too (segmentation offloads both ways);
 * - the back-end exits 0 on SIGTERM with one connection, no warning and no tap send or receive
 *   error, and its tap disappears from the namespace with it.
 *
 * Needs what every real-guest test needs (QEMU, a kernel, busybox) plus root, /dev/net/tun,
 * `ip`, `ping` and the native addon. Without them the tests are skipped with a loud warning, or
 * fail when CI is set. See docs/REAL-GUEST.md.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isNativeAvailable } from '../../src/vhost-user/native.js';
import {
  buildGuest,
  guestDepsFor,
  type LoggedProcess,
  type QemuResult,
  runQemu,
  sharedMemoryArgs,
  stopProcess,
  virtqCliArgs,
  waitFor,
} from './guest.js';
import { netUpScript, parseFacts, startNetBackend, vhostUserNetArgs } from './net-guest.js';

const FILE = 'test/real/vhost-user-net-tap.test.ts';
const guestDeps = await guestDepsFor(FILE);

function commandWorks(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore', timeout: 10_000 }).status === 0;
}

const tapMissing: string[] = [];
if (process.getuid?.() !== 0)
  tapMissing.push('root (CAP_NET_ADMIN: a tap and a network namespace)');
if (!existsSync('/dev/net/tun')) tapMissing.push('/dev/net/tun (modprobe tun)');
if (!commandWorks('ip', ['-V'])) tapMissing.push('ip (Debian package iproute2)');
if (!commandWorks('ping', ['-V'])) tapMissing.push('ping (Debian package iputils-ping)');
if (!isNativeAvailable()) tapMissing.push('the native addon (node native/prebuild.mjs)');
if (tapMissing.length > 0) {
  const bar = '!'.repeat(100);
  console.warn(
    `${bar}\n${FILE}: the tap guest tests ${guestDeps.inCi ? 'FAIL (CI is set)' : 'are SKIPPED'}: missing\n` +
      tapMissing.map((m) => `  - ${m}\n`).join('') +
      `Run them as root, with: sudo scripts/install-guest-deps.sh\n${bar}`,
  );
}
const missing = [...guestDeps.missing, ...tapMissing];
const { inCi } = guestDeps;

const NS = `virtq-guest-tap-${process.pid}`;
/** At most 15 bytes: 'vqgt' and up to 7 digits. */
const TAP = `vqgt${process.pid % 10_000_000}`;
const HOST_IP = '10.214.0.1';
const GUEST_IP = '10.214.0.2';
const PORT = 5000;
/** The namespace listens here for the file coming back. */
const BACK_PORT = 5001;
const FILE_BYTES = 1 << 20;
const MEM_MIB = 256;
const BOOT_TIMEOUT_MS = 60_000;
/** The guest prints this just before `nc -l`. */
const LISTENING = 'VIRTQ-TAP-LISTENING';
const BUSYBOX = ['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p)) ?? 'busybox';

/** `ip ARGS` on the host, bounded; throws with its stderr when it fails. */
function ipCmd(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
}

interface Ran {
  code: number | null;
  out: string;
}

/**
 * Starts `ARGS` inside the namespace under `timeout SECONDS`, stdin closed, a pipe the caller
 * keeps open, or a file descriptor; `done` settles with its status and output once it exits.
 */
function startInNs(
  args: string[],
  seconds: number,
  stdin: 'ignore' | 'pipe' | number = 'ignore',
): { child: ChildProcess; done: Promise<Ran> } {
  const child = spawn(
    'timeout',
    ['--kill-after=2', String(seconds), 'ip', 'netns', 'exec', NS, ...args],
    { stdio: [stdin, 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  const done = new Promise<Ran>((resolve) => {
    child.on('error', (e) => resolve({ code: null, out: `${out}${String(e)}` }));
    child.on('close', (code) => resolve({ code, out }));
  });
  return { child, done };
}

/** `ARGS` inside the namespace under `timeout SECONDS`, stdin from `stdinFile` or closed. */
async function inNs(args: string[], seconds: number, stdinFile?: string): Promise<Ran> {
  const input = stdinFile === undefined ? null : await fs.open(stdinFile, 'r');
  try {
    return await startInNs(args, seconds, input?.fd ?? 'ignore').done;
  } finally {
    await input?.close();
  }
}

/** Deterministic, non-repeating bytes (xorshift32), so a misplaced block changes the md5. */
function knownBytes(n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const macFor = (n: number) => `52:54:00:ab:ce:${n.toString(16).padStart(2, '0')}`;

let workDir = '';
let payload = '';
let payloadMd5 = '';
let cli: { args: string[]; what: string } = { args: [], what: '' };
let nsMade = false;
let running: LoggedProcess | null = null;

describe('real guest: virtq vhost-user-net --backend tap, from a network namespace', () => {
  it('has what it needs', () => {
    if (inCi) expect(missing).toEqual([]);
  });

  beforeAll(async () => {
    if (missing.length > 0) return;
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-vu-tap-'));
    cli = await virtqCliArgs();
    const bytes = knownBytes(FILE_BYTES);
    payload = path.join(workDir, 'payload');
    await fs.writeFile(payload, bytes);
    payloadMd5 = createHash('md5').update(bytes).digest('hex');
    ipCmd('netns', 'add', NS);
    nsMade = true;
    // IPv6 off for interfaces that arrive: the link carries only what the test sends.
    execFileSync(
      'ip',
      ['netns', 'exec', NS, 'sh', '-c', 'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6'],
      { timeout: 10_000 },
    );
  });

  afterAll(async () => {
    if (running !== null) await stopProcess(running);
    if (nsMade) {
      spawnSync('ip', ['netns', 'del', NS], { stdio: 'ignore', timeout: 10_000 });
      expect(ipCmd('netns', 'list')).not.toContain(NS);
    }
    if (workDir !== '') await fs.rm(workDir, { recursive: true, force: true });
  });

  it.skipIf(missing.length > 0).each([false, true])(
    'pc, packed=%s: the guest answers ping from the namespace and a 1 MiB file crosses over TCP both ways',
    async (packed) => {
      const mac = macFor(packed ? 2 : 1);
      const socket = path.join(workDir, `tap-${packed ? 'packed' : 'split'}.sock`);
      const script = [
        netUpScript(GUEST_IP),
        `echo ${LISTENING}`,
        `timeout 30 nc -l -p ${PORT} > /tmp/f; fact nc_rc $?`,
        'fact bytes "$(wc -c < /tmp/f)"',
        'fact md5 "$(md5sum < /tmp/f | cut -d" " -f1)"',
        // And back: the namespace listens by now (retried while it refuses).
        'i=0',
        `until timeout 30 nc ${HOST_IP} ${BACK_PORT} < /tmp/f; do`,
        '  i=$((i+1)); [ $i -ge 40 ] && break; sleep 0.25',
        'done',
        'sleep 0.5',
        'echo VIRTQ-GUEST-SCRIPT-DONE',
      ].join('\n');
      const backend = await startNetBackend(
        cli.args,
        ['--socket-path', socket, '--backend', 'tap', '--tap', TAP, '--mac', mac],
        socket,
      );
      running = backend;
      let qemu: QemuResult;
      let ping: Ran = { code: null, out: 'not run' };
      let send: Ran = { code: null, out: 'not run' };
      let back: ReturnType<typeof startInNs> | null = null;
      let backRan: Ran = { code: null, out: 'not run' };
      const backFile = path.join(workDir, `back-${packed ? 'packed' : 'split'}`);
      let neigh = '';
      let listening = false;
      try {
        // The back-end created the tap here; its descriptor keeps working after the move.
        ipCmd('link', 'set', TAP, 'netns', NS);
        ipCmd('-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
        ipCmd('-n', NS, 'link', 'set', TAP, 'up');
        expect(spawnSync('ip', ['link', 'show', TAP], { timeout: 10_000 }).status).not.toBe(0);
        expect(ipCmd('-n', NS, 'route', 'show', 'table', 'all')).not.toMatch(/default/);
        expect(ipCmd('-n', NS, '-4', 'route', 'show').trim().split('\n')).toEqual([
          expect.stringMatching(
            /^10\.214\.0\.0\/24 dev vqgt\d+ proto kernel scope link src 10\.214\.0\.1/,
          ),
        ]);

        const guest = await buildGuest({ script });
        let console_ = '';
        let ended = false;
        const boot = runQemu({
          ...guest,
          memMiB: MEM_MIB,
          timeoutMs: BOOT_TIMEOUT_MS,
          onOutput: (s) => {
            console_ += s;
          },
          args: [...sharedMemoryArgs(MEM_MIB), ...vhostUserNetArgs({ socket, packed, mac })],
        });
        boot.then(
          () => {
            ended = true;
          },
          () => {
            ended = true;
          },
        );
        await waitFor(() => console_.includes(LISTENING) || ended, BOOT_TIMEOUT_MS);
        listening = console_.includes(LISTENING);
        if (!ended) {
          // stdin stays open: busybox nc would half-close the connection at its end.
          back = startInNs(
            ['sh', '-c', `exec ${BUSYBOX} nc -l -p ${BACK_PORT} > "$0"`, backFile],
            40,
            'pipe',
          );
          ping = await inNs(['ping', '-c', '3', '-i', '0.2', '-W', '2', GUEST_IP], 15);
          neigh = ipCmd('-n', NS, 'neigh', 'show', GUEST_IP);
          // The guest may be a moment away from listening: try again while it refuses.
          for (let i = 0; i < 40; i++) {
            send = await inNs([BUSYBOX, 'nc', GUEST_IP, String(PORT)], 30, payload);
            if (send.code === 0 || !/refused/i.test(send.out)) break;
            await new Promise((r) => setTimeout(r, 250));
          }
        }
        qemu = await boot;
        if (back !== null) {
          const quit = new Promise<Ran>((r) => setTimeout(() => r(backRan), 5_000).unref());
          backRan = await Promise.race([back.done, quit]);
        }
      } finally {
        if (back !== null && back.child.exitCode === null) back.child.kill('SIGKILL');
        await stopProcess(backend);
        running = null;
      }
      const backBytes = existsSync(backFile) ? await fs.readFile(backFile) : Buffer.alloc(0);
      const log = backend.log.join('');
      const facts = parseFacts(qemu.stdout);
      const d = [
        `===== packed=${packed}: ${qemu.command.join(' ')}`,
        `--- guest ---\n${qemu.stdout}`,
        `--- ping (rc ${ping.code}) ---\n${ping.out}`,
        `--- nc (rc ${send.code}) ---\n${send.out}`,
        `--- nc -l (rc ${backRan.code}, ${backBytes.length} bytes) ---\n${backRan.out}`,
        `--- neighbour ---\n${neigh}`,
        `--- back-end (${cli.what}) ---\n${log}`,
      ].join('\n');
      if (process.env.VIRTQ_REAL_VERBOSE === '1') console.log(d);
      expect(listening, d).toBe(true);
      expect(qemu.timedOut, d).toBe(false);
      expect(qemu.guestRc, d).toBe(0);
      expect(qemu.stdout, d).toContain('VIRTQ-GUEST-SCRIPT-DONE');
      expect(facts.get('driver'), d).toBe('virtio_net');
      expect(facts.get('mac'), d).toBe(mac);
      expect(facts.get('operstate'), d).toBe('up');
      expect(facts.get('carrier'), d).toBe('1');
      expect(facts.get('features')?.charAt(34), d).toBe(packed ? '1' : '0');

      expect(ping.code, d).toBe(0);
      expect(ping.out, d).toMatch(/3 packets transmitted, 3 received/);
      expect(neigh, d).toContain(`lladdr ${mac}`);

      expect(send.code, d).toBe(0);
      expect(facts.get('nc_rc'), d).toBe('0');
      expect(facts.get('bytes'), d).toBe(String(FILE_BYTES));
      expect(facts.get('md5'), d).toBe(payloadMd5);
      expect(backRan.code, d).toBe(0);
      expect(backBytes.length, d).toBe(FILE_BYTES);
      expect(createHash('md5').update(backBytes).digest('hex'), d).toBe(payloadMd5);

      expect(backend.exitCode, d).toBe(0);
      expect(log, d).toMatch(
        new RegExp(`serving a network device \\(MAC ${mac}\\) with tap interface ${TAP} on `),
      );
      const tap = new RegExp(
        `tap ${TAP}: sent (\\d+) frames, received (\\d+), send errors 0, receive errors 0;`,
      ).exec(log);
      expect(tap, d).not.toBeNull();
      // The file crossed the device each way: its bytes plus headers. With segmentation
      // offloads the frames are few and large, so their counts only get a floor.
      expect(Number(tap![1]), d).toBeGreaterThan(10);
      expect(Number(tap![2]), d).toBeGreaterThan(10);
      const counters = /; device (\{.*\})/.exec(log)?.[1] ?? '{}';
      const device: Record<string, number> = JSON.parse(counters);
      expect(device.txBytes, d).toBeGreaterThan(FILE_BYTES);
      expect(device.rxBytes, d).toBeGreaterThan(FILE_BYTES);
      expect(log, d).toMatch(/stopping[^;]*; \{"connections":1,/);
      // Only the serving, connection and counter lines: no warning of the back-end's own.
      const rest = log
        .split('\n')
        .filter((l) => !/^virtq vhost-user-net: (tap |stopping)/.test(l))
        .join('\n');
      expect(rest, d).not.toMatch(/warn|error|refused|failed/i);
      // The interface was the back-end's: it is gone with it.
      expect(
        spawnSync('ip', ['-n', NS, 'link', 'show', TAP], { timeout: 10_000 }).status,
        d,
      ).not.toBe(0);
    },
    120_000,
  );
});
