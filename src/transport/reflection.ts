import { createRegistry, type DescFile, type DescService, type Registry, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

// The two versions' messages differ only in their package, so one implementation answers both.
type MessageRequest =
  | v1.ServerReflectionRequest["messageRequest"]
  | v1alpha.ServerReflectionRequest["messageRequest"];
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

interface Index {
  services: string[];
  files: Map<string, DescFile>;
  registry: Registry;
}

/**
 * Registers gRPC server reflection (grpc.reflection.v1 and v1alpha). It lists the services the
 * router serves, reflection itself included, and `services` served beside it, and describes their
 * files; `files` adds more (for example types only ever packed in an Any). Every answer carries the transitive imports, less
 * those already sent on the same stream, as grpc-go does.
 */
export function registerReflection(router: ConnectRouter, { services = [], files = [] }: { services?: DescService[]; files?: DescFile[] } = {}): void {
  let index: Index | undefined;
  // Built on first use, when every service has been registered.
  const getIndex = () => (index ??= buildIndex(router, services, files));

  async function* serverReflectionInfo<R extends { host: string; messageRequest: MessageRequest }>(
    requests: AsyncIterable<R>,
  ) {
    const sent = new Set<string>();
    for await (const req of requests) {
      const messageResponse = answer(getIndex(), req.messageRequest, sent);
      yield { validHost: req.host, originalRequest: req, messageResponse };
    }
  }
  router.service(v1.ServerReflection, { serverReflectionInfo });
  router.service(v1alpha.ServerReflection, { serverReflectionInfo });
}

function buildIndex(router: ConnectRouter, extraServices: DescService[], extraFiles: DescFile[]): Index {
  const served = [...extraServices, ...router.handlers.map((h) => h.service)];
  const services = [...new Set(served.map((s) => s.typeName))];
  const files = new Map<string, DescFile>();
  const add = (file: DescFile): void => {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    file.dependencies.forEach(add);
  };
  for (const service of served) add(service.file);
  for (const file of extraFiles) add(file);
  return { services, files, registry: createRegistry(...files.values()) };
}

function answer(index: Index, req: MessageRequest, sent: Set<string>): Answer {
  const { registry } = index;
  switch (req.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } };
    case "fileByFilename":
      return withImports(index.files.get(req.value), sent) ?? notFound(`file "${req.value}"`);
    case "fileContainingSymbol":
      return withImports(fileOfSymbol(registry, req.value), sent) ?? notFound(`symbol "${req.value}"`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = req.value;
      const extendee = registry.getMessage(containingType);
      const ext = extendee && registry.getExtensionFor(extendee, extensionNumber);
      return withImports(ext?.file, sent) ?? notFound(`extension ${extensionNumber} of "${containingType}"`);
    }
    case "allExtensionNumbersOfType": {
      if (!registry.getMessage(req.value)) return notFound(`message "${req.value}"`);
      const extensionNumber = [...registry].flatMap((t) =>
        t.kind === "extension" && t.extendee.typeName === req.value ? [t.number] : [],
      );
      return { case: "allExtensionNumbersResponse", value: { baseTypeName: req.value, extensionNumber } };
    }
    default:
      return error(Code.InvalidArgument, "no request set");
  }
}

/** Types by their full name; methods and fields by their parent's name and their own. */
function fileOfSymbol(registry: Registry, name: string): DescFile | undefined {
  const desc = registry.get(name);
  if (desc) return desc.file;
  const dot = name.lastIndexOf(".");
  const parent = dot > 0 ? registry.get(name.slice(0, dot)) : undefined;
  const member = name.slice(dot + 1);
  const members = parent?.kind === "service" ? parent.methods : parent?.kind === "message" ? parent.fields : [];
  return members.some((m) => m.name === member) ? parent?.file : undefined;
}

/** The file first, then its imports breadth-first, skipping files this stream has seen already. */
function withImports(file: DescFile | undefined, sent: Set<string>): Answer | undefined {
  if (!file) return undefined;
  const fileDescriptorProto: Uint8Array[] = [];
  const queue = [file];
  for (const f of queue) {
    if (f !== file && sent.has(f.proto.name)) continue;
    sent.add(f.proto.name);
    fileDescriptorProto.push(toBinary(FileDescriptorProtoSchema, f.proto));
    queue.push(...f.dependencies);
  }
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto } };
}

const notFound = (what: string) => error(Code.NotFound, `${what} not found`);

// Connect's Code enum has the gRPC status numbers.
const error = (errorCode: Code, errorMessage: string): Answer => ({
  case: "errorResponse",
  value: { errorCode, errorMessage },
});
