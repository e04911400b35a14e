import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runQueueDemo } from '../../src/cli/queue-demo.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const cli = join(root, 'dist/cli/main.js');

function virtq(...args: string[]) {
  return spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60_000 });
}

describe('virtq command', () => {
  it('demo runs to completion and prints its summary', () => {
    const r = virtq('demo', '--chains', '5000', '--no-progress');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/chains exchanged\s+5,000/);
    expect(r.stdout).toMatch(/verified\s+every chain came back once/);
  });

  it.each([
    [['demo', '--chains', 'many'], /--chains must be a whole number/],
    [['demo', '--queue-size', '100'], /--queue-size must be a power of two/],
    [['demo', '--queue-size', '65536'], /--queue-size must be between 1 and 32768/],
    [['demo', '--response-bytes', '2'], /--response-bytes must be between 4/],
    [['demo', '--bogus'], /unknown option '--bogus'/],
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
    expect(r.stdout).toMatch(/demo \[options\]\s+Run a simulated guest driver/);
    const d = virtq('demo', '--help');
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
