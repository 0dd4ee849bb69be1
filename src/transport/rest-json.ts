/**
 * The REST JSON dialect differs from proto3 JSON in three ways only: keys are proto field names
 * (or a field's `rest_name`, options.proto, where REST keeps a name the proto no longer has), every
 * field is present (unset ones as null), and enums are short lower-case names. Everything
 * else (int64 as strings, bytes as base64, RFC 3339 timestamps, …) is proto3 JSON, read by
 * protobuf-es, so reading only translates between the two dialects. Writing has two forms:
 * toRestJson (protobuf-es's toJson, then the translation) states the dialect; restJsonEncoder
 * writes the same text straight from the message, several times cheaper (a page of 100 sessions is
 * the list endpoint's whole cost), and test/unit/rest-json-encoder.test.ts holds the two equal.
 */
import {
  type DescEnum,
  type DescField,
  type DescMessage,
  type JsonObject,
  type JsonValue,
  type MessageShape,
  ScalarType,
  create,
  getOption,
  mergeFromJson,
  toJson,
} from "@bufbuild/protobuf";
import { base64Encode } from "@bufbuild/protobuf/wire";
import { rest_name } from "../../gen/sessions/v1/options_pb.js";
import { AppError } from "../domain/errors.js";
import { isFieldLike } from "./field-names.js";

/** Path or query-string parameters as fastify parses them. */
export type RestParams = Readonly<Record<string, string | readonly string[] | undefined>>;

export interface RestReadOptions<Desc extends DescMessage> {
  /** Merge into this message instead of a new one. */
  into?: MessageShape<Desc>;
  /** Proto names of top-level fields bound elsewhere (path or body), which are unknown here. */
  exclude?: ReadonlySet<string>;
}

/** Writes a message as REST JSON. */
export function toRestJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): JsonObject {
  const json = toJson(schema, message, { useProtoFieldName: true, alwaysEmitImplicit: true });
  return restObject(schema, json as JsonObject);
}

/** Reads a REST JSON object; throws AppError invalid_request naming the offending field. */
export function fromRestJson<Desc extends DescMessage>(
  schema: Desc,
  json: unknown,
  options: RestReadOptions<Desc> = {},
): MessageShape<Desc> {
  return readObject(schema, json, "", options);
}

/** Reads path or query-string parameters, each converted to its field's type. */
export function fromRestParams<Desc extends DescMessage>(
  schema: Desc,
  params: RestParams,
  options: RestReadOptions<Desc> = {},
): MessageShape<Desc> {
  const json: JsonObject = {};
  for (const [key, raw] of Object.entries(params)) {
    const field = fieldNamed(schema, key);
    if (!field || options.exclude?.has(field.name)) {
      throw isFieldLike(key) ? invalid(key, `unknown parameter "${key}"`) : invalid("", "an unknown query parameter");
    }
    if (raw === undefined) continue;
    const values = (typeof raw === "string" ? [raw] : raw).map((value) => paramJson(field, key, value));
    if (field.fieldKind !== "list" && values.length > 1) throw invalid(field.name, `parameter "${key}" is given more than once`);
    json[key] = field.fieldKind === "list" ? values : (values[0] ?? null);
  }
  return readObject(schema, json, "", options);
}

const integerScalars = new Set([
  ScalarType.INT32, ScalarType.SINT32, ScalarType.SFIXED32, ScalarType.UINT32, ScalarType.FIXED32,
  ScalarType.INT64, ScalarType.SINT64, ScalarType.SFIXED64, ScalarType.UINT64, ScalarType.FIXED64,
]);

/**
 * A parameter's string as the proto3 JSON value protobuf-es reads. Bools are converted; integers
 * must be plain decimal (proto3 JSON would also take `1e2`, `1.0` or ` 5`, which no one means in a
 * URL); the rest (enums, strings) proto3 JSON reads from strings already.
 */
function paramJson(field: DescField, key: string, value: string): JsonValue {
  if (field.scalar === ScalarType.BOOL && (value === "true" || value === "false")) return value === "true";
  if (field.scalar !== undefined && integerScalars.has(field.scalar) && !/^-?[0-9]{1,20}$/.test(value)) {
    throw invalid(field.name, `parameter "${key}" must be a decimal integer`);
  }
  return value;
}

function restObject(schema: DescMessage, json: JsonObject): JsonObject {
  return Object.fromEntries(schema.fields.map((field) => [restNameOf(field), restValue(field, json[field.name])]));
}

const restNames = new WeakMap<DescField, string>();

/** The field's key in REST JSON: its `rest_name` when it has one, else its proto name. Read once per field. */
function restNameOf(field: DescField): string {
  let name = restNames.get(field);
  if (name === undefined) restNames.set(field, (name = getOption(field, rest_name) || field.name));
  return name;
}

