/**
 * The tap frame backend (`TapNetBackend`, virtq/node). Unit: the virtio header's byte layout
 * and interface-name checks. System: a NetDevice on a tap interface, driven by the spec-exact
 * driver over virtio-mmio in this process, with the interface moved into a network namespace
 * the test creates (no route leads out of it; it is removed afterwards): ARP and ping both
 * ways, a partial checksum crossing in each direction, lossless flow control, and the README's
 * tap recipe run as written inside the namespace.
 *
 * The system tests need root (CAP_NET_ADMIN), /dev/net/tun, `ip` (iproute2), `ping`
 * (iputils-ping) and the native addon. Without them they are skipped with a loud warning, or
 * fail when CI is set.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { decodeNetHeader, encodeNetHeader } from '../../src/devices/net/header.js';
import {
  NET_OFFLOAD_FEATURES,
  plainHeader,
  VIRTIO_NET_F_CSUM,
  VIRTIO_NET_F_MAC,
  VIRTIO_NET_HDR_F_NEEDS_CSUM,
} from '../../src/devices/net/index.js';
import type { ReceivedFrame } from '../../src/driver/devices/net.js';
import type { InterruptWaiter } from '../../src/driver/devices/waiter.js';
import {
  TAP_NAME_MAX_BYTES,
  TapNetBackend,
  TapUnavailableError,
  tapNameProblem,
} from '../../src/node/index.js';
import { isNativeAvailable } from '../../src/vhost-user/native.js';
import { MAC_A, type NetSide, netSide, RINGS, World } from '../devices/net-rig.js';
import {
  answer,
  arp,
  icmpEcho,
  ip,
  parseArp,
  parseIcmpEcho,
  parseIpv4,
  parseUdp,
  UDP_CSUM_OFFSET,
  UDP_CSUM_START,
  udp,
} from './tap-frames.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');

describe('virtio-net header bytes', () => {
  it('encode and decode round trip, little-endian, num_buffers at bytes 10-11', () => {
    const u16 = fc.integer({ min: 0, max: 0xffff });
    const u8 = fc.integer({ min: 0, max: 0xff });
    fc.assert(
      fc.property(u8, u8, u16, u16, u16, u16, u16, (f, g, hl, gs, cs, co, nb) => {
        const h = { flags: f, gsoType: g, hdrLen: hl, gsoSize: gs, csumStart: cs, csumOffset: co };
        const b = new Uint8Array(14).fill(0xee);
        encodeNetHeader(h, b, 1, nb);
        expect(b[0]).toBe(0xee);
        expect(b[13]).toBe(0xee);
        expect(b[11]! | (b[12]! << 8)).toBe(nb);
        expect(decodeNetHeader(b, 1, plainHeader())).toEqual(h);
      }),
    );
    const b = new Uint8Array(12);
    encodeNetHeader({ ...plainHeader(), flags: 1, csumStart: 0x1234, csumOffset: 6 }, b);
    expect(Array.from(b)).toEqual([1, 0, 0, 0, 0, 0, 0x34, 0x12, 6, 0, 0, 0]);
    expect(() => decodeNetHeader(new Uint8Array(11), 0, plainHeader())).toThrow(RangeError);
    expect(() => decodeNetHeader(new Uint8Array(12), 1, plainHeader())).toThrow(RangeError);
  });
});

describe('tap interface names', () => {
  it('accepts 1 to 15 bytes of letters, digits, _ . - and one %d', () => {
    for (const ok of ['virtq0', 'tap%d', 'a', 'vm-1.net_2', 'x'.repeat(TAP_NAME_MAX_BYTES)]) {
      expect(tapNameProblem(ok), ok).toBeNull();
    }
  });

  it('refuses the rest, saying why', () => {
    expect(tapNameProblem('')).toMatch(/empty/);
    expect(tapNameProblem('x'.repeat(16))).toMatch(/at most 15 bytes/);
    expect(tapNameProblem('é'.repeat(8))).toMatch(/at most 15 bytes/);
    for (const bad of ['eth 0', 'a/b', 'a:b', 'tap%d%d', 'tap%s', 'ü']) {
      expect(tapNameProblem(bad), bad).toMatch(/only letters, digits/);
    }
    expect(tapNameProblem('.')).toMatch(/cannot name/);
    expect(tapNameProblem('..')).toMatch(/cannot name/);
  });

  it('TapNetBackend.open refuses bad arguments before touching the system', () => {
    expect(() => TapNetBackend.open({ name: 'no spaces' })).toThrow(RangeError);
    expect(() => TapNetBackend.open({ name: 'x'.repeat(16) })).toThrow(RangeError);
    expect(() => TapNetBackend.open({ offloads: 1n << 40n })).toThrow(RangeError);
    expect(() => TapNetBackend.open({ framesPerTurn: 0 })).toThrow(RangeError);
  });
});

// ---- in a network namespace ----

function commandWorks(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;
}

const missing: string[] = [];
if (process.platform !== 'linux') missing.push('Linux');
if (process.getuid?.() !== 0) missing.push('root (CAP_NET_ADMIN: a tap and a network namespace)');
if (!existsSync('/dev/net/tun')) missing.push('/dev/net/tun (modprobe tun)');
if (!commandWorks('ip', ['-V'])) missing.push('ip (Debian package iproute2)');
if (!commandWorks('ping', ['-V'])) missing.push('ping (Debian package iputils-ping)');
if (!isNativeAvailable()) missing.push('the native addon (node native/prebuild.mjs)');
const ci = process.env.CI ?? '';
const inCi = ci !== '' && ci !== '0' && ci.toLowerCase() !== 'false';
if (missing.length > 0) {
  const bar = '!'.repeat(100);
  console.warn(
    `${bar}\ntest/node/net-tap.test.ts: the tap tests ${inCi ? 'FAIL (CI is set)' : 'are SKIPPED'}: missing\n` +
      missing.map((m) => `  - ${m}\n`).join('') +
      `Run them as root with: sudo scripts/install-guest-deps.sh\n${bar}`,
  );
}

const NS = `virtq-tap-${process.pid}`;
const TAP = `vqtap${process.pid % 1_000_000}`;
const HOST_IP = '10.213.0.1';
const GUEST_IP = '10.213.0.2';
const GUEST_MAC = MAC_A;
const UDP_PORT = 7777;

/** Frames arrive through the event loop: let it run between polls. */
const eventLoop: InterruptWaiter = { wait: () => delay(1) };

