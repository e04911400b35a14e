/** Command-line argument parsers (commander `argParser`s): each throws InvalidArgumentError. */
import { accessSync, constants, statSync } from 'node:fs';
import { type Command, InvalidArgumentError } from 'commander';

/** A commander parser for an integer within [min, max]. */
export function intIn(min: number, max: number, what: string): (v: string) => number {
  return (v) => {
    if (!/^\d+$/.test(v.trim())) throw new InvalidArgumentError(`${what} must be a whole number.`);
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${what} must be between ${min} and ${max}.`);
    }
    return n;
  };
}

/** A commander parser for a number of seconds in (0, max]. */
export function seconds(max: number, what: string): (v: string) => number {
  return (v) => {
    const n = v.trim() === '' ? Number.NaN : Number(v);
    if (!Number.isFinite(n)) {
      throw new InvalidArgumentError(
        `${what} must be a number of seconds (got ${JSON.stringify(v)}).`,
      );
    }
    if (!(n > 0) || n > max) {
      throw new InvalidArgumentError(
        `${what} must be more than 0 and at most ${max} seconds (got ${v}).`,
      );
    }
    return n;
  };
}

/** A commander parser for a comma-separated list of names from `choices` (no repeats). */
export function listOf<T extends string>(
  choices: readonly T[],
  what: string,
  none?: string,
): (v: string) => T[] {
  return (v) => {
    const items = v
      .split(',')
      .map((x) => x.trim())
      .filter((x) => x !== '');
    if (none !== undefined && items.length === 1 && items[0] === none) return [];
    if (items.length === 0)
      throw new InvalidArgumentError(`${what} needs at least one of ${choices.join(', ')}.`);
    const out: T[] = [];
    for (const item of items) {
      if (!(choices as readonly string[]).includes(item)) {
        throw new InvalidArgumentError(
          `${what}: unknown ${JSON.stringify(item)} (choose from ${choices.join(', ')}${none !== undefined ? `, or ${none}` : ''}).`,
        );
      }
      if (!out.includes(item as T)) out.push(item as T);
    }
    return out;
  };
}

/** A commander parser for one of `choices` or "both" (the first two). */
export function oneOrBoth<T extends string>(
  choices: readonly [T, T],
  what: string,
): (v: string) => T[] {
  return (v) => {
    if (v === 'both') return [...choices];
    if ((choices as readonly string[]).includes(v)) return [v as T];
    throw new InvalidArgumentError(`${what} must be ${choices[0]}, ${choices[1]} or both.`);
  };
}

/** The demo's block workload moves 4 KiB blocks: a smaller image has nothing to drive. */
const DEMO_MIN_IMAGE_BYTES = 4096;

export function readableFile(v: string): string {
  let size: number;
  try {
    const st = statSync(v);
    if (!st.isFile()) throw new InvalidArgumentError(`--disk-image ${v} is not a regular file.`);
    accessSync(v, constants.R_OK);
    size = st.size;
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw e;
    throw new InvalidArgumentError(
      `--disk-image ${v} cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
    );
  }
  if (size < DEMO_MIN_IMAGE_BYTES) {
    throw new InvalidArgumentError(
      `--disk-image ${v} is ${size} bytes; the demo reads and writes 4 KiB blocks, so it needs at least ${DEMO_MIN_IMAGE_BYTES} bytes.`,
    );
  }
  return v;
}

export function powerOfTwo(what: string): (v: string) => number {
  const base = intIn(1, 32768, what);
  return (v) => {
    const n = base(v);
    if ((n & (n - 1)) !== 0) throw new InvalidArgumentError(`${what} must be a power of two.`);
    return n;
  };
}

export function blockSize(v: string): number {
  const n = intIn(512, 65536, '--block-size')(v);
  if ((n & (n - 1)) !== 0) throw new InvalidArgumentError('--block-size must be a power of two.');
  return n;
}

export function imageFile(v: string): string {
  try {
    if (!statSync(v).isFile())
      throw new InvalidArgumentError(`--blk-file ${v} is not a regular file.`);
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw e;
    throw new InvalidArgumentError(
      `--blk-file ${v} cannot be opened (${(e as NodeJS.ErrnoException).code ?? 'error'}).`,
    );
  }
  return v;
}

/**
 * Refuses options with defaults that the user gave on the command line although the mode they
 * belong to is not the one chosen (a default would otherwise hide what was typed): each
 * `[option, flag]` given, with `mode` false, throws InvalidArgumentError saying `needs`.
 */
export function onlyWith(
  command: Command,
  mode: boolean,
  needs: string,
  options: readonly (readonly [key: string, flag: string])[],
): void {
  if (mode) return;
  for (const [key, flag] of options) {
    if (command.getOptionValueSource(key) === 'cli') {
      throw new InvalidArgumentError(`${flag} is for ${needs}; it has no effect here.`);
    }
  }
}