function restValue(field: DescField, value: JsonValue | undefined): JsonValue {
  if (value === undefined || value === null) return null;
  const { enum: desc, message } = field;
  return mapElements(field, value, (element) => {
    if (desc && typeof element === "string") return element === desc.value[0]?.name ? null : enumShortName(desc, element);
    return message && !hasOwnJsonForm(message) ? restObject(message, element as JsonObject) : element;
  });
}

function readObject<Desc extends DescMessage>(
  schema: Desc,
  json: unknown,
  path: string,
  { into = create(schema), exclude }: RestReadOptions<Desc>,
): MessageShape<Desc> {
  if (!isObject(json)) throw invalid(path, `${path ? `field "${path}"` : "request body"} must be a JSON object`);
  const seen = new Set<DescField>();
  for (const [key, value] of Object.entries(json)) {
    const field = fieldNamed(schema, key);
    const name = join(path, field?.name ?? key);
    if (!field || exclude?.has(field.name)) {
      if (isFieldLike(key)) throw invalid(name, `unknown field "${name}"`);
      throw invalid("", path ? `an unknown field in "${path}"` : "an unknown field");
    }
    if (seen.has(field)) throw invalid(name, `field "${name}" is given more than once`);
    seen.add(field);
    if (value === null) continue;
    const protoJson = mapElements(field, value, (element, at) => protoElement(field, element, name + at));
    try {
      mergeFromJson(schema, into, { [field.name]: protoJson });
    } catch {
      throw invalid(name, `invalid value for field "${name}" (expected ${typeName(field)})`);
    }
  }
  return into;
}

function protoElement(field: DescField, value: JsonValue, name: string): JsonValue {
  const { enum: desc } = field;
  if (desc) {
    const wanted = typeof value === "string" ? value.toLowerCase() : undefined;
    const match = desc.values.find((v) => v.name.toLowerCase() === wanted || enumShortName(desc, v.name) === wanted);
    if (!match) throw invalid(name, `invalid value for field "${name}" (expected ${typeName(field)})`);
    return match.name;
  }
  // Nested messages are read here too, so that their errors name the nested field; protobuf-es
  // then gets them back as proto3 JSON.
  return field.message && !hasOwnJsonForm(field.message)
    ? toJson(field.message, readObject(field.message, value, name, {}))
    : value;
}

/** Applies fn to each element of a list or map value, or to a singular value. */
function mapElements(field: DescField, value: JsonValue, fn: (element: JsonValue, at: string) => JsonValue): JsonValue {
  switch (field.fieldKind) {
    case "list":
      return Array.isArray(value) ? value.map((element, i) => fn(element, `[${i}]`)) : value;
    case "map":
      return isObject(value) ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fn(v, `.${k}`)])) : value;
    default:
      return fn(value, "");
  }
}

/** An enum value as REST JSON writes it: lower-case, without the prefix its values share (`SESSION_STATUS_ACTIVE` → `active`). */
export function enumShortName(desc: DescEnum, name: string): string {
  return name.toLowerCase().slice(desc.sharedPrefix?.length ?? 0);
}

function typeName(field: DescField): string {
  const { scalar, enum: desc, message } = field;
  const element =
    scalar !== undefined
      ? ScalarType[scalar].toLowerCase()
      : desc
        ? `one of ${desc.values.filter((v) => v.number !== 0).map((v) => enumShortName(desc, v.name)).join(", ")}`
        : message?.typeName;
  return field.fieldKind === "list" ? `a list of ${element}` : field.fieldKind === "map" ? `a map of ${element}` : element;
}

// Well-known types whose proto3 JSON form is not an object of their fields; REST keeps that form.
const ownJsonForm = new Set(
  ["Any", "Duration", "FieldMask", "ListValue", "Struct", "Timestamp", "Value"]
    .concat(["Bool", "Bytes", "Double", "Float", "Int32", "Int64", "String", "UInt32", "UInt64"].map((t) => `${t}Value`))
    .map((name) => `google.protobuf.${name}`),
);

function hasOwnJsonForm(desc: DescMessage): boolean {
  return ownJsonForm.has(desc.typeName);
}

