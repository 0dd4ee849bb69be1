import { create, createRegistry, getOption, isFieldSet, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator, type Violation } from "@bufbuild/protovalidate";
import { field as fieldRules, message as messageRules } from "../../gen/buf/validate/validate_pb.js";
import { file_sessions_v1_rules } from "../../gen/sessions/v1/rules_pb.js";
import { AppError } from "../domain/errors.js";
import { schemaRegexMatch } from "./regex-match.js";
import { enumShortName } from "./rest-json.js";

/**
 * Request validation: the rules the proto declares on request fields (`buf.validate`, and the
 * predefined text rules of sessions/v1/rules.proto), enforced by protovalidate once per call in the
 * pipeline, so that every protocol, REST included, applies the same rules. What protovalidate
 * cannot say (an answer other than invalid_request: a forged cursor, an unknown refresh token, a
 * token that is merely invalid; values the service fills in or cuts) stays with the domain.
 */

/** One broken rule as callers see it. */
export interface FieldViolation {
  /** The field's proto name (as REST JSON spells it), e.g. `user_id`; empty for a rule of the whole message no field can be named for. */
  field: string;
  /** The protovalidate rule id, e.g. `string.max_len`, `required`, `identifier.no_edge_whitespace`. */
  rule: string;
  /** A sentence naming the field, e.g. "user_id must be at most 255 characters". */
  message: string;
}

/** A request that breaks rules its schema declares: invalid_request about its first violation, carrying them all. */
export class InvalidRequestError extends AppError {
  constructor(readonly violations: readonly [FieldViolation, ...FieldViolation[]]) {
    super("invalid_request", violations[0].message, violations[0].field || undefined);
  }
}

export interface RequestValidator {
  /** Throws InvalidRequestError listing every violation when `message` breaks a rule `schema` declares. */
  check(schema: DescMessage, message: Message): void;
}

/**
 * Builds the validator once, at start, and compiles the rules of each of `schemas` there: a rule
 * that does not compile stops the start instead of failing calls.
 */
export function createRequestValidator(schemas: Iterable<DescMessage>): RequestValidator {
  // The registry holds the predefined rules (rules.proto), which protovalidate must know to apply.
  const validator = createValidator({ registry: createRegistry(file_sessions_v1_rules), regexMatch: schemaRegexMatch });
  for (const schema of schemas) {
    const warmUp = validator.validate(schema, create(schema));
    if (warmUp.kind === "error") throw warmUp.error;
  }
  return {
    check(schema, message) {
      const result = validator.validate(schema, message);
      if (result.kind === "valid") return;
      // A rule that fails to evaluate is our bug, not the caller's: the pipeline answers it as internal.
      if (result.kind === "error") throw result.error;
      const [first, ...rest] = result.violations.map((v) => fieldViolationOf(schema, message, v));
      throw new InvalidRequestError([first as FieldViolation, ...rest]);
    },
  };
}

function fieldViolationOf(schema: DescMessage, message: Message, violation: Violation): FieldViolation {
  const path = pathToString(violation.field);
  const field = path !== "" ? path : violation.ruleId === "message.oneof" ? oneofFieldOf(schema, message) : "";
  const desc = schema.fields.find((f) => f.name === field);
  const sentence = violation.ruleId === "message.oneof" ? oneofSentenceOf(schema, message, field) : sentenceOf(field, desc, violation);
  return { field, rule: violation.ruleId, message: sentence };
}

/** A broken oneof rule in words: "user_id or all_users is required (exactly one)", "since cannot be given with after". */
function oneofSentenceOf(schema: DescMessage, message: Message, field: string): string {
  const rule = getOption(schema, messageRules).oneof.find((r) => r.fields.includes(field));
  const desc = schema.fields.find((f) => f.name === field);
  if (rule === undefined || desc === undefined) return `${field} conflicts with another field`;
  const others = rule.fields.filter((name) => name !== field);
  return !isFieldSet(message, desc)
    ? `${field} or ${others.join(" or ")} is required (exactly one of them)`
    : `${field} cannot be given with ${others.join(" or ")}`;
}

/**
 * The field a broken message oneof rule (exactly one, or at most one, of some fields) is about,
 * which protovalidate does not name: with none given, the first the rule lists (what callers give
 * most often: user_id, after); with several, the second one given, the one that conflicts.
 */
function oneofFieldOf(schema: DescMessage, message: Message): string {
  for (const rule of getOption(schema, messageRules).oneof) {
    const given = rule.fields.filter((name) => {
      const f = schema.fields.find((candidate) => candidate.name === name);
      return f !== undefined && isFieldSet(message, f);
    });
    if (given.length > 1) return given[1] as string;
    if (given.length === 0 && rule.required) return rule.fields[0] ?? "";
  }
  return "";
}

/**
 * A violation as one sentence that starts with the field, in the REST terms callers use: enum
 * values by their short names (not numbers), an empty value as empty. Anything else is
 * protovalidate's own message ("must be at most 255 characters").
 */
function sentenceOf(field: string, desc: DescField | undefined, violation: Violation): string {
  const { ruleId } = violation;
  if (field === "") return violation.message;
  if (ruleId === "required") return `${field} is required`;
  const rules = desc ? getOption(desc, fieldRules).type : undefined;
  if (desc?.enum && rules?.case === "enum" && ruleId.startsWith("enum.")) {
    const { notIn, in: only } = rules.value;
    const allowed = desc.enum.values.filter((v) => v.number !== 0 && !notIn.includes(v.number) && (only.length === 0 || only.includes(v.number)));
    return `${field} must be one of ${allowed.map((v) => enumShortName(desc.enum as NonNullable<DescField["enum"]>, v.name)).join(", ")}`;
  }
  if (ruleId === "string.min_len" && rules?.case === "string" && rules.value.minLen === 1n) return `${field} must not be empty`;
  return `${field} ${violation.message.replace(/^value /, "")}`;
}
