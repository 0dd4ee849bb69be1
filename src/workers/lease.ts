import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import type { Clock } from "../domain/clock.js";
import type { LeaseStore } from "../domain/ports.js";

/** Background work that one instance at a time does holds a named lease row (it outlives connections). */
export interface Lease {
  /** Takes or renews the lease (renewing once less than 4/5 of it is left); false when another instance holds it or this one is stopping. */
  hold(): Promise<boolean>;
  /** Stops taking or renewing the lease (work in progress stops at its next hold()). */
  stop(): void;
  /** Stops, and gives the lease up if held, so another instance takes over at once. */
  release(): Promise<void>;
}

export function createLease(leases: LeaseStore, name: string, clock: Clock, leaseMs: number, onError: (err: unknown) => void): Lease {
  const holder = `${hostname()}:${process.pid}:${randomBytes(4).toString("hex")}`;
  let heldUntil = 0;
  let hasHeld = false;
  let isStopping = false;
  return {
    async hold() {
      const now = clock.now().getTime();
      if (isStopping) return false;
      if (heldUntil - now > leaseMs / 5) return true;
      const isHeld = await leases.tryAcquire(name, holder, new Date(now), new Date(now + leaseMs));
      heldUntil = isHeld ? now + leaseMs : 0;
      hasHeld ||= isHeld;
      return isHeld;
    },
    stop() {
      isStopping = true;
    },
    async release() {
      isStopping = true;
      if (hasHeld) await leases.release(name, holder, clock.now()).catch(onError);
    },
  };
}
