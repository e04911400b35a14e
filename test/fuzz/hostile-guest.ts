/**
 * The hostile guest of the device-level fuzzer (device-fuzz.test.ts): it writes adversarial
 * rings: buffers over rings, indirect tables and request headers (so that the device's own
 * writes feed it), aliased giant buffers, giant indirect tables, random flags and indices; and
 * it floods, making a costly valid chain available again and again.
 */
import type { GuestMemory } from '../../src/memory/index.js';
import {
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
} from '../../src/queue/index.js';
import {
  DATA,
  type DeviceKind,
  HEADERS,
  type Rand,
  REGION_A,
  REGION_B,
  type RingFormat,
  type RingSpec,
  TABLES,
} from './layout.js';

const BLOCK_TYPES = [0, 1, 4, 8, 11, 13, 0xffffffff, 2];

/**
 * A guest that writes whatever it likes into its rings and memory. Each `round` writes a few
 * chains (plausible or random, direct or through indirect tables, buffers placed over rings,
 * tables, headers, the device's own writes, or aliased and giant) and makes them available;
 * `feed` makes more buffers available, as a guest on another vCPU that never stops.
 */
export class HostileGuest {
  /** Split: the avail idx this guest wrote last, per queue. Packed: next slot and wrap. */
  private readonly availIdx: number[];
  private readonly slot: number[];
  private readonly wrap: boolean[];

  constructor(
    readonly memory: GuestMemory,
    readonly rings: readonly RingSpec[],
    readonly rand: Rand,
    readonly kind: DeviceKind,
    readonly indirect: boolean,
  ) {
    this.availIdx = rings.map(() => 0);
    this.slot = rings.map(() => 0);
    this.wrap = rings.map(() => true);
  }

  private w16(a: number, v: number): void {
    if (this.memory.isValidRange(a, 2)) this.memory.writeU16(a, v & 0xffff);
  }
  private w32(a: number, v: number): void {
    if (this.memory.isValidRange(a, 4)) this.memory.writeU32(a, v >>> 0);
  }

  /** An address inside guest memory that a hostile guest would aim a buffer at. */
  private target(): number {
    const r = this.rand;
    const ring = r.pick(this.rings);
    switch (r.int(11)) {
      case 0:
        return ring.desc + r.int(16 * ring.size);
      case 1:
        // The avail idx (split) or the driver event area (packed), and around it.
        return ring.driver + r.int(8);
      case 2:
        return ring.device + r.int(8 + 8 * ring.size);
      case 3:
        return TABLES.from + 16 * r.int((TABLES.to - TABLES.from) / 16);
      case 4:
      case 5:
        return HEADERS.from + r.int(HEADERS.to - HEADERS.from);
      case 6:
      case 7:
        return DATA.from + r.int(DATA.to - DATA.from);
      case 8:
        return REGION_B.base + r.int(REGION_B.length);
      case 9:
        return 0;
      default:
        return r.int(REGION_A.length);
    }
  }

  /**
   * A buffer: mostly inside guest memory (small, page-sized, or giant up to the end of its
   * region, so that many of them alias), sometimes straddling a region's end, outside memory
   * or of an absurd length.
   */
  buffer(): [number, number] {
    const r = this.rand;
    if (r.chance(0.08)) {
      switch (r.int(3)) {
        case 0:
          return r.chance(0.5)
            ? [REGION_A.length - r.int(64), 64 + r.int(4096)]
            : [REGION_B.base + REGION_B.length - r.int(64), 64 + r.int(4096)];
        case 1:
          return [r.u32(), 1 + r.int(4096)];
        default:
          return [this.target(), r.chance(0.5) ? 0xffffffff : r.u32()];
      }
    }
    const addr = this.target();
    const end = addr >= REGION_B.base ? REGION_B.base + REGION_B.length : REGION_A.length;
    const room = end - addr;
    let len: number;
    switch (r.int(7)) {
      case 0:
        len = 0;
        break;
      case 1:
      case 2:
        len = 1 + r.int(16);
        break;
      case 3:
        len = 1 + r.int(512);
        break;
      case 4:
        len = 1 + r.int(4096);
        break;
      case 5:
        len = 1 + r.int(65536);
        break;
      default:
        len = room; // giant: to the end of the region
    }
    return [addr, Math.min(len, room)];
  }

