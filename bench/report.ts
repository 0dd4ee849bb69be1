import { mkdir, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import { fileURLToPath } from "node:url";

/** One measured row: the service against its baseline, or (scale rows) a latency against a goal. */
export interface Row {
  name: string;
  baselineName: string;
  /** Requests per second of the service (0 for latency-only rows). */
  service: number;
  baseline: number;
  ratio: number;
  goal: string;
  goalRatio: number | undefined;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  /** The service's highest resident memory while the row ran (rows on the main service only). */
  peakRssMiB?: number;
  /** For rows whose goal is a latency or a fact rather than a ratio. */
  note?: string;
  /** Set on rows carried over from an earlier run (the scale rows, when this run had none): when they were measured. */
  measuredAt?: string;
  isMet?: boolean;
}

/** The middle of the runs (the upper middle of an even count). */
export const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;

export interface Report {
  rows: Row[];
  rss: { idleMiB: number; peakMiB: number };
  seconds: number;
  runs: number;
  connections: number;
  isScale: boolean;
}

const resultsDir = fileURLToPath(new URL("./results/", import.meta.url));
const root = fileURLToPath(new URL("..", import.meta.url));

async function versionOf(pkg: string): Promise<string> {
  const json = JSON.parse(await readFile(`${root}node_modules/${pkg}/package.json`, "utf8")) as { version: string };
  return json.version;
}

/** Writes bench/results/latest.json and latest.svg; merges scale rows from an earlier run when this one had none. */
export async function writeReport(report: Report): Promise<string> {
  await mkdir(resultsDir, { recursive: true });
  const cpus = os.cpus();
  const versions = Object.fromEntries(
    await Promise.all(["@connectrpc/connect", "@bufbuild/protobuf", "fastify", "mysql2", "jose", "@grpc/grpc-js"].map(async (p) => [p, await versionOf(p)])),
  );
  const document = {
    date: new Date().toISOString(),
    machine: { cpus: cpus.length, model: cpus[0]?.model ?? "unknown", memoryGiB: Math.round(os.totalmem() / 2 ** 30), platform: `${os.platform()} ${os.release()}` },
    versions: { node: process.version, ...versions },
    settings: { secondsPerRun: report.seconds, runs: report.runs, connections: report.connections },
    rss: report.rss,
    rows: report.isScale ? report.rows : [...report.rows, ...(await earlierScaleRows())],
  };
  await writeFile(`${resultsDir}latest.json`, `${JSON.stringify(document, null, 2)}\n`);
  await writeFile(`${resultsDir}latest.svg`, chart(document));
  return `${resultsDir}latest.json`;
}

/** The rows at a million sessions from the last run that had them, each marked with that run's date. */
async function earlierScaleRows(): Promise<Row[]> {
  try {
    const earlier = JSON.parse(await readFile(`${resultsDir}latest.json`, "utf8")) as { date: string; rows: Row[] };
    return earlier.rows.filter(isScaleRow).map((r) => ({ ...r, measuredAt: r.measuredAt ?? earlier.date }));
  } catch {
    return [];
  }
}

const isScaleRow = (r: Row) => r.name.endsWith("@1M") || r.name.startsWith("bulk revoke");

const escape = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** Bars of service/baseline per row, the goal as a tick; latency rows as text under them. */
function chart(doc: { date: string; machine: { cpus: number; model: string }; versions: Record<string, string>; rss: Report["rss"]; rows: Row[] }): string {
  const ratioRows = doc.rows.filter((r) => r.baseline > 0);
  const factRows = doc.rows.filter((r) => r.baseline === 0);
  const width = 900;
  const left = 330;
  const barMax = 480;
  // Up to 3×: a bar beyond (a cache hit against a signature check) is drawn to the edge.
  const scaleMax = Math.min(3, Math.max(2, ...ratioRows.map((r) => r.ratio), ...ratioRows.map((r) => r.goalRatio ?? 0)));
  const x = (ratio: number) => left + (Math.min(ratio, scaleMax) / scaleMax) * barMax;
  const lines: string[] = [];
  let y = 60;
  for (const r of ratioRows) {
    const color = r.goalRatio === undefined ? "#6b7280" : r.ratio >= r.goalRatio ? "#16a34a" : "#dc2626";
    lines.push(`<text x="${left - 10}" y="${y + 14}" text-anchor="end">${escape(r.name)}</text>`);
    lines.push(`<rect x="${left}" y="${y}" width="${Math.max(1, x(r.ratio) - left).toFixed(1)}" height="20" fill="${color}"/>`);
    lines.push(`<text x="${x(r.ratio) + 6}" y="${y + 14}">${r.ratio.toFixed(2)}× (${Math.round(r.service)}/s vs ${Math.round(r.baseline)}/s)</text>`);
    if (r.goalRatio !== undefined) lines.push(`<line x1="${x(r.goalRatio)}" x2="${x(r.goalRatio)}" y1="${y - 3}" y2="${y + 23}" stroke="#111" stroke-width="2"/>`);
    y += 30;
  }
  lines.push(`<line x1="${x(1)}" x2="${x(1)}" y1="50" y2="${y}" stroke="#9ca3af" stroke-dasharray="4 3"/>`);
  lines.push(`<text x="${x(1)}" y="46" text-anchor="middle" fill="#6b7280">1× the baseline</text>`);
  y += 10;
  for (const r of factRows) {
    const mark = r.isMet === undefined ? "" : r.isMet ? "✓" : "✗";
    const when = r.measuredAt ? ` [measured ${r.measuredAt.slice(0, 16).replace("T", " ")}]` : "";
    lines.push(`<text x="20" y="${y + 14}">${mark} ${escape(r.name)}: ${escape(r.note ?? "")} (goal ${escape(r.goal)})${when}</text>`);
    y += 22;
  }
  lines.push(`<text x="20" y="${y + 20}">${mark(doc.rss.idleMiB <= 100 && doc.rss.peakMiB <= 250)} RSS idle ${doc.rss.idleMiB} MiB, peak ${doc.rss.peakMiB} MiB (goal ≤ 100 / ≤ 250)</text>`);
  y += 30;
  const footer = `${doc.date.slice(0, 10)} · ${doc.machine.cpus} × ${escape(doc.machine.model)} · Node ${doc.versions.node} · connect ${doc.versions["@connectrpc/connect"]} · fastify ${doc.versions.fastify}`;
  lines.push(`<text x="20" y="${y + 20}" fill="#6b7280">${footer}</text>`);
  const height = y + 40;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="system-ui, sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#fff"/>
<text x="20" y="28" font-size="16" font-weight="bold">npm run bench: the service against a bare baseline, same run (green: goal met; tick: goal)</text>
${lines.join("\n")}
</svg>
`;
}

const mark = (ok: boolean) => (ok ? "✓" : "✗");
