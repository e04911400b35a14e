/**
 * INFLIGHT_SHMFD against QEMU and a real Linux guest: `virtq vhost-user-blk` is killed, a new
 * back-end is started on the same socket, QEMU (`reconnect=1` on the chardev) connects to it and
 * hands it the inflight buffer, and the new back-end carries on where the old one stopped. The
 * guest must finish its I/O without an error, read back exactly what it wrote, and the image
 * must hold it. Split and packed rings, on PCI and on microvm (virtio-mmio), each killed:
 * - mid-write: the first back-end stops dead inside a disk write (VIRTQ_FAULT_HANG_AFTER_WRITES,
 *   src/cli/fault.ts) and is SIGKILLed, so a request is provably in flight, not merely waiting
 *   in the ring; the new back-end must complete it;
 * - idle: killed and replaced while the guest does no I/O; the guest then carries on;
 * - outage: killed, and the guest issues I/O before the new back-end starts.
 * A packed ring keeps no used index in guest memory and QEMU 7.2 sends the base of the last
 * orderly start after a crash, so packed rings resume only through the packed inflight region.
 *
 * When QEMU, the kernel or busybox is missing the test is skipped with a loud warning, or fails
 * when CI is set.
 */
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildGuest,
  createRawImage,
  guestDepsFor,
  type LoggedProcess,
  type Machine,
  runQemu,
  sharedMemoryArgs,
  spawnLogged,
  vhostUserBlkArgs,
  waitFor,
} from './guest.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const { missing, inCi } = await guestDepsFor('test/real/vhost-user-blk-reconnect.test.ts');

const MEM_MIB = 256;
const IMAGE_BYTES = 32 << 20;
const CHUNK = 128 << 10;
const CHUNKS = 48;
const PATTERN_BYTES = CHUNK * CHUNKS;
const LINE = 'virtq-inflight-reconnect-0123456789';
/** The first back-end stops inside this many-plus-one'th disk write (after the boot's writes). */
const HANG_AFTER_WRITES = 12;

type Scenario = 'mid-write' | 'idle' | 'outage';

/** The guest prints this when the host should kill the back-end (idle and outage). */
const KILL_MARK = 'VIRTQ-KILL-NOW';

function guestScript(scenario: Scenario): string {
  const write = (from: number, to: number) => `i=${from}
while [ $i -lt ${to} ]; do
  dd if=/tmp/pattern of=/dev/vda bs=${CHUNK} count=1 skip=$i seek=$i oflag=direct 2>/dev/null
  i=$((i + 1))
done`;
  const half = CHUNKS / 2;
  const middle =
    scenario === 'mid-write'
      ? ''
      : // idle: the back-end is replaced during the sleep; outage: the guest writes while there
        // is none (the host waits before starting the new one).
        `sync
echo ${KILL_MARK}
sleep ${scenario === 'idle' ? 3 : 1}
`;
  return `set -e
wait_for /dev/vda
yes ${LINE} | head -c ${PATTERN_BYTES} > /tmp/pattern
${write(0, half)}
${middle}${write(half, CHUNKS)}
echo "writes done"
dd if=/dev/vda of=/tmp/back bs=${CHUNK} count=${CHUNKS} iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo "readback ok"
`;
}

type Backend = LoggedProcess;

function startBackend(socket: string, image: string, env: NodeJS.ProcessEnv): Backend {
  return spawnLogged(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(root, 'src/cli/main.ts'),
      'vhost-user-blk',
      '--socket-path',
      socket,
      '--blk-file',
      image,
    ],
    { env },
  );
}

function expectedPattern(): Buffer {
  const line = Buffer.from(`${LINE}\n`);
  const out = Buffer.alloc(PATTERN_BYTES);
  for (let i = 0; i < PATTERN_BYTES; i += line.length) line.copy(out, i);
  return out;
}

