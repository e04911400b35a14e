import { buildRxRig } from './cases/net-rx.js';

const size = Number(process.argv[2] ?? 64);
const rig = buildRxRig(size);
const t0 = Date.now();
let rounds = 0;
while (Date.now() - t0 < 6000) {
  rig.step(1000);
  rounds += 1000;
}
console.log('ns/frame', ((Date.now() - t0) * 1e6) / (rounds * 32));
