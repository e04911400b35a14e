/**
 * A real Linux guest under QEMU, for integration tests against the kernel's own virtio drivers.
 *
 * Node-only. Needs the Debian packages installed by `scripts/install-guest-deps.sh`. The guest
 * is Debian's kernel plus a busybox initramfs whose `/init` mounts proc/sys/devtmpfs, loads the
 * virtio modules, runs a caller-supplied shell script, prints a result marker line and powers
 * off. See docs/REAL-GUEST.md.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The virtio modules, in the order they must be loaded (REAL-DRIVERS.md). */
export const VIRTIO_MODULES: readonly string[] = [
  'virtio_ring',
  'virtio',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'virtio_mmio',
  'virtio_blk',
  'failover',
  'net_failover',
  'virtio_net',
  'virtio_console',
  'virtio-rng',
];

/** The line `/init` prints just before running the caller's script. */
export const READY_MARKER = 'VIRTQ-GUEST-READY';
/** The line `/init` prints after the caller's script: `VIRTQ-GUEST-RESULT rc=<exit status>`. */
export const RESULT_MARKER = 'VIRTQ-GUEST-RESULT';

const XZ_MAGIC = Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]);
const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Where extracted kernels and built initramfs images are kept between runs. */
export function defaultCacheDir(): string {
  const env = process.env.VIRTQ_GUEST_CACHE;
  if (env !== undefined && env !== '') return env;
  const nodeModules = path.join(repoRoot, 'node_modules');
  if (existsSync(nodeModules)) return path.join(nodeModules, '.cache', 'virtq-guest');
  return path.join(os.tmpdir(), 'virtq-guest');
}

export interface InstalledKernel {
  /** e.g. `6.1.0-56-amd64`. */
  readonly version: string;
  /** The compressed bzImage, `/boot/vmlinuz-<version>`. */
  readonly bzImage: string;
  /** `/lib/modules/<version>`. */
  readonly modulesDir: string;
}

/**
 * The newest kernel in /boot that has a matching /lib/modules directory.
 * Throws with a hint at the install script when there is none.
 */
export async function findKernel(
  bootDir = '/boot',
  modulesRoot = '/lib/modules',
): Promise<InstalledKernel> {
  let names: string[] = [];
  try {
    names = await fs.readdir(bootDir);
  } catch {
    // handled below
  }
  const versions = names
    .filter((n) => n.startsWith('vmlinuz-'))
    .map((n) => n.slice('vmlinuz-'.length))
    .filter((v) => existsSync(path.join(modulesRoot, v)))
    .sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
  const version = versions[0];
  if (version === undefined) {
    throw new Error(
      `no kernel found (${bootDir}/vmlinuz-* with ${modulesRoot}/<version>); run scripts/install-guest-deps.sh`,
    );
  }
  return {
    version,
    bzImage: path.join(bootDir, `vmlinuz-${version}`),
    modulesDir: path.join(modulesRoot, version),
  };
}

/** Runs `cmd args` with `input` on stdin and returns its stdout; the exit status is returned too. */
function pipeThrough(
  cmd: string,
  args: readonly string[],
  input: Uint8Array,
): Promise<{ stdout: Buffer; code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    // xz stops reading at the end of its stream; the rest of the bzImage is then unwanted.
    child.stdin.on('error', () => {});
    child.on('close', (code) =>
      resolve({ stdout: Buffer.concat(out), code, stderr: Buffer.concat(err).toString() }),
    );
    child.stdin.end(input);
  });
}

/** Writes `data` to `file` atomically (temp file + rename), so concurrent builders never see half a file. */
async function writeAtomic(file: string, data: Uint8Array): Promise<void> {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  await fs.writeFile(tmp, data);
  await fs.rename(tmp, file);
}

/**
 * The uncompressed kernel (an ELF `vmlinux`) extracted from `kernel.bzImage`, cached under
 * `cacheDir` by kernel version and bzImage size. QEMU boots it in about half the time of the
 * bzImage under TCG, since the guest no longer decompresses itself.
 */
