import { SplitDriver } from '../driver/split.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { DescriptorChain } from '../queue/chain.js';
import { SplitQueue } from '../queue/split/queue.js';

/** What the queue demo runs. */
export interface QueueDemoOptions {
  chains: number;
  queueSize: number;
  /** Requests the driver keeps in flight per round (at most queueSize). */
  batch: number;
  /** Bytes of the request (device-readable) and response (device-writable) buffers. */
  requestBytes: number;
  responseBytes: number;
  eventIdx: boolean;
  indirect: boolean;
  /** Called now and then with the number of chains completed so far. */
  onProgress?: (done: number) => void;
}

export interface QueueDemoResult {
  chains: number;
  bytesRead: number;
  bytesWritten: number;
  /** Driver-to-device notifications the driver sent / could skip thanks to suppression. */
  kicksSent: number;
  kicksSuppressed: number;
  /** Device-to-driver notifications sent / skipped. */
  interruptsSent: number;
  interruptsSuppressed: number;
  seconds: number;
}

/**
 * A driver and a device exchanging request/response chains through one split queue on the
 * calling thread. The driver fills each request with a pattern; the device checks it and
 * answers with the byte sum; the driver checks every answer and that every chain comes back
 * exactly once. Any mismatch throws.
 */
export function runQueueDemo(o: QueueDemoOptions): QueueDemoResult {
  const size = o.queueSize;
  const slot = Math.max(o.requestBytes + o.responseBytes + (o.indirect ? 32 : 0), 64);
  const dataBase = 0x100000;
  const mem = GuestMemory.create(dataBase + size * Math.ceil(slot / 64) * 64 + 0x1000);
  const slotBytes = Math.ceil(slot / 64) * 64;
  const driver = new SplitDriver(mem, { size, base: 0, eventIdx: o.eventIdx });
  const q = new SplitQueue(size);
  q.size = size;
  q.ready = true;
  q.descTableAddress = driver.layout.desc;
  q.availRingAddress = driver.layout.avail;
  q.usedRingAddress = driver.layout.used;
  q.usesNotifSuppression = o.eventIdx;
  q.indirectDesc = o.indirect;
  q.initialize(mem);

  const chain = new DescriptorChain(4);
  const inFlight = new Int32Array(size).fill(-1); // head -> sequence number
  const slotOf = new Int32Array(size); // head -> buffer slot
  const freeSlots: number[] = [];
  for (let s = size - 1; s >= 0; s--) freeSlots.push(s);
  const r: QueueDemoResult = {
    chains: 0,
    bytesRead: 0,
    bytesWritten: 0,
    kicksSent: 0,
    kicksSuppressed: 0,
    interruptsSent: 0,
    interruptsSuppressed: 0,
    seconds: 0,
  };
  const batch = Math.min(o.batch, o.indirect ? size : Math.floor(size / 2));
  const started = performance.now();
  let sent = 0;
  while (r.chains < o.chains) {
    // Driver: fill and publish up to `batch` requests.
    for (let k = 0; k < batch && sent < o.chains && freeSlots.length > 0; k++) {
      const s = freeSlots.pop()!;
      const base = dataBase + s * slotBytes;
      const req = mem.writableSlice(base, o.requestBytes);
      for (let i = 0; i < req.length; i++) req[i] = (sent + i) & 0xff;
      const readable = [{ addr: base, len: o.requestBytes }];
      const writable = [{ addr: base + o.requestBytes, len: o.responseBytes }];
      const head = o.indirect
        ? driver.addIndirect(base + o.requestBytes + o.responseBytes, readable, writable)
        : driver.add(readable, writable);
      inFlight[head] = sent;
      slotOf[head] = s;
      sent++;
    }
    if (driver.kick()) r.kicksSent++;
    else r.kicksSuppressed++;

    // Device: answer every available chain, publish once, decide on one interrupt.
    for (;;) {
      const c = q.popOrEnableNotification(chain);
      if (c === null) break;
      const req = c.slice(0);
      let sum = 0;
      for (let i = 0; i < req.length; i++) sum += req[i]!;
      const resp = c.slice(c.writableStart);
      resp.fill(0);
      new DataView(resp.buffer, resp.byteOffset, resp.byteLength).setUint32(0, sum, true);
      r.bytesRead += c.readableLength;
      r.bytesWritten += c.writableLength;
      q.addUsed(c.head, c.writableLength);
    }
    q.advanceUsedRingIdx();
    if (q.prepareKick()) r.interruptsSent++;
    else r.interruptsSuppressed++;

    // Driver: collect and check answers.
    for (;;) {
      const head = driver.popUsed();
      if (head < 0) break;
      const seq = inFlight[head]!;
      if (seq < 0) throw new Error(`chain ${head} came back twice`);
      if (driver.lastUsedLen !== o.responseBytes)
        throw new Error(`chain ${head}: wrong used length`);
      const base = dataBase + slotOf[head]! * slotBytes;
      let want = 0;
      for (let i = 0; i < o.requestBytes; i++) want += (seq + i) & 0xff;
      if (mem.readU32(base + o.requestBytes) !== want)
        throw new Error(`chain ${head}: wrong answer`);
      inFlight[head] = -1;
      freeSlots.push(slotOf[head]!);
      r.chains++;
    }
    if ((r.chains & 0x3fff) < batch) o.onProgress?.(r.chains);
  }
  r.seconds = (performance.now() - started) / 1000;
  o.onProgress?.(r.chains);
  return r;
}
