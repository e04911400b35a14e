/**
 * Proves the real-guest harness (test/real/guest.ts) works, using QEMU's own emulated
 * virtio-blk instead of a virtq backend:
 *
 *   node --import tsx scripts/guest-smoke.ts
 *
 * Boots the guest on a PCI machine (split ring, then packed ring) and on microvm
 * (virtio-mmio), plus one PCI boot of the compressed bzImage for comparison. In each, the guest
 * writes a pattern to /dev/vda with direct I/O, reads it back and compares; the host then checks
 * the image bytes. Prints boot times. Exits non-zero on any failure.
 */
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  buildGuest,
  createRawImage,
  type Machine,
  microvmArgs,
  runQemu,
  virtioBlkArgs,
} from '../test/real/guest.js';

const IMAGE_BYTES = 16 << 20;
const OFFSET_BLOCKS = 256; // 4 KiB blocks: the pattern starts at 1 MiB
const PATTERN_BYTES = 1 << 20;
const PATTERN_LINE = 'virtq-guest-smoke-0123456789abcdef';

/** The guest script. `wait_for` comes from /init. */
function guestScript(expectPacked: boolean): string {
  return `set -e
wait_for /dev/vda
echo "vda size_sectors=$(cat /sys/block/vda/size) logical_block_size=$(cat /sys/block/vda/queue/logical_block_size)"
features=$(cat /sys/block/vda/device/features)
echo "vda features=$features"
version_1=$(echo "$features" | cut -c33)
packed=$(echo "$features" | cut -c35)
echo "vda VIRTIO_F_VERSION_1=$version_1 VIRTIO_F_RING_PACKED=$packed"
[ "$version_1" = 1 ] || { echo "FAIL: not a modern device"; exit 1; }
[ "$packed" = ${expectPacked ? 1 : 0} ] || { echo "FAIL: packed ring bit is $packed"; exit 1; }
yes ${PATTERN_LINE} | head -c ${PATTERN_BYTES} > /tmp/pattern
dd if=/tmp/pattern of=/dev/vda bs=4096 seek=${OFFSET_BLOCKS} oflag=direct conv=fsync 2>/dev/null
dd if=/dev/vda of=/tmp/back bs=4096 skip=${OFFSET_BLOCKS} count=${PATTERN_BYTES / 4096} iflag=direct 2>/dev/null
cmp /tmp/pattern /tmp/back
echo "readback ok $(md5sum < /tmp/back)"
`;
}

interface Case {
  readonly name: string;
  readonly machine: Machine;
  readonly packed: boolean;
  readonly kernelImage: 'vmlinux' | 'bzImage';
}

const CASES: readonly Case[] = [
  { name: 'pci split', machine: 'pc', packed: false, kernelImage: 'vmlinux' },
  { name: 'pci packed', machine: 'pc', packed: true, kernelImage: 'vmlinux' },
  { name: 'microvm split', machine: 'microvm', packed: false, kernelImage: 'vmlinux' },
  { name: 'microvm packed', machine: 'microvm', packed: true, kernelImage: 'vmlinux' },
  { name: 'pci split (bzImage)', machine: 'pc', packed: false, kernelImage: 'bzImage' },
];

function expectedPattern(): Buffer {
  const line = Buffer.from(`${PATTERN_LINE}\n`);
  const out = Buffer.alloc(PATTERN_BYTES);
  for (let i = 0; i < PATTERN_BYTES; i += line.length) line.copy(out, i);
  return out;
}

async function main(): Promise<number> {
  const verbose = process.argv.includes('--verbose');
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtq-guest-smoke-'));
  const expected = expectedPattern();
  let failures = 0;
  try {
    for (const c of CASES) {
      const image = path.join(dir, 'disk.raw');
      await createRawImage(image, IMAGE_BYTES);
      const t0 = performance.now();
      const guest = await buildGuest({ script: guestScript(c.packed), kernelImage: c.kernelImage });
      const buildMs = performance.now() - t0;
      const args = [
        ...(c.machine === 'microvm' ? microvmArgs() : []),
        ...virtioBlkArgs({ image, machine: c.machine, packed: c.packed }),
      ];
      const r = await runQemu({ ...guest, args, timeoutMs: 60_000, memMiB: 256 });
      const bytes = await fs.readFile(image);
      const start = OFFSET_BLOCKS * 4096;
      const hostOk = bytes.subarray(start, start + PATTERN_BYTES).equals(expected);
      const restZero =
        bytes.subarray(0, start).every((b) => b === 0) &&
        bytes.subarray(start + PATTERN_BYTES).every((b) => b === 0);
      const ok = r.guestRc === 0 && !r.timedOut && hostOk && restZero;
      if (!ok) failures++;
      const info = r.stdout
        .split(/\r?\n/)
        .filter((l) => l.startsWith('vda ') || l.startsWith('readback') || l.startsWith('FAIL'))
        .map((l) => `    ${l}`)
        .join('\n');
      console.log(
        `${ok ? 'PASS' : 'FAIL'} ${c.name}: build ${buildMs.toFixed(0)} ms, ` +
          `ready after ${r.readyMs?.toFixed(0) ?? '-'} ms host / ${r.guestUptimeAtReady ?? '-'} s guest uptime, ` +
          `total ${r.durationMs.toFixed(0)} ms; guest rc=${r.guestRc}, qemu exit=${r.exitCode}, ` +
          `timedOut=${r.timedOut}, host bytes ${hostOk ? 'match' : 'DIFFER'}` +
          `${restZero ? '' : ', bytes outside the pattern changed'}`,
      );
      if (info !== '') console.log(info);
      if (!ok || verbose) console.log(r.stdout);
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  return failures === 0 ? 0 : 1;
}

process.exitCode = await main();