export async function extractVmlinux(
  kernel: InstalledKernel,
  cacheDir = defaultCacheDir(),
): Promise<string> {
  const st = await fs.stat(kernel.bzImage);
  const out = path.join(cacheDir, `vmlinux-${kernel.version}-${st.size}`);
  if (existsSync(out)) return out;
  await fs.mkdir(cacheDir, { recursive: true });
  const image = await fs.readFile(kernel.bzImage);
  // The payload is one xz stream somewhere after the setup code; the magic may also occur by
  // chance earlier, so try each occurrence until one decompresses to an ELF file.
  let at = image.indexOf(XZ_MAGIC);
  while (at >= 0) {
    // xz exits non-zero on the bytes that follow the stream; the output is still complete.
    const { stdout } = await pipeThrough('xz', ['-dc'], image.subarray(at));
    if (stdout.length > 1 << 20 && stdout.subarray(0, 4).equals(ELF_MAGIC)) {
      await writeAtomic(out, stdout);
      return out;
    }
    at = image.indexOf(XZ_MAGIC, at + 1);
  }
  throw new Error(`no xz-compressed ELF payload found in ${kernel.bzImage}`);
}

const MODULE_SUFFIXES = ['.ko', '.ko.xz', '.ko.zst', '.ko.gz'];

async function walk(dir: string, found: Map<string, string>): Promise<void> {
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      await walk(full, found);
    } else {
      const suffix = MODULE_SUFFIXES.find((s) => entry.name.endsWith(s));
      if (suffix !== undefined) {
        found.set(entry.name.slice(0, -suffix.length).replaceAll('-', '_'), full);
      }
    }
  }
}

/**
 * The files of `modules` (dash and underscore equivalent, compressed or not) under
 * `<modulesDir>/kernel`, in the order given. Built-in modules are skipped; anything else
 * missing throws. Note `failover` lives in kernel/net/core, not kernel/drivers.
 */
export async function findModules(
  kernel: InstalledKernel,
  modules: readonly string[] = VIRTIO_MODULES,
): Promise<string[]> {
  const found = new Map<string, string>();
  await walk(path.join(kernel.modulesDir, 'kernel'), found);
  let builtin = '';
  try {
    builtin = await fs.readFile(path.join(kernel.modulesDir, 'modules.builtin'), 'utf8');
  } catch {
    // no list: treat nothing as built in
  }
  const builtinNames = new Set(
    builtin
      .split('\n')
      .map((l) => path.basename(l).replace(/\.ko$/, '').replaceAll('-', '_'))
      .filter((n) => n !== ''),
  );
  const files: string[] = [];
  for (const name of modules) {
    const key = name.replaceAll('-', '_');
    const file = found.get(key);
    if (file !== undefined) files.push(file);
    else if (!builtinNames.has(key)) {
      throw new Error(`kernel module ${name} not found under ${kernel.modulesDir}/kernel`);
    }
  }
  return files;
}

// ---------------------------------------------------------------------------------------------
// cpio "newc" archive writer (what the kernel unpacks as an initramfs).

interface CpioEntry {
  readonly name: string;
  readonly mode: number;
  readonly data: Uint8Array;
  readonly rdevMajor?: number;
  readonly rdevMinor?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function cpioNewc(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  let ino = 1;
  const push = (e: CpioEntry) => {
    const name = Buffer.from(`${e.name}\0`);
    const header =
      '070701' +
      hex(ino++) +
      hex(e.mode) +
      hex(0) + // uid
      hex(0) + // gid
      hex((e.mode & S_IFDIR) === S_IFDIR ? 2 : 1) + // nlink
      hex(0) + // mtime: fixed, so identical inputs give identical archives
      hex(e.data.length) +
      hex(0) + // dev major
      hex(0) + // dev minor
      hex(e.rdevMajor ?? 0) +
      hex(e.rdevMinor ?? 0) +
      hex(name.length) +
      hex(0); // check
    parts.push(Buffer.from(header, 'ascii'), name, Buffer.alloc(pad4(110 + name.length)));
    parts.push(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.byteLength));
    parts.push(Buffer.alloc(pad4(e.data.length)));
  };
  for (const e of entries) push(e);
  push({ name: 'TRAILER!!!', mode: 0, data: new Uint8Array(0) });
  return Buffer.concat(parts);
}

/** Collects files, links and device nodes, creating parent directories as needed. */
class InitramfsBuilder {
  private readonly entries = new Map<string, CpioEntry>();

  dir(name: string): void {
    const clean = name.replace(/^\/+|\/+$/g, '');
    if (clean === '' || clean === '.' || this.entries.has(clean)) return;
    this.dir(path.posix.dirname(clean));
    this.entries.set(clean, { name: clean, mode: S_IFDIR | 0o755, data: new Uint8Array(0) });
  }

  file(name: string, data: Uint8Array | string, perm = 0o755): void {
    const clean = name.replace(/^\/+/, '');
    this.dir(path.posix.dirname(clean));
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    this.entries.set(clean, { name: clean, mode: S_IFREG | perm, data: bytes });
  }

