/** What the `virtq demo` command and its simulated guest (a worker thread) tell each other. */

export const DEMO_DEVICES = ['rng', 'block', 'console', 'net'] as const;
export type DemoDevice = (typeof DEMO_DEVICES)[number];

export const DEMO_FEATURES = ['event-idx', 'indirect', 'in-order'] as const;
export type DemoFeature = (typeof DEMO_FEATURES)[number];

export type Ring = 'split' | 'packed';
/** Where the devices run: on the guest's (vCPU's) thread, or together in one device worker. */
export type Placement = 'same-thread' | 'worker';

/** What the guest worker runs (structured-clone safe). */
export interface DemoConfig {
  devices: DemoDevice[];
  rings: Ring[];
  placements: Placement[];
  features: DemoFeature[];
  /** Seconds of driving, over all phases. */
  duration: number;
  /** A disk image for the block device (opened read-only), or null for a built-in 8 MiB one. */
  diskImage: string | null;
}

/** One run of every device with one ring format and placement. */
export interface PhaseSpec {
  ring: Ring;
  placement: Placement;
}

/** What one device did in one phase. */
export interface DeviceReport {
  /** Row label: rng, block, console, net (net counts both devices of the pair). */
  device: DemoDevice;
  /** Ring format the device actually used (a device may not offer packed rings). */
  ring: Ring | 'none';
  /** Negotiated ring features, for the table (e.g. "EVENT_IDX INDIRECT"). */
  features: string;
  requests: number;
  bytes: number;
  /** Requests the device answered with an error, and answers that failed verification. */
  errors: number;
  /** Why the device stopped early, if it did. */
  failure: string | null;
  /** A note for the table (what was verified, what the workload was). */
  note: string;
}

export interface PhaseReport extends PhaseSpec {
  seconds: number;
  devices: DeviceReport[];
}

export type GuestMessage =
  | { type: 'phase'; index: number; of: number; phase: PhaseSpec; seconds: number }
  | { type: 'progress'; index: number; elapsed: number; devices: DeviceReport[] }
  | { type: 'phase-done'; report: PhaseReport }
  | { type: 'done' }
  | { type: 'fatal'; message: string };
