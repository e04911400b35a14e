/**
 * The emulator page: guest RAM in a SharedArrayBuffer, a block device in a Web Worker behind a
 * WorkerDeviceProxy and an MmioTransport, and virtq's guest driver doing random writes and
 * reads, each checked against the disk image the worker writes into.
 * Parameters: `ring` (split | packed).
 */
import {
  BlockDriver,
  DeviceWorkerLink,
  eventTargetPort,
  featureBit,
  GuestAllocator,
  GuestMemory,
  MmioGuestDriver,
  MmioTransport,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
} from 'virtq';

const BLOCK = 4096;
const DISK = 2 << 20;

export default async function run(params: URLSearchParams): Promise<unknown> {
  const packed = params.get('ring') === 'packed';
  const memory = GuestMemory.create(8 << 20, { shared: true });
  const image = new SharedArrayBuffer(DISK);
  const disk = new Uint8Array(image);
  const worker = new Worker(new URL('./device-worker.js', import.meta.url), { type: 'module' });
  const link = await DeviceWorkerLink.connect(eventTargetPort(worker), memory, { image });
  try {
    const proxy = link.devices[0];
    if (proxy === undefined) throw new Error('the worker built no device');
    let interrupts = 0;
    const transport = new MmioTransport(proxy, memory, {
      onInterrupt: (level) => {
        if (level) interrupts++;
      },
    });
    const guest = new MmioGuestDriver(
      transport,
      memory,
      new GuestAllocator(memory, 0x10000, 0x400000),
    );
    const driver = new BlockDriver(guest, { waiter: proxy.waiter(50), queueSize: 64 });
    const wanted =
      featureBit(VIRTIO_F_EVENT_IDX) |
      featureBit(VIRTIO_F_INDIRECT_DESC) |
      (packed ? featureBit(VIRTIO_F_RING_PACKED) : 0n);
    const negotiated = driver.init(wanted);

    // Random whole-block writes, then every written block read back through the device and
    // compared with what this thread sees in the image the worker wrote.
    let seed = packed ? 7 : 3;
    const rand = (): number => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed;
    };
    const written = new Map<number, Uint8Array>();
    for (let i = 0; i < 48; i++) {
      const block = rand() % (DISK / BLOCK);
      const data = new Uint8Array(BLOCK).map(() => rand() & 0xff);
      await driver.write((block * BLOCK) / 512, data);
      written.set(block, data);
    }
    let readBackSame = 0;
    let imageSame = 0;
    for (const [block, data] of written) {
      const back = await driver.read((block * BLOCK) / 512, BLOCK / 512);
      if (back.every((b, k) => b === data[k])) readBackSame++;
      const inImage = disk.subarray(block * BLOCK, (block + 1) * BLOCK);
      if (inImage.every((b, k) => b === data[k])) imageSame++;
    }
    return {
      crossOriginIsolated,
      waitAsync: typeof (Atomics as { waitAsync?: unknown }).waitAsync,
      format: transport.queues[0]?.format,
      negotiatedWanted: (negotiated & wanted) === wanted,
      id: await driver.getId(),
      capacity: driver.config?.capacity,
      blocks: written.size,
      readBackSame,
      imageSame,
      interrupts,
    };
  } finally {
    await link.stop();
    worker.terminate();
  }
}
