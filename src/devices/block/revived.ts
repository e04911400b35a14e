/**
 * Requests a restored block device owes the driver from its saved state (`BlockState.inFlight`:
 * under way on the backend when the state was saved), revived per queue, to be served again
 * before the ring's next requests.
 */
import type { DescriptorChain } from '../../queue/chain.js';
import { type BlockSavedRequest, savedRequest } from './state.js';

export class RevivedRequests {
  private lists: DescriptorChain[][] = [];
  /** Requests left in all queues: 0 keeps the device's pop loop on its one test. */
  left = 0;

  /** Makes `lists` (per queue, in saved order) the requests to serve again. */
  set(lists: DescriptorChain[][]): void {
    this.lists = lists;
    this.left = lists.reduce((n, l) => n + l.length, 0);
  }

  /** The next request of queue `index` to serve again, or null when it has none left. */
  take(index: number): DescriptorChain | null {
    const list = this.lists[index];
    if (list === undefined || list.length === 0) return null;
    this.left--;
    return list.shift()!;
  }

  /** Queue `index` stopped: its requests are no longer owed there. */
  drop(index: number): void {
    const list = this.lists[index];
    if (list === undefined) return;
    this.left -= list.length;
    this.lists[index] = [];
  }

  clear(): void {
    this.lists = [];
    this.left = 0;
  }

  /** The requests not yet served, as saved state (a save before the device served them). */
  save(): BlockSavedRequest[] {
    if (this.left === 0) return [];
    return this.lists.flatMap((list, queue) => list.map((c) => savedRequest(queue, c)));
  }
}
