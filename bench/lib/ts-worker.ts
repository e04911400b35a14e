/**
 * Starting a worker thread on a TypeScript module.
 *
 * `new Worker(url, { execArgv: ['--import', 'tsx'] })` does not work on Node 20: the worker
 * rejects its .ts entry with ERR_UNKNOWN_FILE_EXTENSION before tsx's hooks are in place
 * (tsx issue #354). So the worker runs a two-line bootstrap that registers tsx through its
 * API and then imports the module.
 */

import { Worker } from 'node:worker_threads';

export function startTsWorker(module: URL, workerData: unknown): Worker {
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const bootstrap =
    `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); ` +
    `return import(${JSON.stringify(module.href)}); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}

/** Resolves with the worker's first message; rejects if it fails or exits first. */
export function firstMessage<T>(worker: Worker): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
    worker.once('exit', (code) => reject(new Error(`worker exited with code ${code}`)));
  });
}