function fieldNamed(schema: DescMessage, key: string): DescField | undefined {
  return schema.fields.find((field) => field.name === key || field.jsonName === key || restNameOf(field) === key);
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function join(path: string, name: string): string {
  return path ? `${path}.${name}` : name;
}

function invalid(field: string, message: string): AppError {
  return new AppError("invalid_request", message, field || undefined);
}

type Encode = (value: unknown) => string;
const encoders = new WeakMap<DescMessage, Encode>();

/**
 * A function writing messages of `schema` as REST JSON text: the same text as
 * JSON.stringify(toRestJson(schema, message)), made once per schema from its fields.
 */
export function restJsonEncoder<Desc extends DescMessage>(schema: Desc): (message: MessageShape<Desc>) => string {
  return messageEncoder(schema) as (message: MessageShape<Desc>) => string;
}

function messageEncoder(schema: DescMessage): Encode {
  let encode = encoders.get(schema);
  if (encode !== undefined) return encode;
  if (hasOwnJsonForm(schema)) {
    encode = schema.typeName === "google.protobuf.Timestamp" ? encodeTimestamp : (m) => JSON.stringify(toJson(schema, m as never));
    encoders.set(schema, encode);
    return encode;
  }
  // Set before the fields are compiled, so a recursive message finds it.
  const parts: { key: string; read: (m: Record<string, unknown>) => unknown; write: Encode }[] = [];
  encode = (m) => {
    let out = "{";
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] as (typeof parts)[number];
      const value = part.read(m as Record<string, unknown>);
      out += (i === 0 ? "" : ",") + part.key + (value === undefined ? "null" : part.write(value));
    }
    return `${out}}`;
  };
  encoders.set(schema, encode);
  for (const field of schema.fields) {
    const key = `${JSON.stringify(restNameOf(field))}:`;
    const { localName } = field;
    const oneof = field.oneof;
    const read = oneof
      ? (m: Record<string, unknown>) => {
          const held = m[oneof.localName] as { case?: string; value?: unknown };
          return held.case === localName ? held.value : undefined;
        }
      : (m: Record<string, unknown>) => m[localName];
    parts.push({ key, read, write: fieldEncoder(field) });
  }
  return encode;
}

function fieldEncoder(field: DescField): Encode {
  const element = elementEncoder(field);
  switch (field.fieldKind) {
    case "list":
      return (list) => `[${(list as unknown[]).map(element).join(",")}]`;
    case "map":
      return (map) => `{${Object.entries(map as Record<string, unknown>).map(([k, v]) => `${JSON.stringify(k)}:${element(v)}`).join(",")}}`;
    default:
      return element;
  }
}

function elementEncoder(field: DescField): Encode {
  if (field.message) return messageEncoder(field.message);
  const desc = field.enum;
  if (desc) {
    const names = new Map(desc.values.map((v) => [v.number, v.number === 0 ? "null" : JSON.stringify(enumShortName(desc, v.name))]));
    return (n) => names.get(n as number) ?? String(n);
  }
  switch (field.scalar) {
    case ScalarType.STRING:
      return (v) => JSON.stringify(v);
    case ScalarType.BOOL:
      return (v) => (v ? "true" : "false");
    case ScalarType.BYTES:
      return (v) => `"${base64Encode(v as Uint8Array)}"`;
    case ScalarType.INT64:
    case ScalarType.UINT64:
    case ScalarType.SINT64:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return (v) => `"${String(v)}"`;
    case ScalarType.FLOAT:
    case ScalarType.DOUBLE:
      return (v) => {
        const n = v as number;
        return Number.isFinite(n) ? String(n) : Number.isNaN(n) ? '"NaN"' : n > 0 ? '"Infinity"' : '"-Infinity"';
      };
    default:
      return (v) => String(v);
  }
}

const secondsPerDay = 86_400;
/** "YYYY-MM-DD" by day since the epoch: a list page's hundreds of timestamps fall on a few days. */
const dates = new Map<number, string>();

function dateOfDay(day: number): string {
  let date = dates.get(day);
  if (date === undefined) {
    if (dates.size >= 4096) dates.clear();
    date = new Date(day * secondsPerDay * 1000).toISOString().slice(0, 10);
    dates.set(day, date);
  }
  return date;
}

const twoDigits = (n: number) => (n < 10 ? `0${n}` : String(n));

/** google.protobuf.Timestamp as proto3 JSON: RFC 3339 UTC, fractional seconds in 3, 6 or 9 digits when any. */
function encodeTimestamp(value: unknown): string {
  const { seconds, nanos } = value as { seconds: bigint; nanos: number };
  const s = Number(seconds);
  const day = Math.floor(s / secondsPerDay);
  const t = s - day * secondsPerDay;
  const base = `${dateOfDay(day)}T${twoDigits(Math.floor(t / 3600))}:${twoDigits(Math.floor(t / 60) % 60)}:${twoDigits(t % 60)}`;
  if (nanos === 0) return `"${base}Z"`;
  const digits = String(nanos).padStart(9, "0");
  const fraction = digits.endsWith("000000") ? digits.slice(0, 3) : digits.endsWith("000") ? digits.slice(0, 6) : digits;
  return `"${base}.${fraction}Z"`;
}
