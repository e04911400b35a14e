import type { DriverQueue } from '../../src/driver/queue.js';
import type { GuestMemory } from '../../src/memory/index.js';
import { CLEAN, type DeviceKind } from './layout.js';
import type { MadeDevice } from './meter.js';

/**
 * One well-formed request to a device of `kind` on its clean queues (`queues[i]` is queue i,
 * set up by a clean driver), published and then notified with `kick(i)`; resolves when it completed and was
 * checked, rejects otherwise. `buffers` is where its buffers go.
 */
export async function cleanRequest(
  kind: DeviceKind,
  made: MadeDevice,
  memory: GuestMemory,
  queues: readonly DriverQueue[],
  kick: (index: number) => void,
  settle: (done: () => boolean) => Promise<void>,
): Promise<void> {
  const at = CLEAN.from;
  const one = async (q: number): Promise<number> => {
    const queue = queues[q]!;
    queue.kick(); // publish (and whether to notify: a clean driver notifies anyway)
    kick(q);
    await settle(() => queue.hasUsed());
    if (!queue.hasUsed())
      throw new Error(`${kind}: the clean request on queue ${q} never completed`);
    queue.popUsed();
    return queue.lastUsedLen;
  };
  switch (kind) {
    case 'rng': {
      memory.fill(at, 64, 0);
      queues[0]!.add([], [{ addr: at, len: 64 }]);
      const len = await one(0);
      if (len < 1 || len > 64 || memory.readU8(at) !== 0xa5)
        throw new Error(`rng: used length ${len}`);
      return;
    }
    case 'block': {
      memory.writeU32(at, 0); // VIRTIO_BLK_T_IN
      memory.writeU32(at + 4, 0);
      memory.writeU64(at + 8, 3);
      memory.writeU8(at + 0x1000, 0xff);
      queues[0]!.add(
        [{ addr: at, len: 16 }],
        [
          { addr: at + 0x200, len: 512 },
          { addr: at + 0x1000, len: 1 },
        ],
      );
      await one(0);
      const status = memory.readU8(at + 0x1000);
      const first = memory.readU8(at + 0x200);
      const want = made.disk!.bytes[3 * 512]!;
      if (status !== 0 || first !== want)
        throw new Error(`block: status ${status}, byte ${first} (want ${want})`);
      return;
    }
    case 'console': {
      const text = 'clean driver says hello';
      memory.write(at, new TextEncoder().encode(text));
      queues[1]!.add([{ addr: at, len: text.length }], []);
      await one(1);
      // A transmit chain reaches the output cut to the device's per-chain cap.
      if (!made.output!.text.endsWith(text.slice(0, made.txCap)))
        throw new Error('console: the output did not arrive');
      return;
    }
    case 'net': {
      const frame = new Uint8Array(60).map((_, i) => (i * 13 + 1) & 0xff);
      memory.fill(at, 12, 0);
      memory.write(at + 0x100, frame);
      queues[1]!.add(
        [
          { addr: at, len: 12 },
          { addr: at + 0x100, len: 60 },
        ],
        [],
      );
      await one(1);
      const sent = made.net!.last;
      if (sent === null || sent.length !== 60 || !sent.every((b, i) => b === frame[i]))
        throw new Error('net: the frame did not reach the backend intact');
      return;
    }
  }
}
