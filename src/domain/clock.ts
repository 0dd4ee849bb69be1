/** Time is an input: production uses the system clock, tests inject a fixed or stepped one. */
export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };
