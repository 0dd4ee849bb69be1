/** Time is an input: production uses the system clock, tests inject a fixed or stepped one. */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };

/**
 * The one rule for timestamp precision: every instant the service records about a session or signs
 * into a token is a whole second (truncated), as the seed's examples show and as JWT `iat`/`exp`
 * are. So `access_token_expires_at` is exactly the token's `exp`, and a time the API shows is the
 * time the service decides with.
 */
export function wholeSeconds(date: Date): Date {
  return new Date(Math.floor(date.getTime() / 1000) * 1000);
}