  /** Writes a plausible request header for the device at `at` (readable part of a request). */
  private header(at: number): void {
    const r = this.rand;
    switch (this.kind) {
      case 'block':
        this.w32(at, r.pick(BLOCK_TYPES));
        this.w32(at + 4, 0);
        this.w32(at + 8, r.chance(0.8) ? r.int(128) : r.pick([127, 128, r.int(256), r.u32()]));
        this.w32(at + 12, r.chance(0.9) ? 0 : r.u32());
        break;
      case 'net':
        // virtio-net header: flags, gso type, hdr_len, gso_size, csum_start, csum_offset, num_buffers.
        this.memory.isValidRange(at, 12) &&
          this.memory.write(
            at,
            new Uint8Array([
              r.int(4),
              r.pick([0, 1, 3, 4, 0x80, 0x81, r.int(256)]),
              r.int(256),
              0,
              r.pick([0, 1, 2, 536, 1448, r.int(65536)]) & 0xff,
              r.int(256),
              r.int(256),
              0,
              r.int(256),
              0,
              1,
              0,
            ]),
          );
        break;
      default:
        this.w32(at, r.u32());
    }
  }

  /** A plausible chain for the device: [addr, len, writable][] (readable first). */
  private plausible(queue: number): [number, number, boolean][] {
    const r = this.rand;
    const h = HEADERS.from + 16 * r.int((HEADERS.to - HEADERS.from) / 16 - 4);
    this.header(h);
    const buf = (): [number, number] => this.buffer();
    switch (this.kind) {
      case 'rng':
        return [[...buf(), true]];
      case 'block': {
        const parts: [number, number, boolean][] = [[h, 16, false]];
        const n = r.int(4);
        const write = this.memory.readU32(h) === 0 || r.chance(0.3); // IN: device-writable data
        for (let i = 0; i < n; i++) {
          const [addr, len] = buf();
          // Mostly whole sectors, as a request with data must have (else IOERR).
          parts.push([addr, r.chance(0.8) ? len - (len % 512) : len, write]);
        }
        parts.push([this.target(), 1, true]);
        return parts;
      }
      case 'console':
        return queue === 0 ? [[...buf(), true]] : [[...buf(), false]];
      case 'net':
        return queue === 0
          ? [[h, 12 + r.int(2000), true]]
          : [
              [h, 12, false],
              [...buf(), false],
            ];
    }
  }

  /** A random chain: any buffers, any direction, any order. */
  private random(): [number, number, boolean][] {
    const n = 1 + this.rand.int(6);
    const parts: [number, number, boolean][] = [];
    for (let i = 0; i < n; i++) parts.push([...this.buffer(), this.rand.chance(0.5)]);
    return parts;
  }

  /** Writes a descriptor table entry in the layout of `format`. */
  private desc(
    format: RingFormat,
    at: number,
    addr: number,
    len: number,
    flags: number,
    nextOrId: number,
    exact = false,
  ): void {
    if (!this.memory.isValidRange(at, 16)) return;
    this.memory.writeU32(at, addr >>> 0);
    // Now and then, an address above 4 GiB.
    this.memory.writeU32(at + 4, !exact && this.rand.chance(0.02) ? this.rand.u32() : 0);
    this.memory.writeU32(at + 8, len >>> 0);
    if (format === 'split') {
      this.memory.writeU16(at + 12, flags);
      this.memory.writeU16(at + 14, nextOrId);
    } else {
      this.memory.writeU16(at + 12, nextOrId);
      this.memory.writeU16(at + 14, flags);
    }
  }

  /**
   * Writes an indirect table of `parts` (or, aliased, `count` copies of one buffer) and returns
   * [address, length in bytes].
   */
  private table(format: RingFormat, parts: [number, number, boolean][]): [number, number] {
    const r = this.rand;
    let entries = parts;
    if (r.chance(0.3)) {
      // Giant and aliased: many entries, all over one (large) buffer.
      const count = r.pick([64, 256, 1024, 4096]);
      const at = r.pick([REGION_A.base, DATA.from, r.pick(this.rings).desc, HEADERS.from]);
      const len = r.chance(0.7) ? REGION_A.length - at : r.pick([4096, 65536]);
      const one: [number, number, boolean] = [at, len, r.chance(0.7)];
      entries = Array.from({ length: count }, () => one);
    }
    const max = (TABLES.to - TABLES.from) / 16;
    const at = r.chance(0.85)
      ? TABLES.from + 16 * r.int(Math.max(1, max - entries.length))
      : this.target() & ~15;
    entries.forEach(([addr, len, writable], i) => {
      const last = i === entries.length - 1;
      let flags = writable ? VIRTQ_DESC_F_WRITE : 0;
      if (format === 'split' && !last) flags |= VIRTQ_DESC_F_NEXT;
      if (r.chance(0.01)) flags = r.int(0x10000);
      const next = r.chance(0.02) ? r.int(entries.length + 4) : i + 1;
      this.desc(format, at + 16 * i, addr, len, flags, format === 'split' ? (last ? 0 : next) : 0);
    });
    let bytes = 16 * entries.length;
    if (r.chance(0.05)) bytes = r.pick([0, 8, bytes + 8, r.u32()]);
    return [at, bytes];
  }

