/**
 * A ring configured (SET_VRING_ADDR, SET_VRING_KICK) but not running (not yet enabled) when the
 * memory table changes starts over the guest addresses its front-end addresses have in the new
 * table. Before, only running rings were translated again, and this one started over the old
 * table's guest addresses. The real `Rings` and in-process plane; the native layer a stub.
 */
import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { RngDevice } from '../../src/devices/rng/device.js';
import { SplitDriver } from '../../src/driver/split.js';
import { GuestMemory } from '../../src/memory/index.js';
import { VIRTIO_F_VERSION_1 } from '../../src/queue/constants.js';
import { inProcessRings } from './rings-rig.js';

const SIZE = 16;
const USER = 0x7f00_0000_0000;

describe('vhost-user: memory table replaced while a ring waits to be enabled', () => {
  it('the ring starts over the addresses its user addresses have in the new table', () => {
    const memory = GuestMemory.create(1 << 20, { shared: true });
    const device = new RngDevice({ queueSize: SIZE });
    const features = featureBit(VIRTIO_F_VERSION_1);
    // Table 1 shows user USER at guest 0x40000; table 2 shows it at guest 0x80000.
    const table1 = { memory, userToGuest: (u: number) => u - USER + 0x40000 };
    const table2 = { memory, userToGuest: (u: number) => u - USER + 0x80000 };
    let table = table1;
    const rings = inProcessRings(
      device,
      () => features,
      () => table,
    );
    // The driver's ring lives at guest 0x80000, i.e. at user USER in table 2.
    const driver = new SplitDriver(memory, { size: SIZE, base: 0x80000 });
    const l = driver.layout as { desc: number; avail: number; used: number };
    const user = (gpa: number) => gpa - 0x80000 + USER;
    rings.setNum({ kind: 'SET_VRING_NUM', state: { index: 0, num: SIZE } } as never);
    rings.setBase({ kind: 'SET_VRING_BASE', state: { index: 0, num: 0 } } as never);
    rings.setAddr({
      kind: 'SET_VRING_ADDR',
      addr: {
        index: 0,
        flags: 0,
        descUserAddr: user(l.desc),
        availUserAddr: user(l.avail),
        usedUserAddr: user(l.used),
        logGuestAddr: 0,
      },
    } as never);
    rings.setKick({ kind: 'SET_VRING_KICK', file: { index: 0, fd: null } } as never);
    expect(rings.all[0]!.running).toBe(false); // started, not enabled yet
    // SET_MEM_TABLE: the user addresses now map elsewhere.
    table = table2;
    rings.tableChanged();
    rings.setEnable({ kind: 'SET_VRING_ENABLE', state: { index: 0, num: 1 } } as never);
    expect(rings.all[0]!.running).toBe(true);
    expect({
      desc: rings.all[0]!.desc,
      avail: rings.all[0]!.avail,
      used: rings.all[0]!.used,
    }).toEqual({
      desc: l.desc,
      avail: l.avail,
      used: l.used,
    });
    // And the device serves the driver's request.
    driver.add([], [{ addr: 0x10000, len: 64 }]);
    driver.publish();
    device.queueNotify(0);
    expect(driver.hasUsed()).toBe(true);
  });
});
