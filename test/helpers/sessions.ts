import type { CreateInput } from "../../src/domain/session-service.js";

/** A valid CreateSession input for the domain, with `over` applied. */
export const createInput = (over: Partial<CreateInput> = {}): CreateInput => ({
  userId: "usr_1",
  userAgent: "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)",
  ipAddress: "203.0.113.42",
  country: "us",
  deviceType: undefined,
  role: "",
  orgId: undefined,
  isMfaVerified: false,
  ...over,
});