describe('real guest: a killed vhost-user-blk back-end is replaced (INFLIGHT_SHMFD)', () => {
  it('has what it needs', () => {
    if (inCi) expect(missing).toEqual([]);
  });

  let dir = '';
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-reconnect-'));
  });
  afterAll(async () => {
    if (dir !== '') await fs.rm(dir, { recursive: true, force: true });
  });

  const cases: [Machine, boolean, Scenario][] = [];
  for (const machine of ['pc', 'microvm'] as const) {
    for (const packed of [false, true]) {
      for (const scenario of ['mid-write', 'idle', 'outage'] as const) {
        cases.push([machine, packed, scenario]);
      }
    }
  }

  // microvm: QEMU asks for an inflight buffer for 128-entry rings while Linux picks 1024 on
  // virtio-mmio; the back-end's regions are sized for its own maximum, so the ring is tracked.
  it.skipIf(missing.length > 0).each(cases)(
    '%s, packed=%s, killed %s: the new back-end carries on; nothing is lost or done twice',
    async (machine, packed, scenario) => {
      const name = `${machine}-${packed ? 'packed' : 'split'}-${scenario}`;
      const image = path.join(dir, `disk-${name}.raw`);
      const socket = path.join(dir, `vub-${name}.sock`);
      await createRawImage(image, IMAGE_BYTES);
      const first = startBackend(
        socket,
        image,
        scenario === 'mid-write'
          ? { ...process.env, VIRTQ_FAULT_HANG_AFTER_WRITES: String(HANG_AFTER_WRITES) }
          : process.env,
      );
      let second: Backend | null = null;
      let guestOutput = '';
      try {
        expect(
          await waitFor(() => existsSync(socket) || first.exitCode !== undefined, 20_000),
        ).toBe(true);
        expect(first.exitCode).toBeUndefined();

        // Kill the first back-end at the scenario's moment; start the second at once, or after
        // an outage in which the guest issues I/O.
        let killed = false;
        const watcher = setInterval(() => {
          if (killed) return;
          const now =
            scenario === 'mid-write'
              ? first.log.join('').includes('fault injected')
              : guestOutput.includes(KILL_MARK);
          if (!now) return;
          killed = true;
          first.child.kill('SIGKILL');
          void (async () => {
            if (scenario === 'outage') await delay(2500);
            second = startBackend(socket, image, process.env);
          })();
        }, 25);
        const guest = await buildGuest({ script: guestScript(scenario) });
        const r = await runQemu({
          ...guest,
          memMiB: MEM_MIB,
          timeoutMs: 120_000,
          onOutput: (chunk) => {
            guestOutput += chunk;
          },
          args: [
            ...sharedMemoryArgs(MEM_MIB, machine),
            ...vhostUserBlkArgs({ socket, machine, packed, reconnect: true }),
          ],
        });
        clearInterval(watcher);
        const b2 = second as Backend | null;
        // The second back-end prints its counters when asked to stop.
        b2?.child.kill('SIGTERM');
        if (b2 !== null) await waitFor(() => b2.exitCode !== undefined, 10_000);
        const diagnostics = `--- guest ---\n${r.stdout}\n--- first back-end ---\n${first.log.join('')}\n--- second back-end ---\n${b2?.log.join('') ?? '(never started)'}`;

        expect(killed, diagnostics).toBe(true);
        expect(b2, diagnostics).not.toBeNull();
        expect(r.timedOut, diagnostics).toBe(false);
        expect(r.guestRc, diagnostics).toBe(0);
        expect(r.stdout, diagnostics).toContain('readback ok');
        // The kernel saw no failed request and no used element it did not expect.
        expect(r.stdout, diagnostics).not.toMatch(
          /I\/O error|BAD_RING|is not a head|id \d+ out of range|vring error/,
        );

        const log2 = b2!.log.join('');
        const stats = /stopping; (\{.*\})/.exec(log2);
        expect(stats, diagnostics).not.toBeNull();
        const counters = JSON.parse(stats![1]!) as { resubmitted: number; connections: number };
        expect(counters.connections, diagnostics).toBe(1);
        if (scenario === 'mid-write') {
          // The request the first back-end was inside of is completed by the second.
          expect(log2, diagnostics).toMatch(
            /ring resumes from its inflight buffer.*resubmitted: [1-9]/,
          );
          expect(counters.resubmitted, diagnostics).toBeGreaterThanOrEqual(1);
        }
        // Nothing but the expected lines: no ring given up, no region found inconsistent.
        expect(log2, diagnostics).not.toMatch(/inconsistent|untracked|starting afresh|lost/);

        const bytes = await fs.readFile(image);
        expect(bytes.subarray(0, PATTERN_BYTES).equals(expectedPattern()), diagnostics).toBe(true);
      } finally {
        first.child.kill('SIGKILL');
        const b2 = second as Backend | null;
        b2?.child.kill('SIGKILL');
      }
    },
    180_000,
  );
});
