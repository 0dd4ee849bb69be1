/**
 * The REST JSON dialect differs from proto3 JSON in three ways only: keys are proto field names,
 * every field is present (unset ones as null), and enums are short lower-case names. Everything
 * else (int64 as strings, bytes as base64, RFC 3339 timestamps, …) is proto3 JSON, written and
 * read by protobuf-es, so this module only translates between the two dialects.
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
  mergeFromJson,
  toJson,
} from "@bufbuild/protobuf";
import { AppError } from "../domain/errors.js";

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
    if (!field || options.exclude?.has(field.name)) throw invalid(key, `unknown parameter "${key}"`);
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
  return Object.fromEntries(schema.fields.map((field) => [field.name, restValue(field, json[field.name])]));
}

function restValue(field: DescField, value: JsonValue | undefined): JsonValue {
  if (value === undefined || value === null) return null;
  const { enum: desc, message } = field;
  return mapElements(field, value, (element) => {
    if (desc && typeof element === "string") return element === desc.value[0]?.name ? null : shortName(desc, element);
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
    if (!field || exclude?.has(field.name)) throw invalid(name, `unknown field "${name}"`);
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
    const match = desc.values.find((v) => v.name.toLowerCase() === wanted || shortName(desc, v.name) === wanted);
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

function shortName(desc: DescEnum, name: string): string {
  return name.toLowerCase().slice(desc.sharedPrefix?.length ?? 0);
}

function typeName(field: DescField): string {
  const { scalar, enum: desc, message } = field;
  const element =
    scalar !== undefined
      ? ScalarType[scalar].toLowerCase()
      : desc
        ? `one of ${desc.values.filter((v) => v.number !== 0).map((v) => shortName(desc, v.name)).join(", ")}`
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
  return schema.fields.find((field) => field.name === key || field.jsonName === key);
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
