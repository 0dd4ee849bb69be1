import type { Clock } from "../../src/domain/clock.js";

/** A clock tests move by hand instead of sleeping. */
export function manualClock(start = new Date("2026-01-15T10:30:00.000Z")) {
  let now = start.getTime();
  return {
    now: () => new Date(now),
    advance(ms: number) {
      now += ms;
    },
    set(date: Date) {
      now = date.getTime();
    },
  } satisfies Clock & Record<string, unknown>;
}
