import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runQueueDemo } from '../../src/cli/queue-demo.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
// Started the way npm starts it: through a symlink to the package's bin entry (as in
// node_modules/.bin/virtq). test/cli/packed.test.ts runs the installed tarball itself.
const cli = join(mkdtempSync(join(tmpdir(), 'virtq-cli-bin-')), 'virtq');
symlinkSync(join(root, 'bin/virtq.js'), cli);
const smallImage = join(dirname(cli), 'small.img');
writeFileSync(smallImage, new Uint8Array(1000));

function virtq(...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });
}

describe('virtq queue-demo', () => {
  it('runs to completion and prints its summary', () => {
    const r = virtq('queue-demo', '--chains', '5000', '--no-progress');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/chains exchanged\s+5,000/);
    expect(r.stdout).toMatch(/verified\s+every chain came back once/);
  });

  it.each([
    [['queue-demo', '--chains', 'many'], /--chains must be a whole number/],
    [['queue-demo', '--queue-size', '100'], /--queue-size must be a power of two/],
    [['queue-demo', '--queue-size', '65536'], /--queue-size must be between 1 and 32768/],
    [['queue-demo', '--response-bytes', '2'], /--response-bytes must be between 4/],
    [['queue-demo', '--bogus'], /unknown option '--bogus'/],
    [['frobnicate'], /unknown command 'frobnicate'/],
  ])('rejects %j with a clear message and status 1', (args, message) => {
    const r = virtq(...args);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('--help describes every command', () => {
    const r = virtq('--help');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/demo \[options\]\s+Run a simulated guest that drives virtio devices/);
    expect(r.stdout).toMatch(
      /queue-demo \[options\]\s+Run a driver and a device exchanging chains/,
    );
    const d = virtq('queue-demo', '--help');
    expect(d.status).toBe(0);
    for (const flag of ['--chains', '--queue-size', '--batch', '--no-event-idx', '--indirect']) {
      expect(d.stdout).toContain(flag);
    }
  });

  it.each([
    [true, false],
    [false, false],
    [true, true],
  ])('queue demo verifies every answer (eventIdx=%s, indirect=%s)', (eventIdx, indirect) => {
    const r = runQueueDemo({
      chains: 3000,
      queueSize: 64,
      batch: 16,
      requestBytes: 100,
      responseBytes: 8,
      eventIdx,
      indirect,
    });
    expect(r.chains).toBe(3000);
    expect(r.bytesRead).toBe(300_000);
    expect(r.bytesWritten).toBe(24_000);
  });
});

/** The rows of the demo's summary table for `device`. */
function rows(stdout: string, device: string): string[] {
  return stdout
    .split('\n')
    .filter((l) =>
      new RegExp(`^(split|packed)\\*?\\s+(guest thread|device worker)\\s+${device}\\s`).test(l),
    );
}

