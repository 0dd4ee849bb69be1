#!/usr/bin/env node
// Runs the TypeScript CLI through tsx, so `npx sessionctl` works right after `npm ci`.
import { register } from "tsx/esm/api";

register();
await import("../src/cli/sessionctl.ts");