  /**
   * Starts over on fresh rings, as a driver does after resetting the device: the rings are
   * zeroed and the guest's indices start from 0.
   */
  restart(): void {
    for (const ring of this.rings) {
      this.memory.fill(ring.desc, 16 * ring.size, 0);
      this.memory.fill(ring.driver, 4 + 2 * ring.size + 2, 0);
      this.memory.fill(ring.device, 4 + 8 * ring.size + 2, 0);
    }
    this.availIdx.fill(0);
    this.slot.fill(0);
    this.wrap.fill(true);
  }

  /** One round: a few chains written and made available on random queues. */
  round(): void {
    const r = this.rand;
    const chains = 1 + r.int(8);
    for (let c = 0; c < chains; c++) {
      const q = r.int(this.rings.length);
      const parts = r.chance(0.7) ? this.plausible(q) : this.random();
      if (this.rings[q]!.format === 'split') this.splitChain(q, parts);
      else this.packedChain(q, parts);
    }
    // Scribbles: any word of a ring.
    if (r.chance(0.2)) {
      const ring = r.pick(this.rings);
      const at = r.pick([ring.desc, ring.driver, ring.device]) + 2 * r.int(8);
      this.w16(at, r.chance(0.5) ? r.int(0x10000) : 0);
    }
  }

  private splitChain(q: number, parts: [number, number, boolean][]): void {
    const r = this.rand;
    const ring = this.rings[q]!;
    const n = ring.size;
    const head = r.int(n);
    if (this.indirect && r.chance(0.5)) {
      const [at, bytes] = this.table('split', parts);
      this.desc(
        'split',
        ring.desc + 16 * head,
        at,
        bytes,
        VIRTQ_DESC_F_INDIRECT | (r.chance(0.03) ? VIRTQ_DESC_F_NEXT : 0),
        r.int(n),
      );
    } else {
      let d = head;
      parts.forEach(([addr, len, writable], i) => {
        const last = i === parts.length - 1;
        const next = r.chance(0.05) ? r.int(n + 2) : (d + 1 + r.int(3)) % n;
        let flags = (writable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT);
        if (r.chance(0.02)) flags |= VIRTQ_DESC_F_INDIRECT;
        this.desc('split', ring.desc + 16 * d, addr, len, flags, last ? r.int(n) : next);
        d = next % n;
      });
    }
    // Publish: the head in the next avail slot, then the index (sometimes a wild one).
    const idx = this.availIdx[q]!;
    this.w16(ring.driver + 4 + 2 * (idx % n), r.chance(0.03) ? r.int(0x10000) : head);
    const step = r.chance(0.03) ? r.int(0x10000) : 1;
    this.availIdx[q] = (idx + step) & 0xffff;
    this.w16(ring.driver + 2, this.availIdx[q]!);
  }

  private availFlags(q: number): number {
    const w = this.wrap[q]!;
    return (w ? VIRTQ_DESC_F_AVAIL : 0) | (w ? 0 : VIRTQ_DESC_F_USED);
  }

  private packedChain(q: number, parts: [number, number, boolean][]): void {
    const r = this.rand;
    const ring = this.rings[q]!;
    const n = ring.size;
    const id = r.chance(0.05) ? r.int(0x10000) : r.int(n);
    const list: [number, number, number][] = [];
    if (this.indirect && r.chance(0.5)) {
      const [at, bytes] = this.table('packed', parts);
      list.push([at, bytes, VIRTQ_DESC_F_INDIRECT | (r.chance(0.03) ? VIRTQ_DESC_F_WRITE : 0)]);
    } else {
      parts.forEach(([addr, len, writable], i) => {
        const last = i === parts.length - 1;
        list.push([
          addr,
          len,
          (writable ? VIRTQ_DESC_F_WRITE : 0) | (last ? 0 : VIRTQ_DESC_F_NEXT),
        ]);
      });
    }
    // The head's flags are written last, as a driver publishes a chain.
    const first = this.slot[q]!;
    const firstWrap = this.wrap[q]!;
    const flagsAt: number[] = [];
    list.forEach(([addr, len, f]) => {
      const s = this.slot[q]!;
      let flags = f | this.availFlags(q);
      if (r.chance(0.02)) flags = r.int(0x10000);
      flagsAt.push(flags);
      this.desc('packed', ring.desc + 16 * s, addr, len, s === first ? 0 : flags, id);
      if (s === first) this.memory.writeU16(ring.desc + 16 * s + 12, id);
      this.slot[q] = s + 1;
      if (this.slot[q] === n) {
        this.slot[q] = 0;
        this.wrap[q] = !this.wrap[q];
      }
    });
    void firstWrap;
    this.w16(ring.desc + 16 * first + 14, flagsAt[0]!);
  }