  symlink(name: string, target: string): void {
    const clean = name.replace(/^\/+/, '');
    this.dir(path.posix.dirname(clean));
    this.entries.set(clean, { name: clean, mode: S_IFLNK | 0o777, data: Buffer.from(target) });
  }

  charDevice(name: string, major: number, minor: number): void {
    const clean = name.replace(/^\/+/, '');
    this.dir(path.posix.dirname(clean));
    this.entries.set(clean, {
      name: clean,
      mode: S_IFCHR | 0o600,
      data: new Uint8Array(0),
      rdevMajor: major,
      rdevMinor: minor,
    });
  }

  build(): Buffer {
    // Parents were inserted before their children, so insertion order is a valid archive order.
    return cpioNewc([...this.entries.values()]);
  }
}

// ---------------------------------------------------------------------------------------------
// The guest.

export interface BuildGuestOptions {
  /** Shell script run by busybox `sh` inside the guest (sourced in a subshell; see `/init`). */
  readonly script: string;
  /** More files for the initramfs: absolute guest path -> contents (mode 0755). */
  readonly extraFiles?: Readonly<Record<string, string | Uint8Array>>;
  /** Modules to load, in order. Default: {@link VIRTIO_MODULES}. */
  readonly modules?: readonly string[];
  /** `'vmlinux'` (default, ~2x faster boot under TCG) or the distribution's `'bzImage'`. */
  readonly kernelImage?: 'vmlinux' | 'bzImage';
  readonly cacheDir?: string;
}

export interface Guest {
  /** Path for QEMU's `-kernel`. */
  readonly kernel: string;
  /** Path for QEMU's `-initrd` (an uncompressed newc cpio archive). */
  readonly initrd: string;
  readonly kernelVersion: string;
}

function initScript(moduleFiles: readonly string[]): string {
  const modules = moduleFiles.map((f) => `/lib/modules/virtq/${path.basename(f)}`).join(' ');
  return `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
for m in ${modules}; do
  insmod "$m" || echo "virtq-guest: insmod $m failed"
done

# wait_for PATH [TENTHS]: wait up to TENTHS/10 s (default 5 s) for PATH to exist.
wait_for() {
  n=0
  while [ ! -e "$1" ]; do
    n=$((n + 1))
    if [ "$n" -gt "\${2:-50}" ]; then echo "virtq-guest: $1 did not appear"; return 1; fi
    usleep 100000
  done
}

echo
echo "${READY_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime)"
( . /virtq-test.sh )
rc=$?
sync
echo "${RESULT_MARKER} rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
`;
}

