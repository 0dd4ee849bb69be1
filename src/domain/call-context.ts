import { AsyncLocalStorage } from "node:async_hooks";
import { AppError } from "./errors.js";

/**
 * What the current call's client asked for, carried from the transport to the domain and storage
 * without threading it through every signature: the moment it stops waiting (its deadline), and a
 * signal that fires when it went away (a closed connection, an HTTP/2 RST_STREAM). Database work for
 * a call nobody waits for any more stops, and a reset call never reaches the expensive steps (key
 * lookup, signature check, SQL).
 */
interface CallContext {
  /** Ms since the epoch; undefined when the client gave no deadline. */
  deadline: number | undefined;
  signal: CancelSignal | undefined;
}

/** What tells that a call's client went away (an AbortSignal will do). */
export interface CancelSignal {
  readonly aborted: boolean;
}

const storage = new AsyncLocalStorage<CallContext>();

/** Longest deadline honoured: a client asking for more gets this (database work is bounded anyway). */
export const maxDeadlineMs = 30_000;

/**
 * The timeout a call gets for the one its client asked for: whole milliseconds (a timeout below one
 * millisecond, such as gRPC's `1n`, has already run out), at most maxDeadlineMs.
 */
export function honouredTimeoutMs(requestedMs: number): number {
  return Math.min(Math.floor(requestedMs), maxDeadlineMs);
}

/** Runs `work` as a call with a deadline `timeoutMs` from now (as honouredTimeoutMs has it), if any, and `signal`. */
export function withCall<T>({ timeoutMs, signal }: { timeoutMs: number | undefined; signal: CancelSignal }, work: () => Promise<T>): Promise<T> {
  const deadline = timeoutMs === undefined ? undefined : Date.now() + honouredTimeoutMs(timeoutMs);
  return storage.run({ deadline, signal }, work);
}

/** The current call's deadline, if its client gave one. */
export function currentDeadline(): number | undefined {
  return storage.getStore()?.deadline;
}

/**
 * Throws `cancelled` when the current call's client has gone away, and `deadline_exceeded` once its
 * deadline has come; call it before expensive steps. (A deadline of zero is past at once.)
 */
export function throwIfCancelled(): void {
  checkCall(storage.getStore());
}

/**
 * throwIfCancelled for the current call, to be run later, from work that runs outside it: a batch
 * that many calls joined checks each of them once it is about to send their part.
 */
export function cancellationCheck(): () => void {
  const call = storage.getStore();
  return () => checkCall(call);
}

function checkCall(call: CallContext | undefined): void {
  if (call === undefined) return;
  if (call.signal?.aborted === true) throw new AppError("cancelled", "the client cancelled the call");
  if (call.deadline !== undefined && Date.now() >= call.deadline) throw new AppError("deadline_exceeded", "the call's deadline passed");
}

/** Runs `work` outside any call: for work shared by many calls, such as a batched read. */
export function withoutCall<T>(work: () => Promise<T>): Promise<T> {
  return storage.exit(work);
}
