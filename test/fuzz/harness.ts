import { expect } from 'vitest';
import type { DriverQueue } from '../../src/driver/queue.js';
import type { GuestMemory } from '../../src/memory/index.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
} from '../../src/queue/index.js';

import { cleanRequest } from './clean-request.js';
import { HostileGuest } from './hostile-guest.js';
import {
  type DeviceKind,
  damagedCanaries,
  Rand,
  type RingFormat,
  type RingSpec,
  ringAt,
} from './layout.js';
import {
  type Budget,
  instrument,
  type MadeDevice,
  makeDevice,
  turnBounds,
  WorkMeter,
} from './meter.js';

export const bit = (b: number) => 1n << BigInt(b);
export const VERSION_1 = bit(VIRTIO_F_VERSION_1);
export const PACKED = bit(VIRTIO_F_RING_PACKED);
export const INDIRECT = bit(VIRTIO_F_INDIRECT_DESC);
export const EVENT_IDX = bit(VIRTIO_F_EVENT_IDX);

export function envInt(name: string, fallback: number): number {
  const v = Number(process.env[name]);
  return Number.isInteger(v) && v > 0 ? v : fallback;
}
/** One macrotask turn of the event loop. */
export const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Waits (turns of the event loop) until `done()` or `ms` pass. */
export async function waitFor(done: () => boolean, ms = 2000): Promise<void> {
  const end = performance.now() + ms;
  while (!done() && performance.now() < end) await tick();
}

/**
 * Waits until the device is quiet (no turn in three turns of the event loop: continuations
 * and kicks arrive within one), or did `maxTurns` more turns, or 3 s passed.
 */
export async function settle(meter: WorkMeter, maxTurns: number): Promise<void> {
  const start = meter.turns;
  const end = performance.now() + 3000;
  let last = meter.turns;
  let quiet = 0;
  while (quiet < 3 && meter.turns - start <= maxTurns && performance.now() < end) {
    await tick();
    if (meter.turns === last) quiet++;
    else {
      quiet = 0;
      last = meter.turns;
    }
  }
}

export interface Case {
  kind: DeviceKind;
  format: RingFormat;
  indirect: boolean;
  seed: number;
  /** The guest refills its rings before every continuation (it never stops). */
  flood: boolean;
}

/** A budget: the defaults, or small ones so that they bite in a short run. */
export function pickBudget(rand: Rand): Budget {
  const b: Budget = {};
  if (rand.chance(0.6)) b.maxChainsPerTurn = 1 + rand.int(64);
  if (rand.chance(0.75)) b.maxBytesPerTurn = 1 + rand.int(256 * 1024);
  return b;
}

/** Features a hostile guest asks for: the ring format and indirect as the case says, the rest random. */
export function pickFeatures(c: Case, offered: bigint, rand: Rand): bigint {
  let f = VERSION_1 | (c.format === 'packed' ? PACKED : 0n) | (c.indirect ? INDIRECT : 0n);
  if (rand.chance(0.5)) f |= EVENT_IDX;
  for (let b = 0; b < 64; b++) {
    const m = bit(b);
    if (m === PACKED || m === INDIRECT || m === EVENT_IDX) continue;
    if ((offered & m) !== 0n && rand.chance(0.3)) f |= m;
  }
  return f & offered;
}

/** The hostile guest's rings: one per device queue, at fixed places in region A. */
export function hostileRings(made: MadeDevice, format: RingFormat, rand: Rand): RingSpec[] {
  const want = rand.pick([4, 16, 64, 256]);
  return made.device.queueMaxSizes.map((max, i) => {
    let size = Math.min(want, max);
    while ((size & (size - 1)) !== 0) size &= size - 1;
    return { format, size, ...ringAt(i) };
  });
}

/** The parts every transport runs: rounds of hostile rings and notifications, then the checks. */
export interface Harness {
  memory: GuestMemory;
  backing: Uint8Array;
  /** Notifies queue `q` (and lets the transport deliver it). */
  notify(q: number): Promise<void>;
  /** Resets the device through the transport. */
  reset(): Promise<void>;
  /** Resets the device and sets it up again on the hostile rings (after DEVICE_NEEDS_RESET). */
  recover(): Promise<void>;
  /** After a reset: a clean driver sets up every queue and returns them with its kick. */
  cleanQueues(format: RingFormat): Promise<{ queues: DriverQueue[]; kick: (q: number) => void }>;
  /** Errors the transport reported that are not the guest's. */
  internalErrors(): string[];
  /** The driver stops using queue `q` while the device runs (MMIO: QueueReady 0). */
  stopQueue?(q: number): Promise<void>;
}

