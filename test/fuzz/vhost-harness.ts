import { isNativeAvailable } from '../../src/vhost-user/index.js';
import { concat, u32s, u64 } from '../vhost-user/frontend.js';
import { OFFSET_A, OFFSET_B, REGION_A, REGION_B } from './layout.js';

// ---------------------------------------------------------------------------------------------
// Through the vhost-user back-end

export const nativeOk = isNativeAvailable();
export const USER_A = 0x7f00_0000_0000;
export const USER_B = 0x7e00_0000_0000;

/** The front-end's user address of guest address `gpa`. */
export function userAddr(gpa: number): number {
  return gpa >= REGION_B.base ? USER_B + (gpa - REGION_B.base) : USER_A + (gpa - REGION_A.base);
}

/** SET_MEM_TABLE's payload: regions A and B of the memfd, with canaries around them. */
export function canaryMemTable(): Uint8Array {
  return concat(
    u32s(2, 0),
    u64(REGION_A.base),
    u64(REGION_A.length),
    u64(USER_A),
    u64(OFFSET_A),
    u64(REGION_B.base),
    u64(REGION_B.length),
    u64(USER_B),
    u64(OFFSET_B),
  );
}

export function vringAddress(
  index: number,
  r: { desc: number; driver: number; device: number },
): Uint8Array {
  return concat(
    u32s(index, 0),
    u64(userAddr(r.desc)),
    u64(userAddr(r.device)),
    u64(userAddr(r.driver)),
    u64(0),
  );
}
