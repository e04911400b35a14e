/**
 * INFLIGHT_SHMFD against QEMU and a real Linux guest: `virtq vhost-user-blk` dies in the middle
 * of a write the guest is waiting for, a new back-end is started on the same socket, QEMU
 * (`reconnect=1` on the chardev) connects to it and hands it the inflight buffer, and the new
 * back-end completes the request the old one had taken. The guest must finish its I/O without
 * an error, read back exactly what it wrote, and the image must hold it.
 *
 * The first back-end is made to stop dead inside a disk write (VIRTQ_FAULT_HANG_AFTER_WRITES,
 * src/cli/fault.ts) and is then killed with SIGKILL, so the request is provably in flight, not
 * merely waiting in the available ring. When QEMU, the kernel or busybox is missing the test
 * is skipped with a loud warning, or fails when CI is set.
 */
import { existsSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buildGuest,
  createRawImage,
  GUEST_DEPS_INSTALL,
  type LoggedProcess,
  missingGuestDeps,
  runQemu,
  sharedMemoryArgs,
  spawnLogged,
  vhostUserBlkArgs,
  waitFor,
} from './guest.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const missing = await missingGuestDeps();
const inCi = process.env.CI === 'true' || process.env.CI === '1';
if (missing.length > 0) {
  console.warn(
    `test/real/vhost-user-blk-reconnect.test.ts: ${inCi ? 'FAILS (CI is set)' : 'SKIPPED'}; missing: ${missing.join('; ')}. Install with: ${GUEST_DEPS_INSTALL}`,
  );
}

const MEM_MIB = 256;
const IMAGE_BYTES = 32 << 20;
const CHUNK = 128 << 10;
const CHUNKS = 48;
const PATTERN_BYTES = CHUNK * CHUNKS;
const LINE = 'virtq-inflight-reconnect-0123456789';
/** The first back-end stops inside this many-plus-one'th disk write (after the boot's writes). */
const HANG_AFTER_WRITES = 12;

const GUEST_SCRIPT = `set -e
wait_for /dev/vda
yes ${LINE} | head -c ${PATTERN_BYTES} > /tmp/pattern
i=0
while [ $i -lt ${CHUNKS} ]; do
  dd if=/tmp/pattern of=/dev/vda bs=${CHUNK} count=1 skip=$i seek=$i oflag=direct 2>/dev/null
  i=$((i + 1))
done
echo "writes done"
dd if=/dev/vda of=/tmp/back bs=${CHUNK} count=${CHUNKS} iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo "readback ok"
`;

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

describe('real guest: a killed vhost-user-blk back-end is replaced mid-I/O (INFLIGHT_SHMFD)', () => {
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

  // microvm: QEMU asks for an inflight buffer for 128-entry rings while Linux picks 1024 on
  // virtio-mmio; the back-end's regions are sized for its own maximum, so the ring is tracked.
  it.skipIf(missing.length > 0).each(['pc', 'microvm'] as const)(
    '%s: the new back-end completes the request in flight; nothing is lost or done twice',
    async (machine) => {
      const image = path.join(dir, `disk-${machine}.raw`);
      const socket = path.join(dir, `vub-${machine}.sock`);
      await createRawImage(image, IMAGE_BYTES);
      const first = startBackend(socket, image, {
        ...process.env,
        VIRTQ_FAULT_HANG_AFTER_WRITES: String(HANG_AFTER_WRITES),
      });
      let second: Backend | null = null;
      try {
        expect(
          await waitFor(() => existsSync(socket) || first.exitCode !== undefined, 20_000),
        ).toBe(true);
        expect(first.exitCode).toBeUndefined();

        // Kill the first back-end once it hangs inside a write; start the second at once.
        const watcher = setInterval(() => {
          if (second !== null || !first.log.join('').includes('fault injected')) return;
          first.child.kill('SIGKILL');
          second = startBackend(socket, image, process.env);
        }, 25);
        const guest = await buildGuest({ script: GUEST_SCRIPT });
        const r = await runQemu({
          ...guest,
          memMiB: MEM_MIB,
          timeoutMs: 120_000,
          args: [
            ...sharedMemoryArgs(MEM_MIB, machine),
            ...vhostUserBlkArgs({ socket, machine, reconnect: true }),
          ],
        });
        clearInterval(watcher);
        const b2 = second as Backend | null;
        // The second back-end prints its counters when asked to stop.
        b2?.child.kill('SIGTERM');
        if (b2 !== null) await waitFor(() => b2.exitCode !== undefined, 10_000);
        const diagnostics = `--- guest ---\n${r.stdout}\n--- first back-end ---\n${first.log.join('')}\n--- second back-end ---\n${b2?.log.join('') ?? '(never started)'}`;

        expect(first.log.join(''), diagnostics).toContain('fault injected');
        expect(b2, diagnostics).not.toBeNull();
        expect(r.timedOut, diagnostics).toBe(false);
        expect(r.guestRc, diagnostics).toBe(0);
        expect(r.stdout).toContain('readback ok');
        // The kernel saw no failed request and no used element it did not expect.
        expect(r.stdout).not.toMatch(/I\/O error|BAD_RING|is not a head|id \d+ out of range/);

        const log2 = b2!.log.join('');
        expect(log2, diagnostics).toMatch(
          /ring resumes from its inflight buffer.*resubmitted: [1-9]/,
        );
        const stats = /stopping; (\{.*\})/.exec(log2);
        expect(stats, diagnostics).not.toBeNull();
        const counters = JSON.parse(stats![1]!) as { resubmitted: number; connections: number };
        expect(counters.resubmitted).toBeGreaterThanOrEqual(1);
        expect(counters.connections).toBe(1);

        const bytes = await fs.readFile(image);
        expect(bytes.subarray(0, PATTERN_BYTES).equals(expectedPattern())).toBe(true);
      } finally {
        first.child.kill('SIGKILL');
        const b2 = second as Backend | null;
        b2?.child.kill('SIGKILL');
      }
    },
    180_000,
  );
});