export const MAX_TURNS_PER_ROUND = 48;

function emptyStats() {
  return {
    cases: 0,
    chains: 0,
    turns: 0,
    recoveries: 0,
    stoppedQueues: 0,
    floodTurns: 0,
    floodChains: 0,
    maxTimerLateMs: 0,
    maxTurnChains: 0,
    maxTurnBytes: 0,
  };
}
/** What the runs of one test did (printed, so that a run that does nothing shows). */
export const stats = emptyStats();
export function resetStats(): void {
  Object.assign(stats, emptyStats());
}

/**
 * A case's device, over a counting backend and instrumented, with its budget, its bounds per
 * turn and the hostile guest's rings. `budget` replaces the drawn one (the meter's self-test).
 */
export function setupCase(c: Case, budget?: Budget) {
  const rand = new Rand(c.seed);
  const b = budget ?? pickBudget(rand);
  const meter = new WorkMeter(0, 0);
  const made = makeDevice(c.kind, meter, b, 256, rand);
  const rings = hostileRings(made, c.format, rand);
  const bounds = turnBounds(b, Math.max(...rings.map((r) => r.size)), made.requestCap);
  meter.chainBound = bounds.chains;
  meter.byteBound = bounds.bytes;
  instrument(made.device, meter, made.rxQueues);
  return { rand, meter, made, rings };
}

/** One case under way: the case, its generator, device, meter, rings and transport. */
export interface Run {
  c: Case;
  rand: Rand;
  made: MadeDevice;
  meter: WorkMeter;
  rings: RingSpec[];
  h: Harness;
}

export const FLOOD_TURNS = 400;
export const FLOOD_MS = 30;
const FLOOD_LONG_MS = 3000;
/** Fewer turns than this and it was no flood. */
const FLOOD_MIN_TURNS = 40;

/**
 * `rounds` rounds of hostile chains, backend input and notifications, each let run until the
 * device is quiet; a device in DEVICE_NEEDS_RESET is reset and set up again, as a driver does.
 * Returns the guest, to go on with.
 */
export async function hostileRounds(run: Run, rounds: number): Promise<HostileGuest> {
  const { c, rand, made, meter, rings, h } = run;
  const guest = new HostileGuest(h.memory, rings, rand, c.kind, c.indirect);
  let inputFull = false;
  if (made.pipe !== undefined) {
    made.pipe.onDrain = () => {
      inputFull = false;
    };
  }
  for (let r = 0; r < rounds; r++) {
    guest.round();
    // Console input, respecting back-pressure (push says when the device holds enough).
    if (made.pipe !== undefined && !inputFull && rand.chance(0.5))
      inputFull = !made.pipe.push(new Uint8Array(1 + rand.int(3000)).fill(0x41));
    if (made.net !== undefined && rand.chance(0.5)) {
      made.net.refuse = rand.chance(0.2);
      made.net.offer(14 + rand.int(1500), 0x42);
      if (!made.net.refuse) made.net.port?.resumeTx();
    }
    await h.notify(rand.int(rings.length));
    if (h.stopQueue !== undefined && rand.chance(0.05)) {
      // A queue stopped in the middle of traffic stays stopped until the next reset; the
      // device must leave it alone and keep serving the others.
      await h.stopQueue(rand.int(rings.length));
      stats.stoppedQueues++;
      if (rand.chance(0.5)) {
        guest.restart();
        await h.recover();
      }
    }
    await settle(meter, MAX_TURNS_PER_ROUND);
    if (made.device.needsReset) {
      // As a driver does after DEVICE_NEEDS_RESET: reset, fresh rings, carry on.
      stats.recoveries++;
      guest.restart(); // before the device sees the rings again (vhost-user serves at once)
      await h.recover();
    }
  }
  return guest;
}

/**
 * The hostile phase and the checks: rounds of chains and notifications; in a flood, a timer
 * and another device's request scheduled from a timer must both be served while the guest
 * keeps the device busy. `other` submits the other device's request and says whether it was
 * served.
 */
