import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, type BadRequest_FieldViolationSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { AppError, type ErrorCode, isErrorCode } from "../domain/errors.js";
import { errorTable } from "./error-table.js";
import { InvalidRequestError } from "./validation.js";

export { errorTable };

/** The ErrorInfo domain our errors carry. */
export const errorDomain = "sessions.v1";

/** What a REST error body says, and what a Connect error carries as its ErrorInfo reason. */
export interface PublicError {
  code: ErrorCode;
  message: string;
  status: number;
  /** The request field or parameter a validation error is about. */
  field?: string;
}

const genericInternal = "internal error";

/**
 * Turns anything thrown into the error a caller may see. AppErrors keep their code and message;
 * ConnectErrors raised by the framework keep theirs; anything else becomes a generic `internal`
 * (the original is returned as `cause` for the log only).
 */
export function toPublicError(err: unknown): PublicError & { cause?: unknown } {
  if (err instanceof AppError) {
    return { code: err.code, message: err.message, status: errorTable[err.code].status, ...(err.field !== undefined ? { field: err.field } : {}) };
  }
  if (err instanceof ConnectError) {
    const info = err.findDetails(ErrorInfoSchema)[0];
    const reason = info?.reason;
    if (reason !== undefined && isErrorCode(reason)) {
      const field = info?.metadata.field;
      return { code: reason, message: err.rawMessage, status: errorTable[reason].status, ...(field !== undefined ? { field } : {}) };
    }
    const code = codeFromConnect(err.code);
    const message = code === "internal" ? genericInternal : err.rawMessage;
    return { code, message, status: errorTable[code].status, cause: err };
  }
  return { code: "internal", message: genericInternal, status: 500, cause: err };
}

/**
 * Turns anything thrown into a ConnectError with a google.rpc.ErrorInfo detail (reason: our code)
 * and, when it is INVALID_ARGUMENT about request fields, a google.rpc.BadRequest detail: a field
 * violation for every rule the request broke (reason: the rule's id in upper snake case,
 * `string.max_len` → STRING_MAX_LEN), or for the one field the error names.
 */
export function toConnectError(err: unknown): ConnectError {
  const pub = toPublicError(err);
  const { code } = errorTable[pub.code];
  const metadata: Record<string, string> = {};
  if (pub.field !== undefined) metadata.field = pub.field;
  const errorInfo = { desc: ErrorInfoSchema, value: { reason: pub.code, domain: errorDomain, metadata } };
  const violations: MessageInitShape<typeof BadRequest_FieldViolationSchema>[] =
    err instanceof InvalidRequestError
      ? err.violations.map((v) => ({ field: v.field, description: v.message, reason: v.rule.toUpperCase().replace(/[^A-Z0-9]+/g, "_") }))
      : pub.field !== undefined && code === Code.InvalidArgument
        ? [{ field: pub.field, description: pub.message }]
        : [];
  const badRequest = { desc: BadRequestSchema, value: { fieldViolations: violations } };
  return new ConnectError(pub.message, code, undefined, violations.length > 0 ? [errorInfo, badRequest] : [errorInfo]);
}

function codeFromConnect(code: Code): ErrorCode {
  switch (code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
    case Code.FailedPrecondition:
      return "invalid_request";
    case Code.Unauthenticated:
      return "invalid_api_key";
    case Code.NotFound:
      return "not_found";
    case Code.ResourceExhausted:
      return "payload_too_large";
    case Code.Unimplemented:
      return "method_not_allowed";
    case Code.DeadlineExceeded:
      return "deadline_exceeded";
    case Code.Canceled:
      return "cancelled";
    case Code.Unavailable:
      return "unavailable";
    default:
      return "internal";
  }
}