async function busyboxApplets(busybox: string): Promise<string[]> {
  const { stdout } = await pipeThrough(busybox, ['--list-full'], new Uint8Array(0));
  return stdout
    .toString()
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/**
 * Builds (or reuses from the cache) the kernel and an initramfs that runs `script`.
 * The initramfs is content-addressed, so the same script is built once.
 */
export async function buildGuest(options: BuildGuestOptions): Promise<Guest> {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const kernel = await findKernel();
  const kernelPath =
    options.kernelImage === 'bzImage' ? kernel.bzImage : await extractVmlinux(kernel, cacheDir);

  const busybox = ['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p));
  if (busybox === undefined)
    throw new Error('busybox not found; run scripts/install-guest-deps.sh');

  const b = new InitramfsBuilder();
  for (const d of ['dev', 'proc', 'sys', 'tmp', 'run', 'root', 'etc']) b.dir(d);
  // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
  b.charDevice('dev/console', 5, 1);
  b.file('bin/busybox', await fs.readFile(busybox));
  for (const applet of await busyboxApplets(busybox)) {
    // `--list-full` includes bin/busybox itself: linking it onto itself would replace the binary.
    if (applet === 'bin/busybox') continue;
    b.symlink(applet, '/bin/busybox');
  }
  const moduleFiles = await findModules(kernel, options.modules ?? VIRTIO_MODULES);
  for (const m of moduleFiles)
    b.file(`lib/modules/virtq/${path.basename(m)}`, await fs.readFile(m), 0o644);
  for (const [name, data] of Object.entries(options.extraFiles ?? {})) b.file(name, data);
  b.file('virtq-test.sh', options.script);
  b.file('init', initScript(moduleFiles));

  const archive = b.build();
  const digest = createHash('sha256').update(archive).digest('hex').slice(0, 16);
  const initrd = path.join(cacheDir, `initrd-${digest}.cpio`);
  if (!existsSync(initrd)) {
    await fs.mkdir(cacheDir, { recursive: true });
    await writeAtomic(initrd, archive);
  }
  return { kernel: kernelPath, initrd, kernelVersion: kernel.version };
}

// ---------------------------------------------------------------------------------------------
// QEMU arguments.

export type Machine = 'pc' | 'microvm';

/** Escapes a value for a QEMU `-device`/`-chardev` option list (a comma is written `,,`). */
export function qemuOptValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/**
 * Guest RAM as a shareable memfd, which a vhost-user backend can map. `memMiB` must equal the
 * `-m` size ({@link runQemu} passes its own `memMiB`). On `microvm` this also selects the
 * machine and makes virtio-mmio devices modern (VIRTIO 1.x) instead of legacy.
 */
export function sharedMemoryArgs(memMiB: number, machine: Machine = 'pc'): string[] {
  const object = ['-object', `memory-backend-memfd,id=mem,size=${memMiB}M,share=on`];
  if (machine === 'pc') return [...object, '-numa', 'node,memdev=mem'];
  return [
    ...object,
    '-M',
    'microvm,memory-backend=mem',
    '-global',
    'virtio-mmio.force-legacy=false',
  ];
}

/** The microvm machine without shared memory (for QEMU's own emulated devices). */
export function microvmArgs(): string[] {
  return ['-M', 'microvm', '-global', 'virtio-mmio.force-legacy=false'];
}

/** Whether QEMU arguments select the microvm machine (`-M microvm…` or `-machine microvm…`). */
export function isMicrovm(args: readonly string[]): boolean {
  for (let i = 0; i + 1 < args.length; i++) {
    const a = args[i];
    if ((a === '-M' || a === '-machine') && /^(type=)?microvm(,|$)/.test(args[i + 1]!)) return true;
  }
  return false;
}

/**
 * The host's TSC frequency in kHz, from the first `cpu MHz` of /proc/cpuinfo (on the x86 hosts
 * these tests run on, with `constant_tsc`, that is the TSC rate), or null when unknown.
 */
export function hostTscKhz(cpuinfo?: string): number | null {
  let text = cpuinfo;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/cpuinfo', 'utf8');
    } catch {
      return null;
    }
  }
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(text);
  if (m === null) return null;
  const khz = Math.round(Number(m[1]) * 1000);
  return Number.isFinite(khz) && khz > 0 ? khz : null;
}

/** Used when the host's TSC rate is unknown: any plausible value lets the guest boot. */
const FALLBACK_TSC_KHZ = 2_000_000;

/**
 * Kernel arguments that make microvm boots reliable under TCG: `tsc_early_khz=<kHz>`.
 *
 * A microvm has no HPET and no ACPI PM timer, so Linux can calibrate the TSC only against the
 * PIT. Under TCG that calibration fails whenever the host is busy (the guest's PIT and TSC are
 * both host clocks read at the mercy of the host scheduler); the kernel then prints
 * `tsc: Unable to calibrate against PIT`, `tsc: No reference (HPET/PMTIMER) available`,
 * `tsc: Marking TSC unstable due to could not calculate TSC khz` and hangs before `/init`.
 * Giving it the frequency skips the calibration. Under TCG the guest's TSC runs at the host's
 * rate, so the host's frequency keeps guest time right. `false` returns nothing.
 */
export function microvmTscAppend(tscKhz?: number | false): string[] {
  if (tscKhz === false) return [];
  const khz = tscKhz ?? hostTscKhz() ?? FALLBACK_TSC_KHZ;
  if (!Number.isInteger(khz) || khz <= 0)
    throw new RangeError(`tscKhz ${khz} is not a positive integer`);
  return [`tsc_early_khz=${khz}`];
}

/** `fallocate(2)` modes, for {@link fallocateProgram}. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_NO_HIDE_STALE = 0x04;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export interface FallocateProgramOptions {
  /** File to open read-write, e.g. `/dev/vda`. */
  readonly path: string;
  readonly mode: number;
  readonly offset: number;
  readonly length: number;
}

/**
 * A tiny static x86-64 Linux executable (about 200 bytes, no libc) that runs
 * `fallocate(open(path, O_RDWR), mode, offset, length)` and exits with 0 on success or the
 * errno of the failing call (open or fallocate). Busybox's `fallocate` only does mode 0, and
 * its `blkdiscard` has no `-z`; on a block device, Linux maps
 * `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` to `blkdev_issue_zeroout(…,
 * BLKDEV_ZERO_NOFALLBACK)`, i.e. REQ_OP_WRITE_ZEROES with no fallback to writing zero pages
 * (VIRTIO_BLK_T_WRITE_ZEROES with the unmap flag), `FALLOC_FL_ZERO_RANGE` to write-zeroes
 * with a fallback, and `PUNCH_HOLE | KEEP_SIZE | NO_HIDE_STALE` to a discard.
 */
