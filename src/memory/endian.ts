/**
 * VIRTIO 1.x structures are little-endian. The typed-array fast paths (ring views, `Atomics`)
 * use host byte order, so virtq refuses to load on a big-endian host rather than misread rings.
 */
export const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function assertLittleEndianHost(): void {
  if (!HOST_IS_LITTLE_ENDIAN) {
    throw new Error('virtq needs a little-endian host: its typed-array ring views assume it');
  }
}
