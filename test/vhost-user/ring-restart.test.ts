/**
 * A receive ring stopped and started again by the front-end while the device stays active
 * (SET_VRING_ENABLE 0 then 1; a new kick fd, new addresses or a new memory table restart a
 * ring the same way), with the network device holding receive buffers it popped for a frame
 * that did not fit yet. Every buffer must be used exactly once and the device must not fail:
 * - a packed ring starts again at its used position (`Rings.placePacked`), so the held
 *   buffers are read from the ring again and the device must forget its own
 *   (`VirtioDevice.queueStopped`);
 * - a split ring starts again at its available position, which counts the held buffers as
 *   taken, so the device gives them back (used, length 0) before the ring stops
 *   (`VirtioDevice.giveBackHeld`).
 * The back-end's ring bookkeeping (`Rings`) and its in-process plane are the real ones; the
 * native layer is a stub, since no eventfd is needed here (the test notifies the device).
 */
import { describe, expect, it } from 'vitest';
import { featureBit } from '../../src/devices/device.js';
import { NetDevice, VIRTIO_NET_F_MRG_RXBUF } from '../../src/devices/net/index.js';
import { PackedDriver } from '../../src/driver/packed.js';
import { SplitDriver } from '../../src/driver/split.js';
import { GuestMemory } from '../../src/memory/index.js';
import { VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1 } from '../../src/queue/constants.js';
import { HandBackend, udpFrame } from '../devices/net-mq-rig.js';
import { inProcessRings } from './rings-rig.js';

const _silent = { warn() {} };
const SIZE = 16;
/** SET_VRING_BASE of a fresh ring: split index 0, or packed slot 0 with both wrap bits set. */
const FRESH_BASE = { split: 0, packed: 0x80008000 };

function rig(format: 'split' | 'packed') {
  const memory = GuestMemory.create(1 << 20, { shared: true });
  const hand = new HandBackend();
  const device = new NetDevice({ backend: hand, queueSize: SIZE });
  let features = featureBit(VIRTIO_F_VERSION_1) | featureBit(VIRTIO_NET_F_MRG_RXBUF);
  if (format === 'packed') features |= featureBit(VIRTIO_F_RING_PACKED);
  const rings = inProcessRings(
    device,
    () => features,
    () => ({ memory, userToGuest: (u: number) => u }),
  );
  const driver =
    format === 'packed'
      ? new PackedDriver(memory, { size: SIZE, base: 0x80000 })
      : new SplitDriver(memory, { size: SIZE, base: 0x80000 });
  const layout = driver.layout as { desc: number; avail?: number; used?: number };
  const packed = driver.layout as { desc: number; driver?: number; device?: number };
  const enable = (on: boolean) =>
    rings.setEnable({ kind: 'SET_VRING_ENABLE', state: { index: 0, num: on ? 1 : 0 } } as never);
  rings.setNum({ kind: 'SET_VRING_NUM', state: { index: 0, num: SIZE } } as never);
  rings.setBase({ kind: 'SET_VRING_BASE', state: { index: 0, num: FRESH_BASE[format] } } as never);
  rings.setAddr({
    kind: 'SET_VRING_ADDR',
    addr: {
      index: 0,
      flags: 0,
      descUserAddr: layout.desc,
      availUserAddr: layout.avail ?? packed.driver,
      usedUserAddr: layout.used ?? packed.device,
      logGuestAddr: 0,
    },
  } as never);
  rings.setKick({ kind: 'SET_VRING_KICK', file: { index: 0, fd: null } } as never);
  enable(true);
  let addr = 0x10000;
  /** `n` receive buffers of 128 bytes, made available. */
  const post = (n: number) => {
    for (let i = 0; i < n; i++) {
      driver.add([], [{ addr, len: 128 }]);
      addr += 0x100;
    }
    driver.publish();
  };
  const lens: number[] = [];
  const used = () => {
    const ids: number[] = [];
    while (driver.hasUsed()) {
      ids.push(driver.popUsed());
      lens.push(driver.lastUsedLen);
    }
    return ids;
  };
  return { device, hand, enable, post, used, lens };
}

describe('vhost-user: a receive ring restarted while the device holds its buffers', () => {
  for (const format of ['split', 'packed'] as const) {
    it(`${format}: every buffer is used once, and the device does not fail`, () => {
      const { device, hand, enable, post, used, lens } = rig(format);
      expect(device.isActive).toBe(true);
      // Two small buffers and a frame that needs eight: the device holds the two and waits.
      post(2);
      device.queueNotify(0);
      hand.push(udpFrame(1, 1, 1000));
      expect(device.heldRxChains).toBe(2);
      enable(false);
      enable(true);
      // Enough buffers for the waiting frame and one more.
      post(14);
      device.queueNotify(0);
      hand.push(udpFrame(1, 2, 1000));
      const ids = used();
      expect({ needsReset: device.needsReset, error: String(device.lastError ?? '') }).toEqual({
        needsReset: false,
        error: '',
      });
      expect(new Set(ids).size).toBe(ids.length);
      if (format === 'packed') {
        // The ring resumes at its used position and the two are read again: both frames went
        // out (eight 128-byte buffers each, the 12-byte header included).
        expect(ids.length).toBe(16);
      } else {
        // The split ring resumes at its available position, which counted the two as taken:
        // they came back unused at the stop (length 0). The waiting frame took eight of the
        // fourteen; the next one waits for two more, holding six.
        expect(ids.length).toBe(10);
        expect(lens.slice(0, 2)).toEqual([0, 0]);
        expect(device.heldRxChains).toBe(6);
      }
    });
  }
});
