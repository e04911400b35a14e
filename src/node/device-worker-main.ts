/**
 * Entry module of the worker threads `NodeDeviceWorker.spawn` starts: builds the devices of
 * the spec it receives and serves them (see `runDeviceWorker`).
 */
import { parentPort } from 'node:worker_threads';
import { runDeviceWorker } from '../devices/runner/worker.js';
import { buildDevices } from './device-factories.js';
import { nodePort } from './device-worker.js';

if (parentPort === null) throw new Error('device-worker-main runs in a worker thread');
runDeviceWorker(nodePort(parentPort), buildDevices, {
  yieldToEventLoop: () => new Promise((resolve) => setImmediate(resolve)),
});
