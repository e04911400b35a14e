/**
 * The back-end side of the vhost-user socket fuzzers: a child process (`node --import tsx -e`)
 * that serves one virtq device over a VhostUserBackend on a Unix socket, so that a crash
 * (SIGBUS on a bad mapping, an uncaught exception in a watcher) or a hang (a loop that never
 * returns to the event loop) fails the case that caused it instead of taking down or freezing
 * the test worker. The child reports its logger output, connects and disconnects over IPC and
 * answers probes with its open fds (/proc/self/fd, after a gc) and counters: the back-end's,
 * the device's and, for the network device, its frame backend's.
 *
 * Also here: the fuzzers' environment settings and the wait helpers every part of them uses.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------------------------------------
// Configuration

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name}=${raw}: not an integer`);
  return value;
}

export const SEED = envInt('VIRTQ_SOCKET_FUZZ_SEED', 0x5f0c_4e75);
export const RUNS = envInt('VIRTQ_SOCKET_FUZZ_RUNS', 0);
export const REPLAY_PATH = process.env.VIRTQ_SOCKET_FUZZ_PATH;
export const SHRINK = process.env.VIRTQ_SOCKET_FUZZ_SHRINK === '1';

/** How long the back-end may take to answer a request (or to close) before it counts as hung. */
export const ANSWER_MS = 3000;
/** How long a whole clean session may take. */
export const CLEAN_MS = 10_000;

/** The block device's disk, in bytes. */
export const DISK_BYTES = 64 * 1024;
/** The MAC address the network device offers. */
export const NET_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

// ---------------------------------------------------------------------------------------------
// The back-end's process

/**
 * The device the child serves: a block device over a {@link DISK_BYTES} memory disk, or a
 * one-pair network device (queue 0 receives, queue 1 transmits) whose frames go to a sink
 * (counted) or are reflected back to it (MAC addresses swapped).
 */
export type FuzzDevice = 'block' | 'net-sink' | 'net-reflect';

/** Runs in the child: the device served on VIRTQ_FUZZ_SOCKET, reporting over IPC. */
const CHILD_SOURCE = `
const env = process.env;
const { VhostUserBackend, loadNative } = await import(env.VIRTQ_FUZZ_VHOST_USER);
const devices = await import(env.VIRTQ_FUZZ_DEVICES);
const { readdirSync, readlinkSync } = await import('node:fs');
const send = (m) =>
  process.send(JSON.stringify(m, (_, v) => (typeof v === 'bigint' ? v.toString() : v)));
const logger = {
  warn(msg, fields) {
    send({ t: 'log', msg, fields: fields ?? null });
  },
};
const native = loadNative();
const kind = env.VIRTQ_FUZZ_DEVICE;
let device;
let lab = null;
if (kind === 'block') {
  device = new devices.BlockDevice({
    backend: new devices.MemoryBackend(new Uint8Array(${DISK_BYTES})),
    queueSize: 64,
    logger,
  });
} else {
  lab = kind === 'net-sink' ? new devices.SinkBackend() : new devices.ReflectBackend();
  device = new devices.NetDevice({ backend: lab, queueSize: 64, mac: env.VIRTQ_FUZZ_MAC });
}
const backend = new VhostUserBackend(device, {
  native,
  logger,
  onConnect: () => send({ t: 'connect' }),
  onDisconnect: (reason) => send({ t: 'disconnect', reason }),
});
backend.listen(env.VIRTQ_FUZZ_SOCKET);
process.on('disconnect', () => process.exit(0));
process.on('message', (raw) => {
  const m = JSON.parse(raw);
  if (m.t !== 'probe') return;
  globalThis.gc?.();
  const fds = [];
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync('/proc/self/fd/' + name);
      // tsx opens its cache directory now and then while it loads modules: not the
      // back-end's (a probe once caught it open at the baseline and closed later).
      if (!target.startsWith('/tmp/tsx-')) fds.push(target);
    } catch {
      // readdir's own descriptor, closed by now
    }
  }
  send({
    t: 'probe',
    id: m.id,
    fds: fds.sort(),
    connected: backend.connected,
    stats: backend.stats,
    mappings: native.mappingStats(),
    device: { ...device.stats },
    lab: lab === null ? null : { frames: lab.frames, bytes: lab.bytes },
  });
});
send({ t: 'ready' });
`;

