/** Where a queue reports driver behaviour that it tolerates but that deserves a word. */
export interface Logger {
  warn(message: string, fields?: Record<string, unknown>): void;
}

/** Writes to `console.warn`. */
export const consoleLogger: Logger = {
  warn(message, fields) {
    if (fields === undefined) console.warn(`virtq: ${message}`);
    else console.warn(`virtq: ${message}`, fields);
  },
};

/** Drops everything (for fuzzers and benchmarks). */
export const silentLogger: Logger = { warn() {} };
