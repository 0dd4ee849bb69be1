/**
 * A Server-Sent Events reader (the WHATWG "event stream" format), for the local verifier and anyone
 * reading GET /v1/sessions/events without a browser. Client-side code: it imports nothing of the
 * server's.
 */

/** One block of the stream, up to a blank line: an event (data set) or only fields and comments (a heartbeat). */
export interface EventStreamBlock {
  /** The block's `id:`, if it had one (it moves Last-Event-ID on, even with no data). */
  id: string | undefined;
  /** `event:`, "message" when unnamed. */
  event: string;
  /** The `data:` lines joined with "\n"; undefined when the block had none (not an event). */
  data: string | undefined;
  /** `retry:`, when the block set a reconnection time. */
  retryMs: number | undefined;
}

/** Splits a byte stream into blocks, as they complete. */
export async function* readEventStream(body: AsyncIterable<Uint8Array>): AsyncGenerator<EventStreamBlock> {
  const decoder = new TextDecoder();
  let pending = "";
  let block = newBlock();
  let isBlockEmpty = true;
  for await (const chunk of body) {
    pending += decoder.decode(chunk, { stream: true });
    // Lines end at \n, \r\n or \r; a \r at the very end may be half of a \r\n still to come.
    for (;;) {
      const match = /\r\n|\n|\r(?!$)/.exec(pending);
      if (match === null) break;
      const line = pending.slice(0, match.index);
      pending = pending.slice(match.index + match[0].length);
      if (line === "") {
        if (!isBlockEmpty) yield block;
        block = newBlock();
        isBlockEmpty = true;
        continue;
      }
      if (line.startsWith(":")) continue; // a comment
      isBlockEmpty = false;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + (line[colon + 1] === " " ? 2 : 1));
      if (field === "data") block.data = block.data === undefined ? value : `${block.data}\n${value}`;
      else if (field === "event") block.event = value;
      else if (field === "id" && !value.includes("\0")) block.id = value;
      else if (field === "retry" && /^\d+$/.test(value)) block.retryMs = Number(value);
    }
  }
}

function newBlock(): EventStreamBlock {
  return { id: undefined, event: "message", data: undefined, retryMs: undefined };
}
