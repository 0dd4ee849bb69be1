import { readEventStream, type EventStreamBlock } from "../../src/client/sse.js";

/** An SSE connection to GET /v1/sessions/events, read block by block. */
export interface EventStreamReader {
  status: number;
  /** The error body when the status is not 200. */
  errorBody: Record<string, any> | undefined;
  /** The next block, or undefined once the stream has ended. */
  next(): Promise<EventStreamBlock | undefined>;
  /** Reads blocks until `predicate` holds for the collected events (blocks with data), and returns them all. */
  until(predicate: (events: SseEvent[]) => boolean): Promise<SseEvent[]>;
  close(): void;
}

export interface SseEvent {
  id: string;
  event: string;
  data: Record<string, any>;
}

export async function openEventStream(
  baseUrl: string,
  headers: Record<string, string>,
  { query = "", lastEventId }: { query?: string; lastEventId?: string } = {},
): Promise<EventStreamReader> {
  const abort = new AbortController();
  const res = await fetch(`${baseUrl}/v1/sessions/events${query}`, {
    headers: { ...headers, accept: "text/event-stream", ...(lastEventId ? { "last-event-id": lastEventId } : {}) },
    signal: abort.signal,
  });
  if (res.status !== 200) {
    const errorBody = (await res.json()) as Record<string, any>;
    return { status: res.status, errorBody, next: async () => undefined, until: async () => [], close: () => abort.abort() };
  }
  const blocks = readEventStream(res.body as unknown as AsyncIterable<Uint8Array>);
  const next = async () => {
    try {
      const r = await blocks.next();
      return r.done ? undefined : r.value;
    } catch {
      return undefined;
    }
  };
  return {
    status: res.status,
    errorBody: undefined,
    next,
    async until(predicate) {
      const events: SseEvent[] = [];
      while (!predicate(events)) {
        const block = await next();
        if (block === undefined) throw new Error(`the stream ended after ${events.length} events`);
        if (block.data !== undefined) events.push({ id: block.id ?? "", event: block.event, data: JSON.parse(block.data) as Record<string, any> });
      }
      return events;
    },
    close: () => abort.abort(),
  };
}