export interface Probe {
  fds: string[];
  connected: boolean;
  stats: { connections: number; messages: number; rejected: number; kicks: number; calls: number };
  mappings: { count: number; bytes: number };
  /** The device's own counters (NetStats for the network device). */
  device: Record<string, number>;
  /** The network device's frame backend: frames it sank or reflected, and their bytes. */
  lab: { frames: number; bytes: number } | null;
}

export interface LogEntry {
  msg: string;
  fields: Record<string, unknown> | null;
}

// Wakes every waitUntil (watchers and IPC messages call it).
const waiters = new Set<() => void>();
export function wake(): void {
  for (const w of [...waiters]) w();
}

/** Resolves true once `cond` holds, false after `ms` without it. */
export function waitUntil(cond: () => boolean, ms: number): Promise<boolean> {
  if (cond()) return Promise.resolve(true);
  return new Promise((resolve) => {
    const check = (): void => {
      if (cond()) done(true);
    };
    const timer = setTimeout(() => done(cond()), ms);
    function done(value: boolean): void {
      clearTimeout(timer);
      waiters.delete(check);
      resolve(value);
    }
    waiters.add(check);
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class BackendProcess {
  readonly logs: LogEntry[] = [];
  readonly disconnects: string[] = [];
  connects = 0;
  exit: string | null = null;
  output = '';
  private ready = false;
  private killed = false;
  private nextProbe = 0;
  private readonly probes = new Map<number, Probe>();

  private constructor(
    readonly proc: ChildProcess,
    readonly socket: string,
  ) {}

  static async start(socket: string, device: FuzzDevice): Promise<BackendProcess> {
    const proc = spawn(
      process.execPath,
      ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', CHILD_SOURCE],
      {
        env: {
          ...process.env,
          VIRTQ_FUZZ_SOCKET: socket,
          VIRTQ_FUZZ_DEVICE: device,
          VIRTQ_FUZZ_MAC: Array.from(NET_MAC, (b) => b.toString(16).padStart(2, '0')).join(':'),
          VIRTQ_FUZZ_VHOST_USER: fileURLToPath(
            new URL('../../src/vhost-user/index.ts', import.meta.url),
          ),
          VIRTQ_FUZZ_DEVICES: fileURLToPath(new URL('../../src/devices/index.ts', import.meta.url)),
        },
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      },
    );
    const child = new BackendProcess(proc, socket);
    const keep = (chunk: Buffer): void => {
      child.output = (child.output + chunk.toString()).slice(-8000);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    proc.on('exit', (code, signal) => {
      child.exit = signal !== null ? `killed by ${signal}` : `exited with code ${code}`;
      wake();
    });
    proc.on('message', (raw) => {
      const m = JSON.parse(String(raw)) as { t: string } & Record<string, unknown>;
      if (m.t === 'ready') child.ready = true;
      else if (m.t === 'log') child.logs.push(m as unknown as LogEntry);
      else if (m.t === 'connect') child.connects++;
      else if (m.t === 'disconnect') child.disconnects.push(String(m.reason));
      else if (m.t === 'probe') child.probes.set(m.id as number, m as unknown as Probe);
      wake();
    });
    if (!(await waitUntil(() => child.ready || child.exit !== null, 60_000)) || !child.ready) {
      child.kill();
      throw new Error(`the back-end process did not start (${child.exit}): ${child.output}`);
    }
    return child;
  }

  get alive(): boolean {
    return this.exit === null && !this.killed;
  }

  /** Throws when the process is gone, with what it printed. */
  assertAlive(): void {
    if (this.exit !== null) {
      throw new Error(`the back-end process ${this.exit}; its last output:\n${this.output}`);
    }
  }

  async probe(): Promise<Probe> {
    this.assertAlive();
    const id = this.nextProbe++;
    this.proc.send(JSON.stringify({ t: 'probe', id }));
    await waitUntil(() => this.probes.has(id) || !this.alive, ANSWER_MS);
    this.assertAlive();
    const p = this.probes.get(id);
    if (p === undefined) throw new Error('the back-end process does not answer probes (hung?)');
    this.probes.delete(id);
    return p;
  }

  /** Waits until the back-end has accepted and dropped `opened` connections in all. */
  async idle(opened: number): Promise<void> {
    const ok = await waitUntil(() => this.disconnects.length >= opened || !this.alive, ANSWER_MS);
    this.assertAlive();
    if (!ok) {
      throw new Error(
        `the back-end still holds a connection (${this.disconnects.length} of ${opened} closed)`,
      );
    }
  }

  kill(): void {
    if (this.alive) this.proc.kill('SIGKILL');
    this.killed = true;
  }
}
