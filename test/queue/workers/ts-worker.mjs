// Bootstrap for the stress workers: Node 20 cannot load TypeScript in a worker through
// execArgv (`--import tsx` does not reach worker threads there), so each worker starts here
// and imports its TypeScript entry (workerData.entry) through tsx's API.
import { workerData } from 'node:worker_threads';
import { tsImport } from 'tsx/esm/api';

await tsImport(workerData.entry, import.meta.url);
