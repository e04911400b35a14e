/**
 * The guest drivers (src/driver) keep the driver's side of the spec, and a hostile device
 * cannot hang them: an indirect table no longer than the queue size (§2.7.5.3.1), no frame
 * above the negotiated MTU (§5.1.4.1), a bounded retry of a configuration read whose
 * generation never settles (§2.5.1), only the defined InterruptStatus bits acknowledged
 * (§4.2.2.2), avail flags left 0 under EVENT_IDX (§2.7.7.1), a chain freed even when the
 * device reports too many bytes for it, and VIRTIO_F_VERSION_1 accepted when offered (§6.1).
 * Each failed before the fixes that came with it.
 */
import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { NetDevice } from '../../src/devices/net/index.js';
import { SinkBackend } from '../../src/devices/net/lab-backends.js';
import { VIRTIO_NET_F_MTU } from '../../src/devices/net/request.js';
import {
  DeviceBehaviourError,
  GuestAllocator,
  type MmioBus,
  MmioGuestDriver,
  NetGuestDriver,
  PackedDriver,
  SplitDriver,
} from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { silentLogger, VIRTIO_F_VERSION_1 } from '../../src/queue/index.js';
import { MmioTransport } from '../../src/transport/mmio.js';
import { MMIO } from '../../src/transport/mmio-registers.js';

describe('SplitDriver indirect tables', () => {
  it('refuses an indirect chain longer than the queue size (§2.7.5.3.1 MUST NOT), like PackedDriver', () => {
    const mem = GuestMemory.create(1 << 16);
    const packed = new PackedDriver(mem, { size: 4, base: 0x8000 });
    const five = [0, 1, 2, 3, 4].map((k) => ({ addr: 0x4000 + 64 * k, len: 64 }));
    expect(() => packed.addIndirect(0x2000, five)).toThrow(RangeError); // packed: refused
    const split = new SplitDriver(mem, { size: 4, base: 0 });
    // split: "A driver MUST NOT create a descriptor chain longer than the Queue Size"
    expect(() => split.addIndirect(0x1000, five)).toThrow(RangeError);
  });
});

describe('NetGuestDriver with VIRTIO_NET_F_MTU', () => {
  it('does not transmit a frame larger than mtu + ethernet header (§5.1.4.1 MUST NOT)', () => {
    const memory = GuestMemory.create(4 << 20);
    const sink = new SinkBackend();
    const device = new NetDevice({ queueSize: 64, backend: sink, mtu: 576 });
    const transport = new MmioTransport(device, memory, { logger: silentLogger });
    const guest = new NetGuestDriver(
      transport,
      memory,
      new GuestAllocator(memory, 0x1000, memory.size),
    );
    const f = guest.init(featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MTU));
    expect(f & featureBit(VIRTIO_NET_F_MTU)).not.toBe(0n);
    expect(guest.mtu).toBe(576);
    const frame = new Uint8Array(1514); // 1500-byte payload, far over mtu 576 + 14
    let threw = false;
    try {
      guest.trySend(frame);
    } catch {
      threw = true;
    }
    // the driver must refuse; instead the device got the oversized frame
    expect({ threw, framesAtDevice: sink.frames }).toEqual({ threw: true, framesAtDevice: 0 });
  });
});

describe('MmioGuestDriver.readConfigU64 against a hostile device', () => {
  it('does not spin forever when config_generation changes on every read', () => {
    let reads = 0;
    let gen = 0;
    const bus: MmioBus = {
      read(offset) {
        if (++reads > 200_000) throw new Error('SENTINEL: still looping after 200000 reads');
        if (offset === MMIO.CONFIG_GENERATION) return gen++;
        return 0;
      },
      write() {},
    };
    const memory = GuestMemory.create(1 << 16);
    const drv = new MmioGuestDriver(bus, memory, new GuestAllocator(memory, 0x1000, memory.size));
    expect(() => drv.readConfigU64(0)).toThrow(DeviceBehaviourError);
    expect(reads).toBeLessThan(10_000);
  });
});

describe('MmioGuestDriver.ackInterrupt against a buggy device', () => {
  it('never writes undefined InterruptStatus bits back to InterruptACK (§4.2.2.2 MUST NOT)', () => {
    const acks: number[] = [];
    const bus: MmioBus = {
      read(offset) {
        if (offset === MMIO.INTERRUPT_STATUS) return 0x8000_0001; // bit 0 used buffer + junk bit 31
        return 0;
      },
      write(offset, _size, value) {
        if (offset === MMIO.INTERRUPT_ACK) acks.push(value);
      },
    };
    const memory = GuestMemory.create(1 << 16);
    const drv = new MmioGuestDriver(bus, memory, new GuestAllocator(memory, 0x1000, memory.size));
    drv.ackInterrupt();
    // Only bits 0 (used buffer) and 1 (configuration change) are defined.
    expect(acks.map((v) => (v >>> 0).toString(16))).toEqual(['1']);
  });
});

describe('SplitDriver.setInterrupts with VIRTIO_F_EVENT_IDX', () => {
  it('keeps the avail flags 0 (§2.7.7.1) and moves used_event instead', () => {
    const memory = GuestMemory.create(1 << 16);
    const d = new SplitDriver(memory, { size: 8, base: 0x1000, eventIdx: true });
    const { avail } = d.layout as { avail: number };
    const usedEvent = avail + 4 + 2 * 8;
    d.setInterrupts(false);
    expect(memory.readU16(avail)).toBe(0);
    expect(memory.readU16(usedEvent)).toBe(0x8000);
    d.setInterrupts(true);
    expect(memory.readU16(avail)).toBe(0);
    expect(memory.readU16(usedEvent)).toBe(0);
    // Without EVENT_IDX the flag does it.
    const plain = new SplitDriver(memory, { size: 8, base: 0x4000 });
    plain.setInterrupts(false);
    expect(memory.readU16((plain.layout as { avail: number }).avail)).toBe(1);
  });
});

describe('SplitDriver against a device that claims too many bytes written', () => {
  it('reports it and still frees the chain, so the ring goes on', () => {
    const memory = GuestMemory.create(1 << 16);
    const d = new SplitDriver(memory, { size: 4, base: 0x1000 });
    const { used } = d.layout as { used: number };
    const id = d.add([], [{ addr: 0x8000, len: 16 }]);
    d.publish();
    // The device uses the chain with a length above its 16 writable bytes.
    memory.writeU32(used + 4, id);
    memory.writeU32(used + 8, 17);
    memory.writeU16(used + 2, 1);
    expect(() => d.popUsed()).toThrow(DeviceBehaviourError);
    expect(d.numFree).toBe(4);
    expect(d.popUsed()).toBe(-1);
  });
});

describe('device drivers accept VIRTIO_F_VERSION_1 (§6.1)', () => {
  it('NetGuestDriver negotiates it even when `wanted` leaves it out', () => {
    const memory = GuestMemory.create(4 << 20);
    const device = new NetDevice({ queueSize: 64, backend: new SinkBackend() });
    const transport = new MmioTransport(device, memory, { logger: silentLogger });
    const guest = new NetGuestDriver(
      transport,
      memory,
      new GuestAllocator(memory, 0x1000, memory.size),
    );
    expect(guest.init(0n) & featureBit(VIRTIO_F_VERSION_1)).not.toBe(0n);
    expect(device.isActive).toBe(true);
  });
});