export function fallocateProgram(o: FallocateProgramOptions): Uint8Array {
  for (const [k, v] of [
    ['mode', o.mode],
    ['offset', o.offset],
    ['length', o.length],
  ] as const) {
    if (!Number.isSafeInteger(v) || v < 0)
      throw new RangeError(`${k} ${v} is not a safe integer >= 0`);
  }
  if (o.mode > 0x7fffffff) throw new RangeError(`mode ${o.mode} does not fit an int`);
  const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
  const u64 = (v: number): number[] => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    return [...b];
  };
  const code: number[] = [];
  code.push(0xb8, ...u32(2)); //              mov eax, SYS_open
  const lea = code.length;
  code.push(0x48, 0x8d, 0x3d, 0, 0, 0, 0); // lea rdi, [rip + path]
  code.push(0xbe, ...u32(2)); //              mov esi, O_RDWR
  code.push(0x31, 0xd2); //                   xor edx, edx
  code.push(0x0f, 0x05); //                   syscall
  code.push(0x48, 0x85, 0xc0); //             test rax, rax
  const js = code.length;
  code.push(0x78, 0); //                      js exit (rax = -errno)
  code.push(0x48, 0x89, 0xc7); //             mov rdi, rax (the fd)
  code.push(0xb8, ...u32(285)); //            mov eax, SYS_fallocate
  code.push(0xbe, ...u32(o.mode)); //         mov esi, mode
  code.push(0x48, 0xba, ...u64(o.offset)); // mov rdx, offset
  code.push(0x49, 0xba, ...u64(o.length)); // mov r10, length
  code.push(0x0f, 0x05); //                   syscall
  code[js + 1] = code.length - (js + 2); //   exit:
  code.push(0xf7, 0xd8); //                   neg eax (0 or errno)
  code.push(0x89, 0xc7); //                   mov edi, eax
  code.push(0xb8, ...u32(60)); //             mov eax, SYS_exit
  code.push(0x0f, 0x05); //                   syscall
  code.splice(lea + 3, 4, ...u32(code.length - (lea + 7)));
  code.push(...Buffer.from(`${o.path}\0`));

  const base = 0x400000;
  const headers = 64 + 56; // ELF header + one program header
  const total = headers + code.length;
  const b = Buffer.alloc(total);
  b.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0); // ELF, 64-bit, little-endian, version 1, SysV
  b.writeUInt16LE(2, 16); // ET_EXEC
  b.writeUInt16LE(0x3e, 18); // EM_X86_64
  b.writeUInt32LE(1, 20); // EV_CURRENT
  b.writeBigUInt64LE(BigInt(base + headers), 24); // e_entry
  b.writeBigUInt64LE(64n, 32); // e_phoff
  b.writeUInt16LE(64, 52); // e_ehsize
  b.writeUInt16LE(56, 54); // e_phentsize
  b.writeUInt16LE(1, 56); // e_phnum
  b.writeUInt16LE(64, 58); // e_shentsize
  b.writeUInt32LE(1, 64); // PT_LOAD
  b.writeUInt32LE(5, 68); // PF_R | PF_X
  b.writeBigUInt64LE(BigInt(base), 80); // p_vaddr
  b.writeBigUInt64LE(BigInt(base), 88); // p_paddr
  b.writeBigUInt64LE(BigInt(total), 96); // p_filesz
  b.writeBigUInt64LE(BigInt(total), 104); // p_memsz
  b.writeBigUInt64LE(0x1000n, 112); // p_align
  b.set(code, headers);
  return b;
}

/** Install command printed when something the real-guest tests need is missing. */
export const GUEST_DEPS_INSTALL = 'sudo scripts/install-guest-deps.sh';

/**
 * What the real-guest tests need and this machine lacks (empty when everything is there):
 * QEMU (or `$QEMU_BINARY`), `timeout`, `xz`, a kernel with its modules, the virtio modules,
 * and busybox.
 */
