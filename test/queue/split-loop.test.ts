import { describe, expect, it } from 'vitest';
import { SplitDriver } from '../../src/driver/index.js';
import { GuestMemory } from '../../src/memory/index.js';
import { DescriptorChain, SplitQueue } from '../../src/queue/index.js';

describe('split queue: driver and device exchange chains', () => {
  it('returns every chain once with the device-written length', () => {
    const mem = GuestMemory.create(1 << 20);
    const driver = new SplitDriver(mem, { size: 64, base: 0, eventIdx: true });
    const q = new SplitQueue(64);
    q.ready = true;
    q.size = 64;
    q.descTableAddress = driver.layout.desc;
    q.availRingAddress = driver.layout.avail;
    q.usedRingAddress = driver.layout.used;
    q.enableNotifSuppression();
    q.initialize(mem);
    const chain = new DescriptorChain();
    let returned = 0;
    for (let round = 0; round < 100; round++) {
      const heads: number[] = [];
      for (let k = 0; k < 8; k++) {
        const base = 0x10000 + 0x1000 * ((round * 8 + k) % 32);
        heads.push(driver.add([{ addr: base, len: 16 }], [{ addr: base + 0x800, len: 64 }]));
      }
      driver.kick();
      for (;;) {
        const c = q.pop(chain);
        if (c === null) break;
        expect(c.count).toBe(2);
        expect(c.readableLength).toBe(16);
        expect(c.writableLength).toBe(64);
        expect(c.writableStart).toBe(1);
        c.slice(1).fill(round & 0xff);
        q.addUsed(c.head, 64);
      }
      q.advanceUsedRingIdx();
      for (;;) {
        const id = driver.popUsed();
        if (id < 0) break;
        expect(heads).toContain(id);
        expect(driver.lastUsedLen).toBe(64);
        returned++;
      }
    }
    expect(returned).toBe(800);
    expect(driver.numFree).toBe(64);
  });
});
