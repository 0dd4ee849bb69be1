import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** The node flags `npm start` runs the service with (package.json is where they are decided). */
export function productionNodeFlags(): string[] {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const start = (JSON.parse(readFileSync(`${root}/package.json`, "utf8")) as { scripts: { start: string } }).scripts.start;
  const flags = /exec node (.*?) ?dist\/src\/main\.js/.exec(start)?.[1];
  if (flags === undefined) throw new Error("package.json's start script no longer runs `exec node … dist/src/main.js`");
  return flags.split(" ").filter(Boolean);
}