export async function hostileRun(
  run: Run,
  other: { submit(): void; served(): boolean } | null,
): Promise<void> {
  const { c, rand, made, meter, rings, h } = run;
  const guest = await hostileRounds(run, 4 + rand.int(10));
  if (c.flood) {
    // A guest that never stops: a valid but costly chain made available again and again,
    // from the event loop (a vCPU) and before each continuation of the device.
    // From a freshly set-up device, so that both sides start at the first slot.
    guest.restart();
    await h.recover();
    guest.flood();
    const chainsBefore = meter.chains;
    meter.beforeContinuation = () => {
      if (rand.chance(0.5)) guest.feed();
    };
    // The flood runs for FLOOD_TURNS turns (or FLOOD_LONG_MS) and FLOOD_MS at least; a timer due 2 ms in must
    // fire, and a request to another device submitted from it must be served, while the
    // device is still busy: turns keep coming after both.
    let timerAtTurn = -1;
    let servedAtTurn = -1;
    const due = performance.now() + 2;
    let late = 0;
    const timer = setTimeout(() => {
      timerAtTurn = meter.turns;
      late = performance.now() - due;
      other?.submit();
    }, 2);
    const start = meter.turns;
    const startMs = performance.now();
    let vcpu = true;
    const kickLoop = async () => {
      while (vcpu) {
        guest.feed();
        await h.notify(rand.int(rings.length));
        if (servedAtTurn < 0 && other?.served()) servedAtTurn = meter.turns;
        await tick();
      }
    };
    const loop = kickLoop();
    // Long enough: FLOOD_TURNS turns, or FLOOD_LONG_MS on a slow (loaded) machine.
    await waitFor(
      () =>
        (meter.turns - start > FLOOD_TURNS || performance.now() - startMs >= FLOOD_LONG_MS) &&
        performance.now() - startMs >= FLOOD_MS &&
        timerAtTurn >= 0 &&
        (other === null || servedAtTurn >= 0) &&
        meter.turns > Math.max(timerAtTurn, servedAtTurn),
      20_000,
    );
    vcpu = false;
    await loop;
    clearTimeout(timer);
    meter.beforeContinuation = null;
    stats.floodTurns += meter.turns - start;
    stats.floodChains += meter.chains - chainsBefore;
    stats.maxTimerLateMs = Math.max(stats.maxTimerLateMs, late);
    expect(
      meter.chains - chainsBefore,
      `chains served during the flood (device error: ${made.device.lastError?.message})`,
    ).toBeGreaterThan(0);
    expect(meter.turns - start, 'turns of the flood').toBeGreaterThan(FLOOD_MIN_TURNS);
    expect(timerAtTurn, 'a timer fired while the guest flooded the device').toBeGreaterThanOrEqual(
      0,
    );
    expect(meter.turns, 'turns after the timer fired').toBeGreaterThan(timerAtTurn);
    expect(late, 'milliseconds the timer fired late').toBeLessThan(1000);
    if (other !== null) {
      expect(servedAtTurn, 'another device served during the flood').toBeGreaterThanOrEqual(0);
      expect(meter.turns, 'turns after the other device was served').toBeGreaterThan(servedAtTurn);
    }
  }
  stats.cases++;
  stats.chains += meter.chains;
  stats.turns += meter.turns;
  stats.maxTurnChains = Math.max(stats.maxTurnChains, meter.maxTurnChains);
  stats.maxTurnBytes = Math.max(stats.maxTurnBytes, meter.maxTurnBytes);
  await h.reset();
  // Continuations scheduled before the reset run now and must do nothing.
  await settle(meter, Number.POSITIVE_INFINITY);

  expect(meter.violations.join('\n'), 'turns over their budget').toBe('');
  expect(meter.escaped.map(String), 'errors out of the device').toEqual([]);
  expect(h.internalErrors(), 'internal errors of the transport').toEqual([]);
  expect(damagedCanaries(h.backing).length, 'canary bytes changed').toBe(0);

  if (made.net !== undefined) made.net.refuse = false;
  const { queues, kick } = await h.cleanQueues(c.format);
  made.net?.port?.resumeTx();
  await cleanRequest(c.kind, made, h.memory, queues, kick, (done) => waitFor(done, 3000));
  expect(damagedCanaries(h.backing).length, 'canary bytes changed').toBe(0);
}

export function report(what: string): void {
  console.log(
    `device fuzz, ${what}: ${stats.cases} cases, ${stats.turns} turns, ${stats.chains} chains, ` +
      `${stats.recoveries} resets after DEVICE_NEEDS_RESET, ${stats.stoppedQueues} queues stopped, ${stats.floodTurns} turns and ${stats.floodChains} chains flooded (timer late by ${stats.maxTimerLateMs.toFixed(1)} ms at most); largest turn ${stats.maxTurnChains} chains, ${stats.maxTurnBytes} bytes`,
  );
  // A fuzzer whose guest never gets a chain through tests nothing.
  expect(stats.chains, 'chains the devices served').toBeGreaterThan(0);
}
