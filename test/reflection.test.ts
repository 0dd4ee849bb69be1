import { execFile } from "node:child_process";
import type { AddressInfo } from "node:net";
import { promisify } from "node:util";
import { create, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import Fastify, { type FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../gen/grpc/health/v1/health_pb.js";
import * as v1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { SessionService, SessionStatus } from "../gen/sessions/v1/sessions_pb.js";
import { createOnePort } from "../src/server/one-port.js";
import { registerHealth } from "../src/transport/health.js";
import { registerReflection } from "../src/transport/reflection.js";
import { registerRpcRoutes } from "../src/transport/rpc-routes.js";

const run = promisify(execFile);
const buf = new URL("../node_modules/.bin/buf", import.meta.url).pathname;

let app: FastifyInstance;
let url: string;
let serving = true;

beforeAll(async () => {
  const onePort = createOnePort();
  app = Fastify({ serverFactory: onePort.serverFactory });
  app.addHook("preClose", onePort.closeConnections);
  registerRpcRoutes(app, {
    routes(router) {
      router.service(SessionService, {
        listSessions: (req) => ({ data: [{ id: "ses_1", userId: req.userId, status: SessionStatus.ACTIVE }] }),
      });
      registerHealth(router, () => serving, { watchIntervalMs: 50 });
      registerReflection(router);
    },
  });
  await app.listen({ port: 0, host: "127.0.0.1" });
  url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});
afterAll(() => app.close());

/** buf curl over gRPC with h2c, its schema from the server's reflection. */
async function bufCurl(...args: string[]): Promise<string> {
  const { stdout } = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], {
    timeout: 20_000,
  });
  return stdout;
}

describe("buf curl through server reflection", () => {
  const methods = [
    "sessions.v1.SessionService/ListSessions",
    "sessions.v1.SessionService/RefreshSession",
    "grpc.health.v1.Health/Check",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
  ];

  it.each(["grpc-v1", "grpc-v1alpha"])("lists the methods with %s", async (reflectProtocol) => {
    const out = await bufCurl("--reflect-protocol", reflectProtocol, "--list-methods", url);
    expect(out.split("\n")).toEqual(expect.arrayContaining(methods));
  });

  it("calls an RPC it only knows from reflection", async () => {
    const out = await bufCurl("-d", '{"userId":"usr_1"}', `${url}/sessions.v1.SessionService/ListSessions`);
    expect(JSON.parse(out)).toEqual({
      data: [{ id: "ses_1", userId: "usr_1", status: "SESSION_STATUS_ACTIVE" }],
    });
  });
});

