/** Descriptor flags shared by both ring formats (VIRTIO 1.2 §2.7.5, §2.8.11). */
export const VIRTQ_DESC_F_NEXT = 0x1;
export const VIRTQ_DESC_F_WRITE = 0x2;
export const VIRTQ_DESC_F_INDIRECT = 0x4;

/** Packed ring descriptor flags (VIRTIO 1.2 §2.8.1). */
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;

/** Split ring: driver asks for no used-buffer notifications (§2.7.7). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 0x1;
/** Split ring: device asks for no available-buffer notifications (§2.7.10). */
export const VIRTQ_USED_F_NO_NOTIFY = 0x1;

/** Size in bytes of one descriptor in either ring format. */
export const DESCRIPTOR_SIZE = 16;

/** Largest queue size VIRTIO allows (§2.7: 2^15 for split; §2.8: packed likewise). */
export const MAX_QUEUE_SIZE = 32768;

/** Transport-independent feature bits that concern the rings (§6). */
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;
