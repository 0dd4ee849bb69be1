import { type MessageInitShape, clone, create, setExtension } from "@bufbuild/protobuf";
import {
  CodeGeneratorRequestSchema,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FieldOptionsSchema,
  FileDescriptorProtoSchema,
  MessageOptionsSchema,
  MethodOptionsSchema,
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_field_mask,
  file_google_protobuf_timestamp,
} from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { file_buf_validate_validate, field as fieldRules, FieldRulesSchema, Ignore, message as messageRules, MessageRulesSchema } from "../../gen/buf/validate/validate_pb.js";
import { file_google_api_annotations, http } from "../../gen/google/api/annotations_pb.js";
import { FieldBehavior, field_behavior, file_google_api_field_behavior } from "../../gen/google/api/field_behavior_pb.js";
import { file_google_api_http, HttpRuleSchema } from "../../gen/google/api/http_pb.js";
import { generateOpenApi } from "../../tools/protoc-gen-openapi.js";

/**
 * tools/protoc-gen-openapi.ts on a schema of its own, which uses what the service's proto may not
 * (yet): buf.validate rules of every kind it reads, google.api.field_behavior, no project options.
 * test/openapi.test.ts holds the real document to the real server.
 */

const { STRING: TYPE_STRING, INT32: TYPE_INT32, INT64: TYPE_INT64, ENUM: TYPE_ENUM, MESSAGE: TYPE_MESSAGE, BOOL: TYPE_BOOL } = FieldDescriptorProto_Type;
const { OPTIONAL: LABEL_OPTIONAL, REPEATED: LABEL_REPEATED } = FieldDescriptorProto_Label;

function field(
  name: string,
  number: number,
  type: FieldDescriptorProto_Type,
  { typeName, label = LABEL_OPTIONAL, rules, behaviors }: {
    typeName?: string;
    label?: FieldDescriptorProto_Label;
    rules?: MessageInitShape<typeof FieldRulesSchema>;
    behaviors?: FieldBehavior[];
  } = {},
) {
  const options = create(FieldOptionsSchema);
  if (rules) setExtension(options, fieldRules, create(FieldRulesSchema, rules));
  if (behaviors) setExtension(options, field_behavior, behaviors);
  return { name, number, type, label, jsonName: name, ...(typeName ? { typeName } : {}), options };
}

function route(rule: MessageInitShape<typeof HttpRuleSchema>) {
  const options = create(MethodOptionsSchema);
  setExtension(options, http, create(HttpRuleSchema, rule));
  return options;
}

const oneOfNameOrCode = create(MessageOptionsSchema);
setExtension(oneOfNameOrCode, messageRules, create(MessageRulesSchema, { oneof: [{ fields: ["name", "code"], required: false }] }));

const fixture = create(FileDescriptorProtoSchema, {
  name: "fixture/v1/things.proto",
  package: "fixture.v1",
  syntax: "proto3",
  dependency: ["google/api/annotations.proto", "google/api/field_behavior.proto", "buf/validate/validate.proto", "google/protobuf/timestamp.proto"],
  enumType: [{ name: "Kind", value: [{ name: "KIND_UNSPECIFIED", number: 0 }, { name: "KIND_SMALL", number: 1 }, { name: "KIND_LARGE", number: 2 }] }],
  messageType: [
    {
      name: "Thing",
      field: [
        field("id", 1, TYPE_STRING, { behaviors: [FieldBehavior.OUTPUT_ONLY] }),
        field("size", 2, TYPE_INT64),
        field("kind", 3, TYPE_ENUM, { typeName: ".fixture.v1.Kind" }),
        field("tags", 4, TYPE_STRING, { label: LABEL_REPEATED }),
        field("created_at", 5, TYPE_MESSAGE, { typeName: ".google.protobuf.Timestamp" }),
      ],
    },
    {
      name: "CreateThingRequest",
      options: oneOfNameOrCode,
      field: [
        field("name", 1, TYPE_STRING, {
          behaviors: [FieldBehavior.REQUIRED],
          rules: { type: { case: "string", value: { minLen: 3n, maxLen: 10n, pattern: "^[a-z]+$" } } },
        }),
        field("count", 2, TYPE_INT32, { rules: { type: { case: "int32", value: { greaterThan: { case: "gt", value: 0 }, lessThan: { case: "lte", value: 9 } } } } }),
        field("kind", 3, TYPE_ENUM, { typeName: ".fixture.v1.Kind", rules: { type: { case: "enum", value: { definedOnly: true, notIn: [2] } } } }),
        field("tags", 4, TYPE_STRING, {
          label: LABEL_REPEATED,
          rules: { type: { case: "repeated", value: { minItems: 1n, items: { type: { case: "string", value: { maxLen: 4n } } } } } },
        }),
        field("code", 5, TYPE_STRING, { rules: { ignore: Ignore.IF_ZERO_VALUE, type: { case: "string", value: { len: 2n } } } }),
        field("address", 6, TYPE_STRING, { rules: { type: { case: "string", value: { wellKnown: { case: "ip", value: true } } } } }),
      ],
    },
    {
      name: "GetThingRequest",
      field: [field("id", 1, TYPE_STRING, { rules: { required: true } }), field("verbose", 2, TYPE_BOOL)],
    },
  ],
  service: [
    {
      name: "Things",
      method: [
        { name: "CreateThing", inputType: ".fixture.v1.CreateThingRequest", outputType: ".fixture.v1.Thing", options: route({ pattern: { case: "post", value: "/v1/things" }, body: "*" }) },
        { name: "GetThing", inputType: ".fixture.v1.GetThingRequest", outputType: ".fixture.v1.Thing", options: route({ pattern: { case: "get", value: "/v1/things/{id}" } }) },
      ],
    },
  ],
});

