import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockDevice, MemoryBackend } from '../../src/devices/index.js';
import { SplitDriver } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import {
  isNativeAvailable,
  loadNative,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserBackend,
  VhostUserFlags,
  type VhostUserNative,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from '../../src/vhost-user/index.js';

const R = VhostUserRequest;
const VERSION_1 = 1n << 32n;
const PROTOCOL_BIT = 1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES);
const PROTOCOL_FEATURES =
  (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
  (1n << BigInt(VhostUserProtocolFeature.CONFIG)) |
  (1n << BigInt(VhostUserProtocolFeature.MQ));

/** Guest RAM: one 1 MiB memfd, shown to the back-end as two regions. */
const RAM = 0x10_0000;
const HALF = RAM / 2;
const REGION1_GPA = 0x10_0000;
const USER0 = 0x7f00_0000_0000;
const USER1 = 0x7e00_0000_0000;
const QSIZE = 16;
const RING_GPA = REGION1_GPA; // rings live in region 1 (mmap offset HALF)

const silent = { warn() {} };

function u64(v: bigint | number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}
function u32s(...vs: number[]): Uint8Array {
  const b = new Uint8Array(4 * vs.length);
  const v = new DataView(b.buffer);
  vs.forEach((x, i) => {
    v.setUint32(4 * i, x, true);
  });
  return b;
}
function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
function encode(request: number, payload: Uint8Array, flags: number = VhostUserFlags.VERSION) {
  return concat(u32s(request, flags, payload.length), payload);
}
/** SET_MEM_TABLE's payload: guest RAM as two regions of the memfd (send its fd twice). */
function memTable() {
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
function vringAddr(index: number, gpaDesc: number, gpaAvail: number, gpaUsed: number) {
  const user = (gpa: number) => USER1 + (gpa - REGION1_GPA);
  return concat(
    u32s(index, 0),
    u64(user(gpaDesc)),
    u64(user(gpaUsed)),
    u64(user(gpaAvail)),
    u64(0),
  );
}

/** A minimal vhost-user front-end over one socket. */
class Frontend {
  replyAck = false;
  constructor(
    readonly n: VhostUserNative,
    readonly fd: number,
  ) {}

  send(request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], flags = 1) {
    const bytes = encode(request, payload, flags);
    expect(this.n.sendmsg(this.fd, bytes, fds)).toBe(bytes.length);
  }

  /** The next reply, or null when the back-end closed the connection. */
  async recv(): Promise<{ request: number; flags: number; payload: Uint8Array } | null> {
    const buf = new Uint8Array(12 + 268);
    let got = 0;
    let need = 12;
    const deadline = Date.now() + 3000;
    while (got < need) {
      const r = this.n.recvmsg(this.fd, buf.subarray(got, need), 0);
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

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 3000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((res) => setImmediate(res));
  }
}

const nativeOk = isNativeAvailable();

describe.runIf(nativeOk)('VhostUserBackend serving a block device', () => {
  const n = nativeOk ? loadNative() : (undefined as unknown as VhostUserNative);
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanups.splice(0).reverse()) c();
  });

  function setup() {
    const disk = new Uint8Array(64 * 1024);
    const device = new BlockDevice({ backend: new MemoryBackend(disk), queueSize: 64 });
    const disconnects: string[] = [];
    const backend = new VhostUserBackend(device, {
      native: n,
      logger: silent,
      onDisconnect: (why) => disconnects.push(why),
    });
    cleanups.push(() => backend.close());
    const memfd = n.memfdCreate('guest-ram', 0);
    n.ftruncate(memfd, RAM);
    cleanups.push(() => n.close(memfd));
    const ram = n.mmap(memfd, RAM, 0, n.constants.PROT_READ | n.constants.PROT_WRITE);
    const guest = new GuestMemory([
      { base: 0, length: HALF, buffer: ram },
      { base: REGION1_GPA, length: HALF, buffer: ram, offset: HALF },
    ]);
    return { disk, device, backend, memfd, guest, disconnects };
  }

  function connect(backend: VhostUserBackend): Frontend {
    const [a, b] = n.socketpair();
    backend.attach(b);
    const fe = new Frontend(n, a);
    cleanups.push(() => {
      try {
        n.close(a);
      } catch {
        // closed by the test
      }
    });
    return fe;
  }

  /** A full session as QEMU runs it, then a write and a read through the ring. */
  async function session(s: ReturnType<typeof setup>, fe: Frontend, sector: number) {
    const features = await fe.negotiate();
    // GET_CONFIG: capacity (u64 at 0) in 512-byte sectors.
    fe.send(R.GET_CONFIG, concat(u32s(0, 8, 0), new Uint8Array(8)));
    const cfg = await fe.recv();
    expect(cfg!.request).toBe(R.GET_CONFIG);
    expect(new DataView(cfg!.payload.buffer).getBigUint64(12, true)).toBe(128n);

    expect(await fe.acked(R.SET_FEATURES, u64((features & VERSION_1) | PROTOCOL_BIT))).toBe(0n);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [s.memfd, s.memfd])).toBe(0n);

    const driver = new SplitDriver(s.guest, { size: QSIZE, base: RING_GPA });
    const { desc, avail, used } = driver.layout;
    const call = n.eventfd(0, n.constants.EFD_NONBLOCK);
    const kick = n.eventfd(0, n.constants.EFD_NONBLOCK);
    cleanups.push(() => {
      n.close(call);
      n.close(kick);
    });
    expect(await fe.acked(R.SET_VRING_NUM, u32s(0, QSIZE))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_BASE, u32s(0, 0))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(0, desc, avail, used))).toBe(0n);
    expect(await fe.acked(R.SET_VRING_CALL, u64(0), [call])).toBe(0n);
    expect(await fe.acked(R.SET_VRING_KICK, u64(0), [kick])).toBe(0n);
    expect(s.device.isActive).toBe(false); // protocol features: the ring starts disabled
    expect(await fe.acked(R.SET_VRING_ENABLE, u32s(0, 1))).toBe(0n);
    expect(s.device.isActive).toBe(true);

    const request = async (
      type: number,
      data: { addr: number; len: number },
      write: boolean,
    ): Promise<number> => {
      s.guest.writeU32(0x1000, type);
      s.guest.writeU32(0x1004, 0);
      s.guest.writeU64(0x1008, sector);
      s.guest.writeU8(0x3000, 0xff);
      const hdr = { addr: 0x1000, len: 16 };
      const status = { addr: 0x3000, len: 1 };
      if (write) driver.add([hdr, data], [status]);
      else driver.add([hdr], [data, status]);
      if (driver.kick()) n.eventfdWrite(kick, 1);
      await until(() => driver.hasUsed(), 'a used buffer');
      expect(driver.popUsed()).toBeGreaterThanOrEqual(0);
      // The back-end signalled the call eventfd.
      expect(Number(n.eventfdRead(call))).toBeGreaterThanOrEqual(1);
      return s.guest.readU8(0x3000);
    };

    const pattern = new Uint8Array(512).map((_, i) => (i * 7 + sector) & 0xff);
    s.guest.write(0x2000, pattern);
    expect(await request(1, { addr: 0x2000, len: 512 }, true)).toBe(0);
    expect(s.disk.subarray(sector * 512, sector * 512 + 512)).toEqual(pattern);

    s.guest.fill(0x4000, 512);
    expect(await request(0, { addr: 0x4000, len: 512 }, false)).toBe(0);
    const back = new Uint8Array(512);
    s.guest.read(0x4000, back);
    expect(back).toEqual(pattern);

    // GET_VRING_BASE stops the ring and reports where the device would read next.
    fe.send(R.GET_VRING_BASE, u32s(0, 0));
    const base = await fe.recv();
    expect(new DataView(base!.payload.buffer).getUint32(4, true)).toBe(2);
    expect(s.device.isActive).toBe(false);
  }

  it('negotiates, maps memory, runs a split ring and signals the call eventfd', async () => {
    const s = setup();
    const fe = connect(s.backend);
    await session(s, fe, 3);
    expect(s.backend.stats.kicks).toBeGreaterThanOrEqual(2);
    expect(s.backend.stats.calls).toBeGreaterThanOrEqual(2);
    n.close(fe.fd);
    await until(() => !s.backend.connected, 'the disconnect');
    expect(s.disconnects).toHaveLength(1);
  });

  it('refuses malformed messages and still serves a clean front-end', async () => {
    const s = setup();
    const fdsBefore = readdirSync('/proc/self/fd').length;
    let fe = connect(s.backend);
    await fe.negotiate();
    const NEED = VhostUserFlags.VERSION | VhostUserFlags.NEED_REPLY;
    // Bad size: SET_VRING_NUM with a 4-byte payload.
    fe.send(R.SET_VRING_NUM, u32s(0), [], NEED);
    expect(new DataView((await fe.recv())!.payload.buffer).getBigUint64(0, true)).not.toBe(0n);
    // Wrong fd count: a call eventfd announced but not attached; two regions with one fd.
    expect(await fe.acked(R.SET_VRING_CALL, u64(0))).not.toBe(0n);
    const extra = n.eventfd(0, 0);
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [extra])).not.toBe(0n);
    n.close(extra);
    // Unknown request.
    expect(await fe.acked(99, new Uint8Array(0))).not.toBe(0n);
    // Ring index out of range.
    expect(await fe.acked(R.SET_VRING_NUM, u32s(7, 16))).not.toBe(0n);
    // Ring size larger than the device allows.
    expect(await fe.acked(R.SET_VRING_NUM, u32s(0, 4096))).not.toBe(0n);
    // A ring address outside the memory table (no table yet, then a table that misses it).
    expect(await fe.acked(R.SET_VRING_ADDR, vringAddr(0, RING_GPA, RING_GPA, RING_GPA))).not.toBe(
      0n,
    );
    expect(await fe.acked(R.SET_MEM_TABLE, memTable(), [s.memfd, s.memfd])).toBe(0n);
    const outside = concat(u32s(0, 0), u64(0x1234), u64(0x1234), u64(0x1234), u64(0));
    expect(await fe.acked(R.SET_VRING_ADDR, outside)).not.toBe(0n);
    // A region the fd cannot back (past the end of the file).
    const tooBig = concat(u32s(1, 0), u64(0), u64(RAM * 2), u64(USER0), u64(0));
    expect(await fe.acked(R.SET_MEM_TABLE, tooBig, [s.memfd])).not.toBe(0n);
    // Still serving this front-end.
    expect(await fe.u64(R.GET_QUEUE_NUM)).toBe(1n);

    // A request that must be answered but cannot be: the connection is closed.
    fe.send(R.GET_VRING_BASE, u32s(9, 0));
    expect(await fe.recv()).toBeNull();
    n.close(fe.fd);
    await until(() => !s.backend.connected, 'the disconnect');

    // A header that breaks the framing (version 2): the connection is closed.
    fe = connect(s.backend);
    fe.send(R.GET_FEATURES, new Uint8Array(0), [], 2);
    expect(await fe.recv()).toBeNull();
    n.close(fe.fd);
    await until(() => !s.backend.connected, 'the disconnect');

    // An oversized payload announcement: the connection is closed too.
    fe = connect(s.backend);
    expect(n.sendmsg(fe.fd, u32s(R.SET_CONFIG, 1, 100_000), [])).toBe(12);
    expect(await fe.recv()).toBeNull();
    n.close(fe.fd);
    await until(() => !s.backend.connected, 'the disconnect');

    // Every fd the rejected messages carried was closed.
    expect(readdirSync('/proc/self/fd').length).toBe(fdsBefore);

    // And a clean front-end gets full service.
    fe = connect(s.backend);
    await session(s, fe, 5);
    n.close(fe.fd);
    await until(() => !s.backend.connected, 'the disconnect');
  });

  it('listens on a socket path and serves front-ends one after the other', async () => {
    const s = setup();
    const path = join(tmpdir(), `virtq-vu-${process.pid}-${Date.now()}.sock`);
    s.backend.listen(path);
    for (const sector of [1, 2]) {
      let fd = -1;
      await until(() => {
        try {
          fd = n.connect(path);
          return true;
        } catch {
          return false;
        }
      }, 'connect');
      const fe = new Frontend(n, fd);
      await until(() => s.backend.connected, 'accept');
      await session(s, fe, sector);
      n.close(fd);
      await until(() => !s.backend.connected, 'the disconnect');
    }
    expect(s.backend.stats.connections).toBe(2);
  });
});