describe('virtq demo', () => {
  it('drives every device over both ring formats, on the guest thread and in a device worker', () => {
    const r = virtq('demo', '--duration', '2', '--no-progress');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(
      /a simulated guest drove rng, block, console, net through virtio-mmio/,
    );
    for (const device of ['rng', 'block', 'console', 'net']) {
      const lines = rows(r.stdout, device);
      expect(lines.length, `rows for ${device}`).toBe(4);
      expect(lines.filter((l) => l.includes('guest thread')).length).toBe(2);
      expect(lines.filter((l) => l.includes('device worker')).length).toBe(2);
      for (const line of lines) {
        // requests > 0 and errors = 0
        const cells = line.split(/\s{2,}/);
        expect(Number(cells[4]!.replace(/,/g, '')), line).toBeGreaterThan(0);
        expect(cells[6], line).toBe('0');
      }
    }
    expect(r.stdout).toMatch(/verified: every request completed once/);
  }, 60_000);

  it('prints plain progress lines on a non-terminal stderr', () => {
    const r = virtq(
      'demo',
      '--devices',
      'rng',
      '--ring',
      'packed',
      '--placement',
      'worker',
      '--duration',
      '1.5',
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/virtq demo: \d+\.\d s, phase 1\/1 packed\/device worker: rng [\d,]+/);
    expect(r.stderr).toMatch(
      /virtq demo: phase 1\/1 \(packed\/device worker\) done: [\d,]+ requests/,
    );
    expect(rows(r.stdout, 'rng').length).toBe(1);
    expect(rows(r.stdout, 'block').length).toBe(0);
  }, 60_000);

  it('reads a disk image given with --disk-image and checks what it reads against the file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'virtq-demo-'));
    try {
      const image = join(dir, 'disk.img');
      const bytes = new Uint8Array(1 << 20);
      for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 12)) & 0xff;
      writeFileSync(image, bytes);
      const r = virtq(
        'demo',
        '--devices',
        'block',
        '--disk-image',
        image,
        '--duration',
        '1',
        '--no-progress',
      );
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const lines = rows(r.stdout, 'block');
      expect(lines.length).toBe(4);
      for (const line of lines) expect(line.split(/\s{2,}/)[6]).toBe('0');
      expect(r.stdout).toMatch(/block: random 4 KiB reads, checked against the file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it.each([
    [
      ['demo', '--devices', 'rng,floppy'],
      /--devices: unknown "floppy" \(choose from rng, block, console, net\)/,
    ],
    [['demo', '--devices', ','], /--devices needs at least one of rng, block, console, net/],
    [['demo', '--ring', 'diagonal'], /--ring must be split, packed or both/],
    [['demo', '--placement', 'moon'], /--placement must be same-thread, worker or both/],
    [['demo', '--features', 'event-idx,turbo'], /--features: unknown "turbo"/],
    [['demo', '--duration', 'soon'], /--duration must be a number of seconds/],
    [['demo', '--duration', '0'], /--duration must be more than 0/],
    [
      ['demo', '--duration', '-1'],
      /--duration must be more than 0 and at most 3600 seconds \(got -1\)/,
    ],
    [
      ['demo', '--disk-image', '/nonexistent/virtq.img'],
      /--disk-image \/nonexistent\/virtq.img cannot be read \(ENOENT\)/,
    ],
    [['demo', '--disk-image', '/'], /--disk-image \/ is not a regular file/],
    [
      ['demo', '--disk-image', smallImage],
      /--disk-image .*small.img is 1000 bytes; the demo reads and writes 4 KiB blocks, so it needs at least 4096 bytes/,
    ],
    [['demo', '--chains', '5'], /unknown option '--chains'/],
  ])('rejects %j with a clear message and status 1', (args, message) => {
    const r = virtq(...args);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('--help lists every option', () => {
    const d = virtq('demo', '--help');
    expect(d.status).toBe(0);
    for (const flag of [
      '--devices',
      '--ring',
      '--placement',
      '--features',
      '--duration',
      '--disk-image',
      '--no-progress',
    ]) {
      expect(d.stdout).toContain(flag);
    }
  });
});

describe('virtq vhost-user-blk', () => {
  const dir = mkdtempSync(join(tmpdir(), 'virtq-cli-vub-'));
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(1 << 20));
  const empty = join(dir, 'empty.img');
  writeFileSync(empty, new Uint8Array(0));
  const tiny = join(dir, 'tiny.img');
  writeFileSync(tiny, new Uint8Array(1000));
  const notSocket = join(dir, 'not-a-socket');
  writeFileSync(notSocket, 'x');

  it.each([
    [['--block-size', '1000'], /--block-size must be a power of two/],
    [['--block-size', '256'], /--block-size must be between 512 and 65536/],
    [['--num-queues', '0'], /--num-queues must be between 1 and 256/],
    [['--queue-size', '100'], /--queue-size must be a power of two/],
    [
      ['--blk-file', '/nonexistent/virtq.img'],
      /--blk-file \/nonexistent\/virtq.img cannot be opened \(ENOENT\)/,
    ],
    [
      ['--socket-path', notSocket],
      /cannot listen on .*not-a-socket: .* exists and is not a socket/,
    ],
    [
      ['--blk-file', empty],
      /empty.img is 0 bytes, less than one 512-byte block: there is nothing to serve/,
    ],
    [
      ['--blk-file', image, '--block-size', '2048', '--blk-file', tiny],
      /tiny.img is 1000 bytes, less than one 2048-byte block/,
    ],
    [
      ['--async-io', '--no-ring-threads'],
      /--async-io needs ring threads .* cannot be combined with --no-ring-threads/,
    ],
  ])('rejects %j with a clear message and status 1', (extra, message) => {
    const base = ['vhost-user-blk', '--socket-path', join(dir, 'vub.sock'), '--blk-file', image];
    // Later occurrences of an option override earlier ones.
    const r = virtq(...base, ...extra);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('says what happens to a tail that is not a whole block, refuses a socket a live back-end answers on, and stops on SIGINT', async () => {
    const odd = join(dir, 'odd.img');
    writeFileSync(odd, new Uint8Array(10 * 1024 + 100));
    const sock = join(dir, 'live.sock');
    const first = spawn(
      process.execPath,
      [cli, 'vhost-user-blk', '--socket-path', sock, '--blk-file', odd],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let err = '';
    first.stderr.setEncoding('utf8').on('data', (d: string) => {
      err += d;
    });
    const exited = new Promise<number | null>((resolve) =>
      first.on('exit', (code) => resolve(code)),
    );
    try {
      const deadline = Date.now() + 30_000;
      while (!err.includes('serving') && Date.now() < deadline) await delay(50);
      expect(err).toContain(
        "odd.img is 10340 bytes, not a whole number of 512-byte sectors; the guest sees 21 sectors (10752 bytes): the last sector's missing 412 bytes read as zeroes, and a write there makes the file 10752 bytes long.",
      );
      expect(err).toMatch(/serving .*odd.img \(10752 bytes, 1 queue, one thread each\)/);

      const second = virtq('vhost-user-blk', '--socket-path', sock, '--blk-file', image);
      expect(second.status).toBe(1);
      expect(second.stderr).toMatch(
        /cannot listen on .*live.sock: .*another back-end is listening on this socket/,
      );
      expect(existsSync(sock)).toBe(true); // the first back-end's socket was left alone
    } finally {
      first.kill('SIGINT');
    }
    expect(await exited).toBe(0);
    expect(err).toMatch(/stopping; \{"connections":/);
    expect(existsSync(sock)).toBe(false);
  }, 60_000);

  it('--help lists every option', () => {
    const d = virtq('vhost-user-blk', '--help');
    expect(d.status).toBe(0);
    for (const flag of [
      '--socket-path',
      '--blk-file',
      '--read-only',
      '--num-queues',
      '--queue-size',
      '--block-size',
      '--no-ring-threads',
      '--async-io',
    ]) {
      expect(d.stdout).toContain(flag);
    }
    rmSync(dir, { recursive: true, force: true });
  });
});

/**
 * Starts `virtq <args>` as a back-end, waits until it says it is serving, runs `check` on what
 * it printed so far, then stops it with SIGTERM; returns its exit status and all it printed.
 */
async function serveThenStop(
  args: string[],
  check: (stderr: string) => void,
): Promise<{ status: number | null; stderr: string }> {
  const p = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  p.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)));
  try {
    const deadline = Date.now() + 30_000;
    while (!err.includes('serving') && Date.now() < deadline) await delay(50);
    check(err);
  } finally {
    p.kill('SIGTERM');
  }
  return { status: await exited, stderr: err };
}

describe('virtq vhost-user-rng', () => {
  const dir = mkdtempSync(join(tmpdir(), 'virtq-cli-vur-'));
  const empty = join(dir, 'empty.bin');
  writeFileSync(empty, new Uint8Array(0));
  const sock = join(dir, 'vur.sock');

  it.each([
    [['--period', '0'], /--period must be between 1 and 65536/],
    [['--period', '65537'], /--period must be between 1 and 65536/],
    [['--max-bytes', 'lots'], /--max-bytes must be a whole number/],
    [['--max-bytes', '0'], /--max-bytes must be between 1 and/],
    [['--period', '5'], /--period is for --max-bytes \(a rate limit\); it has no effect here/],
    [
      ['--source', '/nonexistent/entropy'],
      /--source \/nonexistent\/entropy cannot be used: ENOENT/,
    ],
    [['--source', empty], /--source .*empty.bin cannot be used: .*is empty/],
    [
      ['--source', dir],
      /--source .* cannot be used: .*neither a regular file nor a character device/,
    ],
    [['--connect'], /cannot connect to .*vur.sock: ENOENT \(is the front-end listening there/],
  ])('rejects %j with a clear message and status 1', (extra, message) => {
    const r = virtq('vhost-user-rng', '--socket-path', sock, ...extra);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('serves, says how, and stops on SIGTERM with its counters', async () => {
    const r = await serveThenStop(
      ['vhost-user-rng', '--socket-path', sock, '--max-bytes', '4096', '--period', '1000'],
      (err) => {
        expect(err).toMatch(
          /serving entropy from the platform generator \(Web Crypto\), at most 4096 bytes per 1000 ms, on .*vur.sock/,
        );
        expect(existsSync(sock)).toBe(true);
      },
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/stopping; \{"connections":0,/);
  }, 60_000);

  it('--help lists every option', () => {
    const d = virtq('vhost-user-rng', '--help');
    expect(d.status).toBe(0);
    for (const flag of ['--socket-path', '--max-bytes', '--period', '--source', '--connect']) {
      expect(d.stdout).toContain(flag);
    }
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('virtq vhost-user-net', () => {
  const dir = mkdtempSync(join(tmpdir(), 'virtq-cli-vun-'));
  const sock = join(dir, 'vun.sock');
  const peer = join(dir, 'peer.sock');

  it.each([
    [['--backend', 'tunnel'], /--backend.*tunnel.*Allowed choices are reflect, sink, generate/],
    [['--mac', '52:54:00:12:34'], /52:54:00:12:34 is not a MAC address/],
    [['--mac', '01:00:5e:00:00:01'], /01:00:5e:00:00:01 is a multicast address; .*unicast/],
    [['--mac', 'ff:ff:ff:ff:ff:ff'], /is a multicast address/],
    [['--mac', '00:00:00:00:00:00'], /00:00:00:00:00:00 is a zero address/],
    [['--count', '5'], /--count is for --backend generate; it has no effect here/],
    [['--backend', 'sink', '--frame-size', '100'], /--frame-size is for --backend generate/],
    [['--backend', 'tap', '--tap', 'virtq-much-too-long'], /--tap .*has at most 15 bytes/],
    [['--backend', 'tap', '--tap', 'eth 0'], /--tap "eth 0": .*only letters, digits/],
    [['--backend', 'sink', '--tap', 'virtq0'], /--tap is for --backend tap/],
    // lo is no tap: refused in one line (as root); without root, or without /dev/net/tun, the
    // line says that instead. Never a stack trace.
    [
      ['--backend', 'tap', '--tap', 'lo'],
      /^virtq: (interface lo exists and is not a single-queue tap interface|no permission to open tap interface lo: run as root|\/dev\/net\/tun is missing)[^\n]*\n$/,
    ],
    [['--frame-size', '59'], /--frame-size must be between 60 and 1514/],
    [['--count', '-1'], /--count must be/],
    [['--queue-size', '100'], /--queue-size/],
    [['--queues', '0'], /--queues must be between 1 and 16\./],
    [['--queues', '17'], /--queues must be between 1 and 16\./],
    [['--queues', 'two'], /--queues must be a whole number\./],
    [['--connect'], /cannot connect to .*vun.sock: ENOENT/],
    [['--poll', '-5'], /--poll must be/],
    [['--poll', 'often'], /--poll must be/],
    [['--backend', 'pair'], /--backend pair needs --peer-socket-path <path>/],
    [['--peer-socket-path', peer], /--peer-socket-path is for --backend pair.*--backend reflect/],
    [['--backend', 'sink', '--peer-mac', '52:54:00:0a:0b:0d'], /--peer-mac is for --backend pair/],
    [['--backend', 'pair', '--peer-socket-path', sock], /--peer-socket-path must differ/],
    [['--backend', 'pair', '--peer-socket-path', peer, '--peer-mac', 'x'], /x is not a MAC/],
    [
      ['--backend', 'pair', '--peer-socket-path', peer, '--peer-mac', '03:00:00:00:00:01'],
      /03:00:00:00:00:01 is a multicast address/,
    ],
    [
      [
        '--backend',
        'pair',
        '--peer-socket-path',
        peer,
        '--mac',
        '52:54:00:0a:0b:0c',
        '--peer-mac',
        '52:54:00:0a:0b:0c',
      ],
      /--peer-mac must differ from --mac/,
    ],
  ])('rejects %j with a clear message and status 1', (extra, message) => {
    const r = virtq('vhost-user-net', '--socket-path', sock, ...extra);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(r.stdout).toBe('');
  });

  it('serves, says how, and stops on SIGTERM with its counters', async () => {
    const r = await serveThenStop(
      ['vhost-user-net', '--socket-path', sock, '--backend', 'sink', '--mac', '52:54:00:0a:0b:0c'],
      (err) => {
        expect(err).toMatch(
          /serving a network device \(MAC 52:54:00:0a:0b:0c\) with a sink frame backend on .*vun.sock/,
        );
        expect(existsSync(sock)).toBe(true);
      },
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/stopping; \{"connections":0,/);
    expect(r.stderr).toMatch(/sank 0 frames, 0 bytes/);
    expect(r.stderr).toMatch(/"polls":0,"pollTurns":0/);
  }, 60_000);

  it('--queues 4 serves a network device with four queue pairs', async () => {
    const r = await serveThenStop(
      ['vhost-user-net', '--socket-path', sock, '--backend', 'reflect', '--queues', '4'],
      (err) => {
        expect(err).toMatch(
          /serving a network device \(MAC [0-9a-f:]{17}, 4 queue pairs\) with a reflect frame backend on .*vun.sock/,
        );
      },
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/reflected 0 frames, 0 bytes/);
  }, 60_000);

  it('--backend pair serves two cable-connected devices, the second at --mac plus one', async () => {
    const r = await serveThenStop(
      [
        'vhost-user-net',
        '--socket-path',
        sock,
        '--backend',
        'pair',
        '--peer-socket-path',
        peer,
        '--mac',
        '52:54:00:0a:0b:ff',
      ],
      () => {
        expect(existsSync(sock)).toBe(true);
        expect(existsSync(peer)).toBe(true);
      },
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(
      /serving network device 1 of a pair \(MAC 52:54:00:0a:0b:ff\), cable-connected to 52:54:00:0a:0c:00, on .*vun.sock/,
    );
    expect(r.stderr).toMatch(
      /serving network device 2 of a pair \(MAC 52:54:00:0a:0c:00\), cable-connected to 52:54:00:0a:0b:ff, on .*peer.sock/,
    );
    // SIGTERM stops both, each with its counters.
    expect(r.stderr).toMatch(/stopping .*vun.sock; \{"connections":0,/);
    expect(r.stderr).toMatch(/stopping .*peer.sock; \{"connections":0,/);
    expect(r.stderr).toMatch(/device 1 \(MAC 52:54:00:0a:0b:ff\) sent 0 frames, received 0,/);
    expect(r.stderr).toMatch(/device 2 \(MAC 52:54:00:0a:0c:00\) sent 0 frames, received 0,/);
  }, 60_000);

  it('--backend pair takes --peer-mac for the second device', async () => {
    const r = await serveThenStop(
      [
        'vhost-user-net',
        '--socket-path',
        sock,
        '--backend',
        'pair',
        '--peer-socket-path',
        peer,
        '--peer-mac',
        '02:00:00:00:00:02',
      ],
      () => {},
    );
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/device 2 of a pair \(MAC 02:00:00:00:00:02\)/);
  }, 60_000);

  it('--help lists every option', () => {
    const d = virtq('vhost-user-net', '--help');
    expect(d.status).toBe(0);
    for (const flag of [
      '--socket-path',
      '--connect',
      '--backend',
      '--mac',
      '--queue-size',
      '--queues',
      '--count',
      '--frame-size',
      '--peer-socket-path',
      '--peer-mac',
      '--tap',
    ]) {
      expect(d.stdout).toContain(flag);
    }
    rmSync(dir, { recursive: true, force: true });
  });
});