function ipCmd(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8' });
}

/** Runs `args` inside the namespace, in the background. */
function inNs(args: string[]): ChildProcess & { out: () => string } {
  const p = spawn('ip', ['netns', 'exec', NS, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  p.stderr.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  return Object.assign(p, { out: () => out });
}

function exited(p: ChildProcess): Promise<number | null> {
  if (p.exitCode !== null) return Promise.resolve(p.exitCode);
  return new Promise((resolve) => p.once('exit', (code) => resolve(code)));
}

/** A node one-liner in the namespace. */
function nodeInNs(script: string): ChildProcess & { out: () => string } {
  return inNs([process.execPath, '-e', script]);
}

describe.skipIf(missing.length > 0 && !inCi)(
  'a guest on a tap interface in a network namespace',
  () => {
    it('has what it needs', () => {
      expect(missing).toEqual([]);
    });

    let tap: TapNetBackend | null = null;
    let side: NetSide;
    let hostMac: Uint8Array = new Uint8Array(6);

    beforeAll(() => {
      ipCmd('netns', 'add', NS);
      // No IPv6 chatter (router solicitations, MLD) on the link: the guest sees only what a test sends.
      execFileSync('ip', [
        'netns',
        'exec',
        NS,
        'sh',
        '-c',
        'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6',
      ]);
      tap = TapNetBackend.open({ name: TAP });
      side = netSide(new World(), tap, {
        device: { mac: GUEST_MAC, pendingFrames: 8 },
        driver: { waiter: eventLoop, maxWaits: 5000 },
      });
      side.guest.init(
        RINGS[0]!.features | featureBit(VIRTIO_NET_F_MAC) | featureBit(VIRTIO_NET_F_CSUM),
      );
      // The descriptor keeps working when its interface moves to another namespace.
      ipCmd('link', 'set', TAP, 'netns', NS);
      ipCmd('-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
      ipCmd('-n', NS, 'link', 'set', TAP, 'up');
      ipCmd('-n', NS, 'link', 'set', 'lo', 'up');
    });

    afterAll(() => {
      tap?.close();
      spawnSync('ip', ['netns', 'del', NS], { stdio: 'ignore' });
      expect(ipCmd('netns', 'list')).not.toContain(NS);
    });

    /** The next IPv4 or ARP frame the guest receives that `pick` accepts (others are dropped). */
    async function receiveWhere(pick: (f: ReceivedFrame) => boolean): Promise<ReceivedFrame> {
      for (;;) {
        const f = await side.guest.receive();
        if (pick(f)) return f;
      }
    }

    it('the device offers every offload the tap carries; the namespace has no route out', () => {
      expect(tap!.name).toBe(TAP);
      expect(tap!.offloads).toBe(NET_OFFLOAD_FEATURES);
      expect(side.device.offeredFeatures & NET_OFFLOAD_FEATURES).toBe(NET_OFFLOAD_FEATURES);
      expect(ipCmd('-n', NS, '-d', 'link', 'show', TAP)).toMatch(/tap .*vnet_hdr on/);
      const routes = ipCmd('-n', NS, 'route', 'show', 'table', 'all');
      expect(routes).not.toMatch(/default/);
      for (const r of ipCmd('-n', NS, '-4', 'route', 'show').trim().split('\n')) {
        expect(r).toMatch(/^10\.213\.0\.0\/24 dev /);
      }
    });

    it('the namespace answers the guest: ARP, then ICMP echo', async () => {
      await side.guest.send(arp(1, GUEST_MAC, ip(GUEST_IP), new Uint8Array(6), ip(HOST_IP)));
      const reply = await receiveWhere((f) => {
        const a = parseArp(f.data);
        return a !== null && a.op === 2 && a.senderIp === HOST_IP;
      });
      expect(reply.data.subarray(0, 6)).toEqual(GUEST_MAC);
      hostMac = parseArp(reply.data)!.senderMac;
      expect(Array.from(hostMac)).toEqual(
        ipCmd('-n', NS, 'link', 'show', TAP)
          .match(/link\/ether ([0-9a-f:]+)/)![1]!
          .split(':')
          .map((x) => Number.parseInt(x, 16)),
      );
      const data = new TextEncoder().encode('virtq tap echo payload');
      for (let seq = 1; seq <= 3; seq++) {
        await side.guest.send(
          icmpEcho(8, hostMac, GUEST_MAC, ip(GUEST_IP), ip(HOST_IP), 0x4242, seq, data),
        );
        const f = await receiveWhere((r) => {
          const p = parseIpv4(r.data);
          return p !== null && p.src === HOST_IP && parseIcmpEcho(p)?.type === 0;
        });
        const p = parseIpv4(f.data)!;
        const e = parseIcmpEcho(p)!;
        expect(p.headerChecksumOk).toBe(true);
        expect(e.checksumOk).toBe(true);
        expect([e.id, e.seq]).toEqual([0x4242, seq]);
        expect(e.data).toEqual(data);
      }
    });

    it('the guest answers ping from the namespace (ARP resolved through the device)', async () => {
      const ping = inNs(['ping', '-c', '3', '-i', '0.2', '-W', '5', GUEST_IP]);
      let done = false;
      const code = exited(ping).finally(() => {
        done = true;
      });
      while (!done) {
        const f = side.guest.tryReceive();
        if (f === null) {
          await delay(1);
          continue;
        }
        const reply = answer(f.data, GUEST_MAC, ip(GUEST_IP));
        if (reply !== null) await side.guest.send(reply);
      }
      expect(await code, ping.out()).toBe(0);
      expect(ping.out()).toMatch(/3 packets transmitted, 3 received/);
    });

    it('a partial checksum from the guest (NEEDS_CSUM) is completed by the host kernel', async () => {
      const recv = nodeInNs(
        `const s=require('dgram').createSocket('udp4');s.on('message',(m)=>{console.log('GOT '+m);process.exit(0)});` +
          `s.bind(${UDP_PORT},'${HOST_IP}',()=>console.log('READY'));setTimeout(()=>process.exit(3),20000)`,
      );
      while (!recv.out().includes('READY') && recv.exitCode === null) await delay(10);
      const frame = (text: string) =>
        udp(hostMac, GUEST_MAC, ip(GUEST_IP), ip(HOST_IP), 5000, UDP_PORT, Buffer.from(text), true);
      // The same partial checksum without NEEDS_CSUM is a bad checksum: the kernel drops it.
      // Were the header lost on the way, the offloaded datagram would be dropped the same way.
      const lost = frame('without the flag');
      expect(parseUdp(lost)!.checksumOk).toBe(false);
      await side.guest.send(lost);
      await side.guest.send(frame('offloaded'), {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csumStart: UDP_CSUM_START,
        csumOffset: UDP_CSUM_OFFSET,
      });
      expect(await exited(recv), recv.out()).toBe(0);
      expect(recv.out()).toContain('GOT offloaded');
      expect(recv.out()).not.toContain('without the flag');
      expect(tap!.sendErrors).toBe(0);
    });

    it('partial checksums from the namespace stack reach a driver without GUEST_CSUM completed', async () => {
      ipCmd('-n', NS, 'neigh', 'replace', GUEST_IP, 'lladdr', formatMac(GUEST_MAC), 'dev', TAP);
      const before = side.device.stats.rxSoftwareChecksums;
      const send = nodeInNs(
        `const s=require('dgram').createSocket('udp4');let i=0;const next=()=>{if(i===5)return s.close();` +
          `s.send('datagram '+i++,${UDP_PORT},'${GUEST_IP}',next)};next()`,
      );
      expect(await exited(send), send.out()).toBe(0);
      for (let i = 0; i < 5; i++) {
        const f = await receiveWhere((r) => parseUdp(r.data)?.dstPort === UDP_PORT);
        const d = parseUdp(f.data)!;
        expect(new TextDecoder().decode(d.data)).toBe(`datagram ${i}`);
        expect(d.checksumOk).toBe(true);
        expect(f.header.flags).toBe(0);
      }
      // The kernel handed them over with NEEDS_CSUM (TUN_F_CSUM): the device completed each.
      expect(side.device.stats.rxSoftwareChecksums - before).toBe(5);
    });

    it('loses nothing when the guest reads late: the backend stops reading the tap', async () => {
      const n = 300;
      const send = nodeInNs(
        `const s=require('dgram').createSocket('udp4');let i=0;const next=()=>{if(i===${n})return s.close();` +
          `s.send('seq '+i++,${UDP_PORT},'${GUEST_IP}',next)};next()`,
      );
      expect(await exited(send), send.out()).toBe(0);
      await delay(200);
      // 64 receive buffers and 8 frames waiting in the device: the rest stays in the kernel.
      const read = tap!.received;
      expect(side.device.pendingFrames).toBe(8);
      for (let i = 0; i < n; i++) {
        const f = await receiveWhere((r) => parseUdp(r.data)?.dstPort === UDP_PORT);
        expect(new TextDecoder().decode(parseUdp(f.data)!.data)).toBe(`seq ${i}`);
      }
      expect(tap!.received - read).toBeGreaterThanOrEqual(n - 100);
      expect(tap!.receiveErrors).toBe(0);
    });

    it('says why an interface cannot be opened: busy, not a tap', () => {
      const name = `vqbusy${process.pid % 1_000_000}`;
      const first = TapNetBackend.open({ name });
      try {
        expect(first.name).toBe(name);
        const busy = catchError(() => TapNetBackend.open({ name }));
        expect(busy).toBeInstanceOf(TapUnavailableError);
        expect(busy).toMatchObject({
          code: 'TAP_UNAVAILABLE',
          reason: 'busy',
          interfaceName: name,
        });
        expect(busy.message).toBe(`tap interface ${name} is in use by another process`);
      } finally {
        first.close();
      }
      expect(first.isOpen).toBe(false);
      // Not persistent: closing removed it.
      expect(spawnSync('ip', ['link', 'show', name]).status).not.toBe(0);
      const lo = catchError(() => TapNetBackend.open({ name: 'lo' }));
      expect(lo).toMatchObject({ reason: 'not-a-tap', interfaceName: 'lo' });
    });

    it("the README's tap recipe runs as written inside the namespace", async () => {
      const lines = readmeTapRecipe();
      expect(lines).toHaveLength(3);
      const dir = mkdtempSync(join(tmpdir(), 'virtq-tap-cli-'));
      const [serveLine, ...ipLines] = lines as [string, ...string[]];
      expect(serveLine).toMatch(/^npx virtq vhost-user-net .*--backend tap --tap virtq0.* &$/);
      // Only the socket's directory changes: other tests may serve the README's path meanwhile.
      const args = serveLine
        .replace(/^npx virtq /, '')
        .replace(/ &$/, '')
        .replace('/tmp/virtq-net.sock', join(dir, 'virtq-net.sock'))
        .split(/\s+/);
      const server = inNs([process.execPath, join(root, 'bin/virtq.js'), ...args]);
      try {
        const deadline = Date.now() + 30_000;
        while (
          !server.out().includes('serving') &&
          server.exitCode === null &&
          Date.now() < deadline
        )
          await delay(20);
        expect(server.out()).toMatch(
          /serving a network device \(MAC 52:54:00:ab:cd:01\) with tap interface virtq0 on /,
        );
        for (const line of ipLines) {
          expect(line).toMatch(/^ip /);
          execFileSync('ip', ['netns', 'exec', NS, ...line.split(/\s+/)]);
        }
        const link = ipCmd('-n', NS, '-d', 'addr', 'show', 'virtq0');
        expect(link).toMatch(/<[^>]*\bUP\b/);
        expect(link).toMatch(/tap .*vnet_hdr on/);
        expect(link).toContain('inet 10.0.2.1/24');
      } finally {
        server.kill('SIGTERM');
      }
      expect(await exited(server), server.out()).toBe(0);
      expect(server.out()).toMatch(/tap virtq0: sent 0 frames, received 0/);
      // The interface was the process's: it is gone with it.
      expect(spawnSync('ip', ['-n', NS, 'link', 'show', 'virtq0']).status).not.toBe(0);
      rmSync(dir, { recursive: true, force: true });
    });
  },
);

function catchError(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The command lines of the README's shell block that uses `--backend tap`. */
function readmeTapRecipe(): string[] {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    if (!block[1]!.includes('--backend tap')) continue;
    return block[1]!
      .split('\n')
      .map((l) => l.replace(/\s+#.*$/, '').trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
  }
  return [];
}
