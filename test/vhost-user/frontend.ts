/**
 * A minimal vhost-user front-end for the back-end tests: raw message encoding, a client over
 * one socket, and a 1 MiB guest RAM layout shown to the back-end as two memfd regions.
 */
import { afterEach, expect } from 'vitest';
import { GuestMemory } from '../../src/memory/index.js';
import {
  loadNative,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserFlags,
  type VhostUserNative,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from '../../src/vhost-user/index.js';

export const R = VhostUserRequest;
export const VERSION_1 = 1n << 32n;
export const PROTOCOL_BIT = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);
export const PROTOCOL_FEATURES =
  (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
  (1n << BigInt(VhostUserProtocolFeature.CONFIG)) |
  (1n << BigInt(VhostUserProtocolFeature.MQ));

/** Guest RAM: one 1 MiB memfd, shown to the back-end as two regions. */
export const RAM = 0x10_0000;
export const HALF = RAM / 2;
export const REGION1_GPA = 0x10_0000;
export const USER0 = 0x7f00_0000_0000;
export const USER1 = 0x7e00_0000_0000;
export const QSIZE = 16;
export const RING_GPA = REGION1_GPA; // rings live in region 1 (mmap offset HALF)

export const silent = { warn() {} };

export function u64(v: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}
export function u32s(...vs: number[]): Uint8Array {
  const b = new Uint8Array(4 * vs.length);
  const v = new DataView(b.buffer);
  vs.forEach((x, i) => {
    v.setUint32(4 * i, x, true);
  });
  return b;
}
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
export function encode(
  request: number,
  payload: Uint8Array,
  flags: number = VhostUserFlags.VERSION,
) {
  return concat(u32s(request, flags, payload.length), payload);
}
/** SET_MEM_TABLE's payload: guest RAM as two regions of the memfd (send its fd twice). */
export function memTable() {
  return concat(
    u32s(2, 0),
    u64(0),
    u64(HALF),
    u64(USER0),
    u64(0),
    u64(REGION1_GPA),
    u64(HALF),
    u64(USER1),
    u64(HALF),
  );
}
export function vringAddr(index: number, gpaDesc: number, gpaAvail: number, gpaUsed: number) {
  const user = (gpa: number) => USER1 + (gpa - REGION1_GPA);
  return concat(
    u32s(index, 0),
    u64(user(gpaDesc)),
    u64(user(gpaUsed)),
    u64(user(gpaAvail)),
    u64(0),
  );
}

/**
 * Sets up split ring `index` as a front-end does (SET_VRING_NUM, _BASE 0, _ADDR, _CALL when
 * `call` is given, _KICK), each acknowledged with 0. `logUsed`: the address carries
 * VHOST_VRING_F_LOG and the used ring's address for the dirty log.
 */
export async function setupSplitRing(
  fe: Frontend,
  index: number,
  layout: { desc: number; avail: number; used: number },
  kick: number,
  o: { call?: number; logUsed?: boolean } = {},
): Promise<void> {
  const ack = async (request: number, payload: Uint8Array, fds?: number[]) => {
    const r = await fe.acked(request, payload, fds);
    if (r !== 0n) throw new Error(`request ${request} for ring ${index} answered ${r}`);
  };
  await ack(R.SET_VRING_NUM, u32s(index, QSIZE));
  await ack(R.SET_VRING_BASE, u32s(index, 0));
  const addr = vringAddr(index, layout.desc, layout.avail, layout.used);
  if (o.logUsed === true) {
    new DataView(addr.buffer).setUint32(4, 1, true); // VHOST_VRING_F_LOG
    new DataView(addr.buffer).setBigUint64(32, BigInt(layout.used), true);
  }
  await ack(R.SET_VRING_ADDR, addr);
  if (o.call !== undefined) await ack(R.SET_VRING_CALL, u64(index), [o.call]);
  await ack(R.SET_VRING_KICK, u64(index), [kick]);
}

/**
 * Guest RAM for the back-end tests: a memfd of {@link RAM} bytes (sent twice with
 * {@link memTable}), mapped here as the two regions the table describes. `cleanups` gets the
 * close of the memfd.
 */
export function guestRam(n: VhostUserNative, cleanups: (() => void)[]) {
  const memfd = n.memfdCreate('guest-ram', 0);
  n.ftruncate(memfd, RAM);
  cleanups.push(() => n.close(memfd));
  const ram = n.mmap(memfd, RAM, 0, n.constants.PROT_READ | n.constants.PROT_WRITE);
  const guest = new GuestMemory([
    { base: 0, length: HALF, buffer: ram },
    { base: REGION1_GPA, length: HALF, buffer: ram, offset: HALF },
  ]);
  return { memfd, guest };
}

/** A minimal vhost-user front-end over one socket. */
export class Frontend {
  replyAck = false;
  private closed = false;
  constructor(
    readonly n: VhostUserNative,
    readonly fd: number,
  ) {}

  /**
   * Closes the front-end's socket, once: a second close of the same number could close
   * whatever descriptor reused it since (another test's socket, a worker's event loop).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.n.close(this.fd);
  }

  send(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], flags = 1) {
    const bytes = encode(request, payload, flags);
    expect(this.n.sendmsg(this.fd, bytes, fds)).toBe(bytes.length);
  }

  /** The next reply, or null when the back-end closed the connection. */
  async recv(): Promise<{ request: number; flags: number; payload: Uint8Array } | null> {
    return this.recvWithFds(0);
  }

  /** The next reply with the fds attached to it (up to `maxFds`), or null when closed. */
  async recvWithFds(
    maxFds = 4,
  ): Promise<{ request: number; flags: number; payload: Uint8Array; fds: number[] } | null> {
    const buf = new Uint8Array(12 + 268);
    const fds: number[] = [];
    let got = 0;
    let need = 12;
    const deadline = Date.now() + 3000;
    while (got < need) {
      const r = this.n.recvmsg(this.fd, buf.subarray(got, need), maxFds);
      fds.push(...r.fds);
      if (r.bytes === 0) return null;
      if (r.bytes < 0) {
        if (Date.now() > deadline) throw new Error('no reply from the back-end');
        await new Promise((res) => setImmediate(res));
        continue;
      }
      got += r.bytes;
      if (got === 12) need = 12 + new DataView(buf.buffer).getUint32(8, true);
    }
    const v = new DataView(buf.buffer);
    return {
      request: v.getUint32(0, true),
      flags: v.getUint32(4, true),
      payload: buf.slice(12, need),
      fds,
    };
  }

  async u64(request: number, payload?: Uint8Array): Promise<bigint> {
    this.send(request, payload);
    const r = await this.recv();
    expect(r).not.toBeNull();
    expect(r!.request).toBe(request);
    expect(r!.flags & VhostUserFlags.REPLY).toBe(VhostUserFlags.REPLY);
    return new DataView(r!.payload.buffer).getBigUint64(0, true);
  }

  /** Sends with NEED_REPLY and returns the ack status (0 = success). */
  async acked(request: number, payload?: Uint8Array, fds: number[] = []): Promise<bigint> {
    this.send(request, payload, fds, VhostUserFlags.VERSION | VhostUserFlags.NEED_REPLY);
    const r = await this.recv();
    if (r === null) throw new Error('connection closed');
    expect(r.request).toBe(request);
    return new DataView(r.payload.buffer).getBigUint64(0, true);
  }

  async negotiate(): Promise<bigint> {
    const features = await this.u64(R.GET_FEATURES);
    expect(features & PROTOCOL_BIT).toBe(PROTOCOL_BIT);
    const proto = await this.u64(R.GET_PROTOCOL_FEATURES);
    expect(proto & PROTOCOL_FEATURES).toBe(PROTOCOL_FEATURES);
    this.send(R.SET_PROTOCOL_FEATURES, u64(PROTOCOL_FEATURES));
    expect(await this.u64(R.GET_QUEUE_NUM)).toBe(1n);
    expect(await this.acked(R.SET_OWNER)).toBe(0n);
    return features;
  }
}

export async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 3000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setImmediate(res));
  }
}

/**
 * For a describe block over the native addon: the addon (when `enabled`), a list of cleanups
 * run in reverse after each test, and an eventfd maker whose descriptors that list closes.
 */
export function nativeFixture(enabled: boolean) {
  const n = enabled ? loadNative() : (undefined as unknown as VhostUserNative);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });
  const eventfd = (): number => {
    const fd = n.eventfd(0, n.constants.EFD_NONBLOCK);
    cleanups.push(() => n.close(fd));
    return fd;
  };
  return { n, cleanups, eventfd };
}
