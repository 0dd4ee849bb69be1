import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import {
  SessionService,
  WatchSessionEventsRequestSchema,
  WatchSessionEventsResponseSchema,
  type WatchSessionEventsResponse,
} from "../../gen/sessions/v1/sessions_pb.js";
import { AppError } from "../domain/errors.js";
import { toPublicError } from "./error-codes.js";
import { isFieldLike } from "./field-names.js";
import { callInfoOf, type PipelineStream } from "./pipeline.js";
import { invalidQuery, isInvalidQuery, restRouteOf } from "./rest.js";
import { restJsonEncoder } from "./rest-json.js";

/** Where the REST feed is served: WatchSessionEvents' google.api.http GET path. */
export const eventStreamPath = restRouteOf(SessionService.method.watchSessionEvents).url;

const encodeMessage = restJsonEncoder(WatchSessionEventsResponseSchema);
/** Encoded once per message: subscribers of one tenant share each event's message (session-handlers.ts). */
const encoded = new WeakMap<WatchSessionEventsResponse, string>();
const encodeEvent = (message: WatchSessionEventsResponse) => {
  let json = encoded.get(message);
  if (json === undefined) encoded.set(message, (json = encodeMessage(message)));
  return json;
};

/**
 * GET /v1/sessions/events: the tenant's event feed (WatchSessionEvents) as Server-Sent Events.
 * Each event is `id:` (its cursor), `event:` (its type) and `data:` (one JSON object, the REST form of
 * WatchSessionEventsResponse); a heartbeat is a comment with the current cursor as `id:` (which
 * moves an EventSource's Last-Event-ID on without an event). It resumes after the standard
 * Last-Event-ID header, or else `?after=<cursor>`, or starts at `?since=<RFC 3339 time>`; nothing
 * given, from now on. Errors before the stream starts are REST errors; an error after (a reader too
 * slow, a database gone) is an `error` event, and the stream ends.
 */
export function registerEventStream(app: FastifyInstance, stream: PipelineStream): void {
  app.get(eventStreamPath, async (request: FastifyRequest, reply: FastifyReply) => {
    const query = request.query as Record<string, string | string[] | undefined>;
    if (isInvalidQuery(query)) throw invalidQuery();
    for (const [name, value] of Object.entries(query)) {
      if (name !== "after" && name !== "since") {
        if (isFieldLike(name)) throw new AppError("invalid_request", `unknown query parameter ${name}; this feed takes after or since`, name);
        throw new AppError("invalid_request", "an unknown query parameter; this feed takes after or since");
      }
      if (Array.isArray(value)) throw new AppError("invalid_request", `the query parameter ${name} is given more than once`, name);
      // A filter that is present must say something (as on every other REST path).
      if (value === "") throw new AppError("invalid_request", `the query parameter ${name} is empty; leave it out to start from now`, name);
    }
    // An EventSource reconnecting sends Last-Event-ID with the URL it started with: the header wins.
    const lastEventId = request.headers["last-event-id"];
    const after = typeof lastEventId === "string" && lastEventId !== "" ? lastEventId : ((query.after as string | undefined) ?? "");
    const since = query.since === undefined ? undefined : parseTime(query.since as string);
    const info = callInfoOf(request, reply, "rest", undefined);
    let messages: AsyncIterable<WatchSessionEventsResponse>;
    try {
      const input = create(WatchSessionEventsRequestSchema, { after, ...(since ? { since: timestampFromDate(since) } : {}) });
      messages = (await stream.open(input, info)) as AsyncIterable<WatchSessionEventsResponse>;
    } finally {
      for (const [key, value] of info.responseHeaders) reply.header(key, value);
    }
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
      ...(reply.getHeaders() as Record<string, string>),
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      // Proxies (nginx) must pass each event on as it comes.
      "x-accel-buffering": "no",
    });
    const iterator = messages[Symbol.asyncIterator]();
    // The client leaving ends the subscription.
    raw.once("close", () => void iterator.return?.());
    // Under backpressure, waits for drain (or the client leaving), and leaves no listener behind.
    const write = async (text: string) => {
      if (raw.write(text)) return;
      await new Promise<void>((resolve) => {
        const done = () => {
          raw.off("drain", done);
          raw.off("close", done);
          resolve();
        };
        raw.on("drain", done);
        raw.on("close", done);
      });
    };
    try {
      await write("retry: 1000\n\n");
      for (let item = await iterator.next(); !item.done && !raw.destroyed; item = await iterator.next()) {
        const m = item.value;
        await write(m.type === "heartbeat" ? `: heartbeat\nid: ${m.cursor}\n\n` : `id: ${m.cursor}\nevent: ${m.type}\ndata: ${encodeEvent(m)}\n\n`);
      }
    } catch (err) {
      const { code, message } = toPublicError(err);
      if (!raw.destroyed) await write(`event: error\ndata: ${JSON.stringify({ error: { code, message, request_id: request.id } })}\n\n`);
    } finally {
      raw.end();
    }
  });
}

/** An RFC 3339 time with a zone (`2026-11-30T12:00:00Z`), or invalid_request naming `since`. */
function parseTime(value: string): Date {
  // RFC 3339 allows a lower-case t and z; Date would roll 2026-02-30 over to March, so the fields are
  // checked first (a day that exists in its month, hours to 23, minutes and seconds to 59).
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d{1,9})?(Z|[+-](\d\d):(\d\d))$/i.exec(value);
  const isReal =
    m !== null &&
    Number(m[3]) >= 1 &&
    Number(m[3]) <= new Date(Date.UTC(Number(m[1]), Number(m[2]), 0)).getUTCDate() &&
    Number(m[2]) >= 1 && Number(m[2]) <= 12 &&
    Number(m[4]) <= 23 && Number(m[5]) <= 59 && Number(m[6]) <= 59 &&
    (m[9] === undefined || (Number(m[9]) <= 23 && Number(m[10]) <= 59));
  const time = isReal ? new Date(value.toUpperCase()) : new Date(Number.NaN);
  if (Number.isNaN(time.getTime())) throw new AppError("invalid_request", "since must be an RFC 3339 time such as 2026-11-30T12:00:00Z", "since");
  return time;
}