export async function missingGuestDeps(): Promise<string[]> {
  const missing: string[] = [];
  const onPath = (cmd: string): boolean =>
    cmd.includes('/')
      ? existsSync(cmd)
      : (process.env.PATH ?? '')
          .split(path.delimiter)
          .some((d) => d !== '' && existsSync(path.join(d, cmd)));
  const qemu = process.env.QEMU_BINARY ?? 'qemu-system-x86_64';
  if (!onPath(qemu)) missing.push(`${qemu} (package qemu-system-x86)`);
  if (!onPath('timeout')) missing.push('timeout (package coreutils)');
  if (!onPath('xz')) missing.push('xz (package xz-utils)');
  if (!['/usr/bin/busybox', '/bin/busybox'].some((p) => existsSync(p)))
    missing.push('busybox (package busybox-static)');
  try {
    const kernel = await findKernel();
    await fs.access(kernel.bzImage, fs.constants.R_OK);
    await findModules(kernel);
  } catch (e) {
    missing.push(
      `a kernel with virtio modules (package linux-image-amd64): ${(e as Error).message}`,
    );
  }
  return missing;
}

/**
 * The presence check every real-guest test file starts with: the missing dependencies, and
 * whether CI is set. When any is missing it warns loudly, saying whether the tests are skipped
 * (locally) or fail (CI set: each file's "has what it needs" test then fails).
 */
export async function guestDepsFor(file: string): Promise<{ missing: string[]; inCi: boolean }> {
  const missing = await missingGuestDeps();
  const ci = process.env.CI ?? '';
  const inCi = ci !== '' && ci !== '0' && ci.toLowerCase() !== 'false';
  if (missing.length > 0) {
    const bar = '!'.repeat(100);
    console.warn(
      `${bar}\n${file}: the real-guest tests ${inCi ? 'FAIL (CI is set)' : 'are SKIPPED'}: missing\n` +
        missing.map((m) => `  - ${m}\n`).join('') +
        `Install them with: ${GUEST_DEPS_INSTALL}\n${bar}`,
    );
  }
  return { missing, inCi };
}

export interface VhostUserBlkOptions {
  /** Unix socket the backend listens on. */
  readonly socket: string;
  readonly machine?: Machine;
  /** Ask for VIRTIO_F_RING_PACKED (negotiated only if the backend offers it too). */
  readonly packed?: boolean;
  readonly numQueues?: number;
  /** QEMU ids of the chardev and device; default `vub0`/`vub0dev`. */
  readonly id?: string;
  /** `reconnect=1` on the chardev: QEMU reconnects to a back-end that was restarted. */
  readonly reconnect?: boolean;
  /**
   * `server=on,wait=on` on the chardev: QEMU listens and waits for the back-end to connect
   * (`--connect`); a restarted back-end connects again.
   */
  readonly server?: boolean;
}

/** `-chardev socket` plus a vhost-user-blk device (PCI, or virtio-mmio on microvm). */
export function vhostUserBlkArgs(o: VhostUserBlkOptions): string[] {
  return vhostUserDeviceArgs(['vhost-user-blk-pci', 'vhost-user-blk'], { id: 'vub0', ...o });
}

/** `-chardev socket` plus a vhost-user-rng device (PCI, or virtio-mmio on microvm). */
export function vhostUserRngArgs(o: Omit<VhostUserBlkOptions, 'numQueues'>): string[] {
  return vhostUserDeviceArgs(['vhost-user-rng-pci', 'vhost-user-rng'], { id: 'vur0', ...o });
}

/** `-chardev socket` plus QEMU's PCI device model on pc, or its virtio-mmio one on microvm. */
function vhostUserDeviceArgs(
  [pci, mmio]: [string, string],
  o: VhostUserBlkOptions & { id: string },
): string[] {
  const id = o.id;
  let device = `${(o.machine ?? 'pc') === 'pc' ? pci : mmio},chardev=${id},id=${id}dev`;
  if (o.packed === true) device += ',packed=on';
  if (o.numQueues !== undefined) device += `,num-queues=${o.numQueues}`;
  const mode =
    o.server === true ? ',server=on,wait=on' : o.reconnect === true ? ',reconnect=1' : '';
  const chardev = `socket,id=${id},path=${qemuOptValue(o.socket)}${mode}`;
  return ['-chardev', chardev, '-device', device];
}

export interface VirtioBlkOptions {
  /** A raw image file. */
  readonly image: string;
  readonly machine?: Machine;
  readonly packed?: boolean;
  readonly id?: string;
}

/** QEMU's own emulated virtio-blk on a raw file: the reference the harness is proven against. */
export function virtioBlkArgs(o: VirtioBlkOptions): string[] {
  const id = o.id ?? 'd0';
  const model = (o.machine ?? 'pc') === 'pc' ? 'virtio-blk-pci' : 'virtio-blk-device';
  let device = `${model},drive=${id}`;
  if (o.packed === true) device += ',packed=on';
  return [
    '-drive',
    `file=${qemuOptValue(o.image)},if=none,id=${id},format=raw,cache=none,aio=threads`,
    '-device',
    device,
  ];
}

