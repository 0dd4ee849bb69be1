import { create, type DescField, type DescMessage, ScalarType, toJson } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { SessionSchema, SessionService } from "../../gen/sessions/v1/sessions_pb.js";
import { restJsonEncoder, toRestJson } from "../../src/transport/rest-json.js";

/**
 * The direct REST JSON encoder must write exactly what the protobuf-es path (toJson, then the REST
 * translation) writes: checked on random messages of every response type of the service, with
 * every field randomly set, unset, empty or odd (unicode, quotes, control characters, big numbers,
 * timestamps with 0, 3, 6 and 9 fractional digits, unknown enum numbers).
 */

function random(seed: number) {
  let s = seed;
  return () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
}

const oddStrings = ["", "plain", 'quote " and \\ backslash', "line\nbreak\ttab", "\u0000\u001f\u2028\u2029", "ünïcödé 😀", "</script>"];

function randomValue(field: DescField, rnd: () => number, depth: number): unknown {
  if (field.message) {
    if (field.message.typeName === "google.protobuf.Timestamp") {
      const nanos = [0, 123_000_000, 123_456_000, 123_456_789][Math.floor(rnd() * 4)] as number;
      return { seconds: BigInt(Math.floor(rnd() * 4_000_000_000)), nanos };
    }
    return depth > 2 ? undefined : randomMessage(field.message, rnd, depth + 1);
  }
  if (field.enum) return Math.floor(rnd() * (field.enum.values.length + 1));
  switch (field.scalar) {
    case ScalarType.STRING:
      return oddStrings[Math.floor(rnd() * oddStrings.length)];
    case ScalarType.BOOL:
      return rnd() < 0.5;
    case ScalarType.INT32:
      return Math.floor(rnd() * 2 ** 31) * (rnd() < 0.5 ? -1 : 1);
    case ScalarType.INT64:
      return BigInt(Math.floor(rnd() * 2 ** 53));
    case ScalarType.BYTES:
      return new Uint8Array([1, 2, 255]);
    default:
      return undefined;
  }
}

function randomMessage(schema: DescMessage, rnd: () => number, depth = 0): object {
  const init: Record<string, unknown> = {};
  for (const field of schema.fields) {
    if (rnd() < 0.25) continue; // left unset
    const value =
      field.fieldKind === "list" ? Array.from({ length: Math.floor(rnd() * 3) }, () => randomValue(field, rnd, depth)).filter((v) => v !== undefined) : randomValue(field, rnd, depth);
    if (value === undefined) continue;
    if (field.oneof) init[field.oneof.localName] = { case: field.localName, value };
    else init[field.localName] = value;
  }
  return create(schema, init as never);
}

describe("restJsonEncoder", () => {
  // Every response and every message in one (the well-known types are checked inside them).
  const schemas = [...new Set(SessionService.methods.flatMap((m) => [m.output, ...m.output.fields.flatMap((f) => (f.message ? [f.message] : []))]))].filter(
    (s) => !s.typeName.startsWith("google.protobuf."),
  );

  it.each(schemas.map((s) => [s.typeName, s] as const))("writes %s exactly as toRestJson does, on 300 random messages", (_name, schema) => {
    const rnd = random(schema.typeName.length);
    const encode = restJsonEncoder(schema);
    for (let i = 0; i < 300; i++) {
      const message = randomMessage(schema, rnd);
      expect(encode(message as never)).toBe(JSON.stringify(toRestJson(schema, message as never)));
    }
  });

  it("writes timestamps across the whole Timestamp range (years 1 to 9999) as protobuf-es does", () => {
    const rnd = random(7);
    const first = -62_135_596_800; // 0001-01-01T00:00:00Z
    const last = 253_402_300_799; // 9999-12-31T23:59:59Z
    const encode = restJsonEncoder(SessionSchema);
    const edges = [first, last, -1, 0, 1, 86_399, 86_400, -86_400, -86_401, 951_782_400 /* 2000-02-29 */];
    const seconds = [...edges, ...Array.from({ length: 20_000 }, () => first + Math.floor(rnd() * (last - first + 1)))];
    for (const s of seconds) {
      const nanos = [0, 1, 10_000_000, 999_999_999][Math.floor(rnd() * 4)] as number;
      const createdAt = create(TimestampSchema, { seconds: BigInt(s), nanos });
      const written = JSON.parse(encode(create(SessionSchema, { createdAt }))) as { created_at: string };
      expect(written.created_at).toBe(toJson(TimestampSchema, createdAt));
    }
  });
});
