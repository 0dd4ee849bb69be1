import { AsyncLocalStorage } from "node:async_hooks";

/**
 * The moment (ms since the epoch) the current call's client stops waiting, carried from the
 * transport to the storage layer without threading it through every signature, so database work
 * for a call nobody waits for any more stops too.
 */
const storage = new AsyncLocalStorage<number>();

/** Longest deadline honoured: a client asking for more gets this (database work is bounded anyway). */
export const maxDeadlineMs = 30_000;

/** Runs `work` with a deadline `timeoutMs` from now (capped at maxDeadlineMs); none when undefined. */
export function withDeadline<T>(timeoutMs: number | undefined, work: () => Promise<T>): Promise<T> {
  if (timeoutMs === undefined) return work();
  return storage.run(Date.now() + Math.min(timeoutMs, maxDeadlineMs), work);
}

/** The current call's deadline, if its client gave one. */
export function currentDeadline(): number | undefined {
  return storage.getStore();
}

/** Runs `work` outside any call's deadline: for work shared by many calls, such as a batched read. */
export function withoutDeadline<T>(work: () => Promise<T>): Promise<T> {
  return storage.exit(work);
}