const dependencies = [
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_field_mask,
  file_google_protobuf_timestamp,
  file_google_api_http,
  file_google_api_annotations,
  file_google_api_field_behavior,
  file_buf_validate_validate,
].map((file) => file.proto);

function generate(files = [...dependencies, fixture], parameter = "file=things.json,title=Things") {
  const request = create(CodeGeneratorRequestSchema, { fileToGenerate: [fixture.name], parameter, protoFile: files });
  const { name, content } = generateOpenApi(request);
  return { name, doc: JSON.parse(content) as Record<string, any> };
}

describe("protoc-gen-openapi", () => {
  const { name, doc } = generate();
  const schemas = doc.components.schemas;

  it("writes one OpenAPI 3.1 document, named by its options", () => {
    expect(name).toBe("things.json");
    expect(doc.openapi).toBe("3.1.0");
    expect(doc.info).toMatchObject({ title: "Things", version: "v1" });
  });

  it("maps google.api.http rules as the REST transcoder does: path variables, the rest of a GET in the query, body *", () => {
    expect(Object.keys(doc.paths).sort()).toEqual(["/v1/things", "/v1/things/{id}"]);
    const get = doc.paths["/v1/things/{id}"].get;
    expect(get.parameters.map((p: any) => [p.in, p.name, p.required])).toEqual([
      ["path", "id", true],
      ["query", "verbose", false],
    ]);
    expect(get.parameters[0].schema).toEqual({ type: "string", minLength: 1 });
    const post = doc.paths["/v1/things"].post;
    expect(post.parameters).toBeUndefined();
    expect(post.requestBody).toMatchObject({ required: true, content: { "application/json": { schema: { $ref: "#/components/schemas/CreateThingRequest" } } } });
    expect(Object.keys(post.responses)).toEqual(["200", "400", "401", "413", "415", "431"]);
    expect(Object.keys(get.responses)).toEqual(["200", "400", "401", "414", "431"]);
    expect(post.responses["401"].content["application/json"].schema.allOf[1].properties.error.properties.code.enum).toEqual(["missing_token", "invalid_api_key"]);
  });

  it("writes responses as REST JSON: every field present, null when unset, enums by short name, int64 as a string", () => {
    const thing = schemas.Thing;
    expect(thing.required).toEqual(["id", "size", "kind", "tags", "created_at"]);
    expect(thing.properties.id).toEqual({ type: "string", readOnly: true });
    expect(thing.properties.size).toMatchObject({ type: "string", pattern: "^-?[0-9]+$", format: "int64" });
    expect(thing.properties.kind).toEqual({ type: ["string", "null"], enum: ["small", "large", null] });
    expect(thing.properties.tags).toEqual({ type: "array", items: { type: "string" } });
    expect(thing.properties.created_at).toMatchObject({ type: ["string", "null"], format: "date-time" });
  });

  it("turns buf.validate rules and field_behavior into JSON Schema for requests", () => {
    const request = schemas.CreateThingRequest;
    expect(request.additionalProperties).toBe(false);
    expect(request.required).toEqual(["name"]);
    expect(request.properties.name).toEqual({ type: "string", minLength: 3, maxLength: 10, pattern: "^[a-z]+$" });
    expect(request.properties.count).toMatchObject({ type: "integer", exclusiveMinimum: 0, maximum: 9 });
    expect(request.properties.kind).toEqual({ type: "string", enum: ["small"] });
    expect(request.properties.tags).toEqual({ type: "array", items: { type: "string", maxLength: 4 }, minItems: 1 });
    expect(request.properties.code).toEqual({ anyOf: [{ type: "string", const: "" }, { type: "string", minLength: 2, maxLength: 2 }] });
    expect(request.properties.address.anyOf).toEqual([{ type: "string", format: "ipv4" }, { type: "string", format: "ipv6" }]);
    expect(request.description).toContain("At most one of `name`, `code` may be given.");
  });

  it("needs none of the annotations: without buf.validate and field_behavior, the same routes and plain types", () => {
    const strip = (f: (typeof fixture.messageType)[number]["field"][number]) => ({ ...f, options: create(FieldOptionsSchema) });
    const bare = create(FileDescriptorProtoSchema, {
      ...fixture,
      dependency: ["google/api/annotations.proto", "google/protobuf/timestamp.proto"],
      messageType: fixture.messageType.map((m) => ({ ...m, options: undefined, field: m.field.map(strip) })),
    });
    const files = [file_google_protobuf_descriptor, file_google_protobuf_timestamp, file_google_api_http, file_google_api_annotations].map((f) => f.proto);
    const request = create(CodeGeneratorRequestSchema, { fileToGenerate: [bare.name], protoFile: [...files, bare] });
    const plain = JSON.parse(generateOpenApi(request).content) as Record<string, any>;
    expect(Object.keys(plain.paths).sort()).toEqual(Object.keys(doc.paths).sort());
    expect(plain.components.schemas.CreateThingRequest.required).toBeUndefined();
    expect(plain.components.schemas.CreateThingRequest.properties.name).toEqual({ type: "string" });
  });

  it("refuses a mapping the REST transcoder would refuse, naming the RPC", () => {
    const custom = clone(FileDescriptorProtoSchema, fixture);
    const getThing = custom.service[0]?.method[1];
    if (getThing === undefined) expect.fail("the fixture has GetThing");
    getThing.options = route({ pattern: { case: "custom", value: { kind: "HEAD", path: "/v1/x" } } });
    expect(() => generate([...dependencies, custom])).toThrow(/fixture\.v1\.Things\.GetThing: google\.api\.http needs get/);
    expect(() => generate(undefined, "colour=red")).toThrow(/unknown option "colour=red"/);
  });
});
