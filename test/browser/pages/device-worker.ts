/**
 * A Web Worker that serves one block device: the emulator page sends the disk image (a
 * SharedArrayBuffer) as the spec, so the page can check what the device wrote.
 */
import { BlockDevice, eventTargetPort, MemoryBackend, runDeviceWorker } from 'virtq';

runDeviceWorker(eventTargetPort(self), (spec) => {
  const { image } = spec as { image: SharedArrayBuffer };
  return new BlockDevice({
    backend: new MemoryBackend(new Uint8Array(image)),
    id: 'web-worker-disk',
  });
});
