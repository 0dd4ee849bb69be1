import { create, fromBinary, toBinary, type DescService } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";

/**
 * A plain @grpc/grpc-js client for a protobuf-es service, with (de)serializers from the generated
 * schemas: the same bytes a grpc-js service using any other generator would send.
 */
export function grpcClient(service: DescService, address: string): grpc.Client & Record<string, Function> {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (m) => Buffer.from(toBinary(method.input, create(method.input, m as never))),
      requestDeserialize: (b: Buffer) => fromBinary(method.input, b),
      responseSerialize: (m) => Buffer.from(toBinary(method.output, create(method.output, m as never))),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
    };
  }
  const Client = grpc.makeGenericClientConstructor(definition, service.name);
  return new Client(address, grpc.credentials.createInsecure()) as never;
}

/** Calls one unary method and resolves with the response, or rejects with the ServiceError. */
export function callUnary<T>(
  client: grpc.Client & Record<string, Function>,
  method: string,
  request: unknown,
  metadata: Record<string, string>,
  deadlineMs = 10_000,
): Promise<T> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  return new Promise((resolve, reject) => {
    client[method]!.call(client, request, md, { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: T) =>
      err ? reject(err) : resolve(res),
    );
  });
}

/** Like callUnary, and also resolves with the response headers (initial metadata) the server sent. */
export function callUnaryWithHeaders<T>(
  client: grpc.Client & Record<string, Function>,
  method: string,
  request: unknown,
  metadata: Record<string, string>,
): Promise<{ response: T; headers: grpc.Metadata }> {
  const md = new grpc.Metadata();
  for (const [k, v] of Object.entries(metadata)) md.set(k, v);
  return new Promise((resolve, reject) => {
    let headers = new grpc.Metadata();
    const call = client[method]!.call(client, request, md, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null, res: T) =>
      err ? reject(err) : resolve({ response: res, headers }),
    ) as grpc.ClientUnaryCall;
    call.on("metadata", (received: grpc.Metadata) => (headers = received));
  });
}