// ---------------------------------------------------------------------------------------------
// Running QEMU.

export interface RunQemuOptions {
  readonly kernel: string;
  readonly initrd: string;
  /** Machine, memory and device arguments (see the helpers above). */
  readonly args?: readonly string[];
  /** Hard limit; QEMU is killed after it (a dead backend hangs the guest). Default 60 s. */
  readonly timeoutMs?: number;
  /** Guest RAM (`-m`). Default 512. */
  readonly memMiB?: number;
  /** `'tcg'` (default). `'kvm'` tries KVM and reruns under TCG when KVM gives no result. */
  readonly accel?: 'tcg' | 'kvm';
  /** Appended to `console=ttyS0 panic=-1 quiet`. */
  readonly append?: string;
  /** Called with each chunk of console output as it arrives. */
  readonly onOutput?: (chunk: string) => void;
  /** Environment variable QEMU_BINARY overrides this; default `qemu-system-x86_64`. */
  readonly qemu?: string;
  /** Guest CPUs (`-smp`). Default 1. Linux uses at most one virtio-blk queue per CPU. */
  readonly smp?: number;
  /**
   * `tsc_early_khz=` for microvm guests (see {@link microvmTscAppend}); `false` leaves the
   * kernel to calibrate the TSC itself. Default: the host's TSC frequency, on microvm only.
   */
  readonly tscKhz?: number | false;
}

export interface QemuResult {
  /** Console output (serial) followed by QEMU's own stderr. */
  readonly stdout: string;
  readonly stderr: string;
  /** QEMU's exit status; null when it was killed by a signal. */
  readonly exitCode: number | null;
  readonly timedOut: boolean;
  /** Exit status of the guest script, from the result marker; null when no marker was printed. */
  readonly guestRc: number | null;
  /** Host milliseconds from spawning QEMU to the ready marker (null if never seen). */
  readonly readyMs: number | null;
  /** Guest uptime in seconds at the ready marker, as the guest kernel measured it. */
  readonly guestUptimeAtReady: number | null;
  /** Host milliseconds from spawn to exit. */
  readonly durationMs: number;
  readonly accel: 'tcg' | 'kvm';
  /** The full command line that ran. */
  readonly command: readonly string[];
}

/** Parses the `/init` result marker out of console output. */
export function parseGuestRc(output: string): number | null {
  const m = new RegExp(`${RESULT_MARKER} rc=(\\d+)`).exec(output);
  return m === null ? null : Number(m[1]);
}

function runOnce(o: RunQemuOptions, accel: 'tcg' | 'kvm'): Promise<QemuResult> {
  const timeoutMs = o.timeoutMs ?? 60_000;
  const memMiB = o.memMiB ?? 512;
  const qemu = process.env.QEMU_BINARY ?? o.qemu ?? 'qemu-system-x86_64';
  const extra = [
    ...(isMicrovm(o.args ?? []) ? microvmTscAppend(o.tscKhz) : []),
    ...(o.append === undefined ? [] : [o.append]),
  ];
  const append = ['console=ttyS0 panic=-1 quiet', ...extra].join(' ');
  const qemuArgs = [
    '-accel',
    accel,
    '-m',
    `${memMiB}M`,
    '-smp',
    String(o.smp ?? 1),
    '-nographic',
    '-no-reboot',
    '-kernel',
    o.kernel,
    '-initrd',
    o.initrd,
    '-append',
    append,
    ...(o.args ?? []),
  ];
  // timeout(1) is the outer guard; the kill timer below also covers a wedged timeout(1).
  const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
  const command = [
    'timeout',
    '--signal=TERM',
    '--kill-after=5',
    String(seconds),
    qemu,
    ...qemuArgs,
  ];
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(command[0]!, command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let readyMs: number | null = null;
    let killedByUs = false;
    const timer = setTimeout(() => {
      killedByUs = true;
      child.kill('SIGKILL');
    }, timeoutMs + 10_000);
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (s: string) => {
      out += s;
      if (readyMs === null && out.includes(READY_MARKER)) readyMs = performance.now() - start;
      o.onOutput?.(s);
    });
    child.stderr.on('data', (s: string) => {
      err += s;
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      const uptime = new RegExp(`${READY_MARKER} uptime=([0-9.]+)`).exec(out);
      resolve({
        stdout: err === '' ? out : `${out}\n${err}`,
        stderr: err,
        exitCode: code,
        timedOut: killedByUs || code === 124 || code === 137,
        guestRc: parseGuestRc(out),
        readyMs,
        guestUptimeAtReady: uptime === null ? null : Number(uptime[1]),
        durationMs: performance.now() - start,
        accel,
        command,
      });
    });
  });
}

