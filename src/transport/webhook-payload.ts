import { create } from "@bufbuild/protobuf";
import { WatchSessionEventsResponseSchema } from "../../gen/sessions/v1/sessions_pb.js";
import { wholeSeconds } from "../domain/clock.js";
import { encodeEventCursor, type SessionEvent } from "../domain/events.js";
import { toProtoEvent } from "./converters.js";
import { restJsonEncoder } from "./rest-json.js";

const encodeEvent = restJsonEncoder(WatchSessionEventsResponseSchema);

/**
 * A webhook message in the Standard Webhooks shape: `{"type", "timestamp", "data"}`, where `data`
 * is the event exactly as GET /v1/sessions/events sends it (its `cursor` resumes that feed). The
 * message id (`webhook-id`) is the event's cursor: the same on every attempt, so receivers can
 * drop repeats.
 */
export function webhookMessage(event: SessionEvent, tenantId: string, cursorKey: Buffer): { id: string; body: string } {
  const cursorOf = (seq: number) => encodeEventCursor(cursorKey, tenantId, seq);
  const data = encodeEvent(create(WatchSessionEventsResponseSchema, toProtoEvent({ kind: "event", event }, cursorOf, event.occurredAt)));
  const timestamp = wholeSeconds(event.occurredAt).toISOString().replace(".000Z", "Z");
  return { id: cursorOf(event.seq), body: `{"type":${JSON.stringify(event.type)},"timestamp":${JSON.stringify(timestamp)},"data":${data}}` };
}