  /** Per queue, the chain a flooding guest makes available again and again (see {@link flood}). */
  private floodChain: [number, number, number][][] = [];
  /** Packed flood, per queue: descriptors published, and reclaimed after the device used them. */
  private published: number[] = [];
  private reclaimed: number[] = [];

  /**
   * Prepares a flood: starts over on fresh rings with one valid chain per queue, aimed at
   * what costs the device most (giant aliased buffers, the whole disk, full frames), which
   * {@link feed} then makes available again and again: split, every avail entry names it;
   * packed, it is written into the next slots each time.
   */
  flood(): void {
    this.restart();
    this.published = this.rings.map(() => 0);
    this.reclaimed = this.rings.map(() => 0);
    const r = this.rand;
    this.floodChain = this.rings.map((ring, q) => {
      const h = HEADERS.from + 64 * q;
      let parts: [number, number, boolean][];
      switch (this.kind) {
        case 'rng':
          parts = [[DATA.from, REGION_A.length - DATA.from, true]];
          break;
        case 'block':
          this.w32(h, r.chance(0.5) ? 0 : 1);
          this.w32(h + 4, 0);
          this.w32(h + 8, 0);
          this.w32(h + 12, 0);
          parts = [
            [h, 16, false],
            [DATA.from, 0x4_0000, this.memory.readU32(h) === 0],
            [HEADERS.from + 0x1000 + q, 1, true],
          ];
          break;
        case 'console':
          parts = [[DATA.from, REGION_A.length - DATA.from, q === 0]];
          break;
        case 'net':
          this.memory.fill(h, 12, 0);
          parts =
            q === 0
              ? [[DATA.from, 0x1_0000, true]]
              : [
                  [h, 12, false],
                  [DATA.from, 1514, false],
                ];
          break;
      }
      if (this.indirect) {
        const at = TABLES.from + 0x1000 * q;
        parts.forEach(([addr, len, writable], i) => {
          const last = i === parts.length - 1;
          const flags =
            (writable ? VIRTQ_DESC_F_WRITE : 0) |
            (ring.format === 'split' && !last ? VIRTQ_DESC_F_NEXT : 0);
          this.desc(
            ring.format,
            at + 16 * i,
            addr,
            len,
            flags,
            ring.format === 'split' && !last ? i + 1 : 0,
            true,
          );
        });
        return [[at, 16 * parts.length, VIRTQ_DESC_F_INDIRECT]];
      }
      return parts.map(([addr, len, writable], i) => [
        addr,
        len,
        (writable ? VIRTQ_DESC_F_WRITE : 0) | (i < parts.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
      ]);
    });
    this.rings.forEach((ring, q) => {
      if (ring.format !== 'split') return;
      this.floodChain[q]!.forEach(([addr, len, flags], i) => {
        this.desc('split', ring.desc + 16 * i, addr, len, flags, i + 1, true);
      });
    });
  }

  /** Makes the flood chain available again on a random queue, up to a ring's worth of times. */
  feed(): void {
    const r = this.rand;
    const q = r.int(this.rings.length);
    const ring = this.rings[q]!;
    const chain = this.floodChain[q];
    if (chain === undefined) return;
    const times = 1 + r.int(ring.size);
    if (ring.format === 'split') {
      for (let i = 0; i < times; i++) {
        const idx = this.availIdx[q]!;
        this.w16(ring.driver + 4 + 2 * (idx % ring.size), 0);
        this.availIdx[q] = (idx + 1) & 0xffff;
      }
      this.w16(ring.driver + 2, this.availIdx[q]!);
      return;
    }
    // Packed: the chain in the next slots, as long as the ring has room: a slot is free again
    // once the device wrote a used descriptor for the chain that began there (a driver that
    // laps the device would only make its buffers look unavailable).
    const k = chain.length;
    const at = (p: number) => ring.desc + 16 * (p % ring.size);
    const wrapOf = (p: number) => Math.floor(p / ring.size) % 2 === 0;
    while (this.reclaimed[q]! < this.published[q]!) {
      const p = this.reclaimed[q]!;
      const flags = this.memory.readU16(at(p) + 14) & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED);
      if (flags !== (wrapOf(p) ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0)) break;
      this.reclaimed[q] = p + k;
    }
    for (let i = 0; i < times && this.published[q]! + k - this.reclaimed[q]! <= ring.size; i++) {
      const first = this.published[q]!;
      let headFlags = 0;
      chain.forEach(([addr, len, flags], j) => {
        const p = first + j;
        const f = flags | (wrapOf(p) ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED);
        if (j === 0) headFlags = f;
        this.desc('packed', at(p), addr, len, j === 0 ? 0 : f, first & 0x7fff, true);
      });
      this.w16(at(first) + 14, headFlags);
      this.published[q] = first + k;
    }
  }
}