/**
 * Boots the guest and returns its console output. Always bounded by `timeoutMs`.
 * Does not throw on guest failure: check `guestRc === 0` and `timedOut`.
 */
export async function runQemu(o: RunQemuOptions): Promise<QemuResult> {
  if ((o.accel ?? 'tcg') === 'kvm') {
    const r = await runOnce(o, 'kvm');
    if (r.guestRc !== null) return r;
    // REAL-DRIVERS.md: /dev/kvm may exist yet fail to run the kernel; fall back to TCG.
  }
  return runOnce(o, 'tcg');
}

/** Creates a zero-filled raw disk image of `bytes` bytes. */
export async function createRawImage(file: string, bytes: number): Promise<void> {
  await fs.writeFile(file, new Uint8Array(0));
  await fs.truncate(file, bytes);
}

// ---------------------------------------------------------------------------------------------
// Helper processes (back-ends): output collected, exit observed.

/** A child process whose stdout and stderr are collected in `log`. */
export interface LoggedProcess {
  readonly child: ChildProcess;
  readonly log: string[];
  /** undefined while it runs; then its exit status, or -1 when a signal ended it. */
  exitCode: number | null | undefined;
  readonly exited: Promise<void>;
}

/** Starts `command args` with stdin closed, collecting its output. */
export function spawnLogged(
  command: string,
  args: readonly string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): LoggedProcess {
  const child = spawn(command, args, {
    cwd: options.cwd ?? repoRoot,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log: string[] = [];
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (s: string) => log.push(s));
  child.stderr?.on('data', (s: string) => log.push(s));
  const p: { -readonly [K in keyof LoggedProcess]: LoggedProcess[K] } = {
    child,
    log,
    exitCode: undefined,
    exited: Promise.resolve(),
  };
  p.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      p.exitCode = code ?? (signal === null ? null : -1);
      resolve();
    });
  });
  return p;
}

/** Polls `cond` every `stepMs` until it holds (true) or `ms` have passed (false). */
export async function waitFor(cond: () => boolean, ms: number, stepMs = 25): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
  return true;
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
export async function stopProcess(p: LoggedProcess, graceMs = 5_000): Promise<void> {
  if (p.exitCode !== undefined) return;
  p.child.kill('SIGTERM');
  if (!(await waitFor(() => p.exitCode !== undefined, graceMs))) {
    p.child.kill('SIGKILL');
    await p.exited;
  }
}

/**
 * How to run the `virtq` CLI: `dist/cli/main.js` when it is at least as new as every file
 * under src/ (`npm test` builds it first), else `src/cli/main.ts` through tsx, with a warning.
 */
export async function virtqCliArgs(): Promise<{ args: string[]; what: string }> {
  const dist = path.join(repoRoot, 'dist/cli/main.js');
  const src = path.join(repoRoot, 'src/cli/main.ts');
  if (existsSync(dist)) {
    const built = (await fs.stat(dist)).mtimeMs;
    let newest = 0;
    for (const f of await fs.readdir(path.join(repoRoot, 'src'), { recursive: true })) {
      if (!f.endsWith('.ts')) continue;
      newest = Math.max(newest, (await fs.stat(path.join(repoRoot, 'src', f))).mtimeMs);
    }
    if (newest <= built) return { args: [dist], what: 'dist/cli/main.js' };
    console.warn(
      'virtq: dist/ is older than src/; running the CLI from src with tsx (npm run build to use dist)',
    );
  }
  return { args: ['--import', 'tsx', src], what: 'src/cli/main.ts (tsx)' };
}

/**
 * The `FACT name=value` lines of a guest's console log. A kernel message can land in the
 * middle of a line the guest's script prints (seen once: "FACT read1_bytes[    2.230909]
 * reboot: Power down" and "=4000" on the next line): such messages are taken out first.
 */
export function parseFacts(stdout: string): Map<string, string> {
  const facts = new Map<string, string>();
  const text = stdout.replace(/\[ *\d+\.\d{6}\] [^\n]*\r?\n/g, '');
  for (const line of text.split(/\r?\n/)) {
    const m = /FACT ([a-z0-9_.]+)=(.*)$/.exec(line);
    if (m !== null) facts.set(m[1]!, m[2]!.trim());
  }
  return facts;
}