describe("server reflection", () => {
  const reflect = async (...requests: v1.ServerReflectionRequest["messageRequest"][]) => {
    const client = createClient(v1.ServerReflection, createGrpcTransport({ baseUrl: url }));
    const responses: v1.ServerReflectionResponse["messageResponse"][] = [];
    const input = requests.map((messageRequest) => create(v1.ServerReflectionRequestSchema, { messageRequest }));
    for await (const res of client.serverReflectionInfo(
      (async function* () {
        yield* input;
      })(),
    )) {
      responses.push(res.messageResponse);
    }
    return responses;
  };
  const fileNames = (res: v1.ServerReflectionResponse["messageResponse"] | undefined) => {
    if (res?.case !== "fileDescriptorResponse") throw new Error(`not a file response: ${res?.case}`);
    return res.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
  };

  it("lists every service the router serves, health and reflection included", async () => {
    const [res] = await reflect({ case: "listServices", value: "" });
    expect(res?.case === "listServicesResponse" && res.value.service.map((s) => s.name).sort()).toEqual([
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
      "sessions.v1.SessionService",
    ]);
  });

  it("answers a symbol with its file and imports, and sends no file twice on one stream", async () => {
    const [method, message, again] = await reflect(
      { case: "fileContainingSymbol", value: "sessions.v1.SessionService.ListSessions" },
      { case: "fileContainingSymbol", value: "sessions.v1.Session" },
      { case: "fileByFilename", value: "google/api/annotations.proto" },
    );
    expect(fileNames(method)[0]).toBe("sessions/v1/sessions.proto");
    expect(fileNames(method).sort()).toEqual([
      // The validation rules and field behaviors sessions.proto declares, with what they import.
      "buf/validate/validate.proto",
      "google/api/annotations.proto",
      "google/api/field_behavior.proto",
      "google/api/http.proto",
      "google/protobuf/descriptor.proto",
      "google/protobuf/duration.proto",
      "google/protobuf/field_mask.proto",
      "google/protobuf/timestamp.proto",
      "sessions/v1/options.proto",
      "sessions/v1/rules.proto",
      "sessions/v1/sessions.proto",
    ]);
    expect(fileNames(message)).toEqual(["sessions/v1/sessions.proto"]);
    expect(fileNames(again)).toEqual(["google/api/annotations.proto"]);
  });

  it("finds messages, enums, fields and files", async () => {
    const answers = await reflect(
      { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.ServingStatus" },
      { case: "fileContainingSymbol", value: "sessions.v1.Session.user_id" },
      { case: "fileByFilename", value: "grpc/reflection/v1alpha/reflection.proto" },
    );
    expect(answers.map((a) => fileNames(a)[0])).toEqual([
      "grpc/health/v1/health.proto",
      "sessions/v1/sessions.proto",
      "grpc/reflection/v1alpha/reflection.proto",
    ]);
  });

  it("answers extensions", async () => {
    const [ext, numbers] = await reflect(
      {
        case: "fileContainingExtension",
        value: create(v1.ExtensionRequestSchema, {
          containingType: "google.protobuf.MethodOptions",
          extensionNumber: 50001,
        }),
      },
      { case: "allExtensionNumbersOfType", value: "google.protobuf.MethodOptions" },
    );
    expect(fileNames(ext)[0]).toBe("sessions/v1/options.proto");
    expect(numbers?.case === "allExtensionNumbersResponse" && numbers.value.extensionNumber.sort()).toEqual([
      50001, 50002, 50003, 50004, 72295728,
    ]);
  });

  it("answers unknown names with NOT_FOUND error responses, keeping the stream open", async () => {
    const answers = await reflect(
      { case: "fileContainingSymbol", value: "sessions.v1.Nope" },
      { case: "fileContainingSymbol", value: "sessions.v1.SessionService.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
      {
        case: "fileContainingExtension",
        value: create(v1.ExtensionRequestSchema, {
          containingType: "google.protobuf.MethodOptions",
          extensionNumber: 1,
        }),
      },
      { case: "allExtensionNumbersOfType", value: "nope.Nope" },
      { case: "listServices", value: "" },
    );
    expect(answers.map((a) => (a?.case === "errorResponse" ? a.value.errorCode : a?.case))).toEqual([
      Code.NotFound,
      Code.NotFound,
      Code.NotFound,
      Code.NotFound,
      Code.NotFound,
      "listServicesResponse",
    ]);
    expect(Code.NotFound).toBe(5);
  });

  it("answers v1alpha the same way", async () => {
    const client = createClient(v1alpha.ServerReflection, createGrpcTransport({ baseUrl: url }));
    const request = create(v1alpha.ServerReflectionRequestSchema, {
      host: "example",
      messageRequest: { case: "fileContainingSymbol", value: "sessions.v1.SessionService" },
    });
    for await (const res of client.serverReflectionInfo(
      (async function* () {
        yield request;
      })(),
    )) {
      expect(res.validHost).toBe("example");
      expect(res.originalRequest?.$typeName).toBe("grpc.reflection.v1alpha.ServerReflectionRequest");
      expect(res.messageResponse.case).toBe("fileDescriptorResponse");
    }
  });
});

describe("grpc.health.v1.Health", () => {
  const health = () => createClient(Health, createGrpcTransport({ baseUrl: url }));

  it("checks the server and its services, and rejects unknown ones with NOT_FOUND", async () => {
    expect((await health().check({})).status).toBe(Status.SERVING);
    expect((await health().check({ service: "sessions.v1.SessionService" })).status).toBe(Status.SERVING);
    const err = await health()
      .check({ service: "nope.v1.Nope" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(err instanceof ConnectError && err.code).toBe(Code.NotFound);
  });

  it("lists the statuses", async () => {
    const { statuses } = await health().list({});
    expect(Object.keys(statuses)).toEqual(
      expect.arrayContaining(["", "sessions.v1.SessionService", "grpc.health.v1.Health"]),
    );
    expect(statuses[""]?.status).toBe(Status.SERVING);
  });

  /** The first n statuses a Watch sends; calling onStatus with each. */
  async function watch(service: string, n: number, onStatus: (seen: Status[]) => void = () => {}) {
    // Leaving the loop does not cancel a connect-es call; only its signal does.
    const abort = new AbortController();
    const seen: Status[] = [];
    try {
      for await (const res of health().watch({ service }, { signal: abort.signal })) {
        seen.push(res.status);
        onStatus(seen);
        if (seen.length === n) break;
      }
    } finally {
      abort.abort();
    }
    return seen;
  }

  it("watches: the current status first, then each change", async () => {
    try {
      const seen = await watch("", 2, () => (serving = false));
      expect(seen).toEqual([Status.SERVING, Status.NOT_SERVING]);
    } finally {
      serving = true;
    }
  });

  it("watches an unknown service as SERVICE_UNKNOWN without failing", async () => {
    expect(await watch("nope.v1.Nope", 1)).toEqual([Status.SERVICE_UNKNOWN]);
  });
});
