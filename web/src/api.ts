// The `pe serve` HTTP API as the page uses it.

import { frame, unframe, unpack, pack, ArchiveFile } from "./pearchive";
import { base64ToBytes, decodeUtf8 } from "./bytes";
import { SseParser } from "./sse";

export interface ImagePreset {
  reference: string;
  digest?: string;
  description?: string;
}
export interface Images {
  default: string;
  images: ImagePreset[];
}
export interface Config {
  github_api: string;
  max_body: number;
  timeout_ms: number;
}
export interface ServerStatus {
  queued: number;
  running: number;
  slots: number;
}

export interface RunRequest {
  cmd: string[] | null;
  entrypoint: string[] | null;
  env: string[] | null;
  stdin: string | null;
  /** pe: a time limit below the server's (from pe.toml's timeout). */
  timeout_ms?: number;
}

/**
 * durationMs reads a pe.toml timeout: whole seconds, or a Go duration such
 * as "500ms", "5s", "1m30s". It returns undefined for anything else.
 */
export function durationMs(v: string | number | undefined): number | undefined {
  if (typeof v === "number") return v > 0 ? v * 1000 : undefined;
  if (typeof v !== "string" || !/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(v.trim())) return undefined;
  const unit: Record<string, number> = { ms: 1, s: 1000, m: 60000, h: 3600000 };
  let ms = 0;
  for (const m of v.trim().matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) ms += Number(m[1]) * unit[m[2]];
  return ms > 0 ? Math.round(ms) : undefined;
}

export interface RunResponse {
  kind: "Ok" | "Overtime" | "Panic" | string;
  siginfo?: Record<string, unknown>;
  rusage?: Record<string, unknown>;
  manifest_digest?: string;
  message?: string;
  exit_code?: number;
  timed_out?: boolean;
  stdout_truncated?: boolean;
  stderr_truncated?: boolean;
  output_truncated?: boolean;
  duration_ms?: number | Record<string, number>;
  stdout?: string;
  stderr?: string;
}

export interface OutputFile {
  name: string;
  data: Uint8Array;
}

export interface RunResult {
  response: RunResponse;
  stdout: Uint8Array;
  stderr: Uint8Array;
  files: OutputFile[];
  /** Client-measured milliseconds. */
  elapsed: number;
}

/** A non-200 answer: the server's {"error", "detail"} plus the status and Retry-After. */
export class ApiError extends Error {
  status: number;
  error: string;
  detail: string;
  retryAfter: string | null;
  constructor(status: number, error: string, detail: string, retryAfter: string | null) {
    let msg = `HTTP ${status}: ${error}`;
    if (detail) msg += ` — ${detail}`;
    if (retryAfter) msg += ` (retry after ${retryAfter} s)`;
    super(msg);
    this.name = "ApiError";
    this.status = status;
    this.error = error;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

async function apiError(r: Response): Promise<ApiError> {
  let error = r.statusText || "error";
  let detail = "";
  const text = await r.text().catch(() => "");
  try {
    const j = JSON.parse(text) as { error?: unknown; detail?: unknown; message?: unknown };
    if (typeof j.error === "string") error = j.error;
    if (typeof j.detail === "string") detail = j.detail;
    else if (typeof j.message === "string") detail = j.message;
  } catch {
    if (text.trim()) detail = text.trim().slice(0, 300);
  }
  return new ApiError(r.status, error, detail, r.headers.get("Retry-After"));
}

async function getJson<T>(url: string, signal?: AbortSignal): Promise<T> {
  const r = await fetch(url, { headers: { Accept: "application/json" }, signal });
  if (!r.ok) throw await apiError(r);
  return (await r.json()) as T;
}

export const getImages = () => getJson<Images>("api/v2/images");
export const getConfig = () => getJson<Config>("api/v2/config");
export const getStatus = (signal?: AbortSignal) => getJson<ServerStatus>("api/v2/status", signal);

/** Encodes an image reference for the path, keeping / : @ readable; the
 * "//" of an s3:// reference stays encoded (the server refuses empty path
 * segments). */
export function refPath(ref: string): string {
  return encodeURIComponent(ref).replace(/%2F/gi, "/").replace(/%3A/gi, ":").replace(/%40/g, "@").replace(/\/\//g, "%2F%2F");
}

export function runBody(req: RunRequest, files: ArchiveFile[]): Uint8Array {
  return frame(req, pack(files));
}

export async function run(image: string, body: Uint8Array, signal?: AbortSignal): Promise<RunResult> {
  const t0 = performance.now();
  const r = await fetch(`api/v2/runi/amd64/linux/${refPath(image)}`, {
    method: "POST",
    headers: { "Content-Type": "application/x.pe.archivev1" },
    body: body as BodyInit,
    signal,
  });
  if (!r.ok) throw await apiError(r);
  return batchResult(r, t0);
}

/** What a streaming run reports while it goes. */
export interface LiveCallbacks {
  /** The program started (the stream began). */
  onStart?(requestId: string): void;
  /** Output as the program writes it (text; invalid UTF-8 bytes are U+FFFD). */
  onOutput?(stream: "stdout" | "stderr", text: string): void;
  /** The live output stopped (the page fell behind); the result still has all of it. */
  onDropped?(): void;
}

/**
 * runLive runs as run() does, asking for the streaming form (Accept: text/event-stream): output
 * arrives through cb while the program runs, and the result is the same as run()'s (the stream's
 * last events carry the batch answer). A server that answers without a stream is read as run().
 */
export async function runLive(image: string, body: Uint8Array, cb: LiveCallbacks, signal?: AbortSignal): Promise<RunResult> {
  const t0 = performance.now();
  const r = await fetch(`api/v2/runi/amd64/linux/${refPath(image)}`, {
    method: "POST",
    headers: { "Content-Type": "application/x.pe.archivev1", Accept: "text/event-stream, application/x.pe.archivev1;q=0.5" },
    body: body as BodyInit,
    signal,
  });
  if (!r.ok) throw await apiError(r);
  if (mediaType(r) !== "text/event-stream" || !r.body) return batchResult(r, t0);
  const parser = new SseParser();
  const dec = new TextDecoder();
  const reader = r.body.getReader();
  let archive: Uint8Array | null = null;
  for (;;) {
    const { done, value } = await reader.read();
    const events = parser.push(done ? dec.decode() + "\n\n" : dec.decode(value, { stream: true }));
    for (const ev of events) {
      switch (ev.event) {
        case "start":
          cb.onStart?.(String((JSON.parse(ev.data) as { request_id?: unknown }).request_id ?? ""));
          break;
        case "stdout":
        case "stderr":
          cb.onOutput?.(ev.event, JSON.parse(ev.data) as string);
          break;
        case "dropped":
          cb.onDropped?.();
          break;
        case "archive":
          archive = base64ToBytes(JSON.parse(ev.data) as string);
          break;
        case "result": {
          void reader.cancel().catch(() => {});
          const response = JSON.parse(ev.data) as RunResponse;
          return resultOf(response, archive, performance.now() - t0);
        }
        case "error": {
          void reader.cancel().catch(() => {});
          const e = JSON.parse(ev.data) as { status?: number; error?: string; detail?: string };
          throw new ApiError(e.status ?? 500, e.error ?? "error", e.detail ?? "", null);
        }
      }
    }
    if (done) throw new Error("the server's stream ended before the run's result");
  }
}

function mediaType(r: Response): string {
  return (r.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
}

/** Reads the request/response API's answer: JSON, or the framed JSON and response archive. */
async function batchResult(r: Response, t0: number): Promise<RunResult> {
  const buf = new Uint8Array(await r.arrayBuffer());
  const elapsed = performance.now() - t0;
  if (mediaType(r) === "application/json") {
    return resultOf(JSON.parse(decodeUtf8(buf) ?? "{}") as RunResponse, null, elapsed);
  }
  const { json, archive } = unframe(buf);
  return resultOf(json as RunResponse, archive, elapsed);
}

/** The result of a run answered with response (and, for an archive request, its archive). */
export function resultOf(response: RunResponse, archive: Uint8Array | null, elapsed: number): RunResult {
  if (archive === null) {
    const enc = new TextEncoder();
    return { response, stdout: enc.encode(response.stdout ?? ""), stderr: enc.encode(response.stderr ?? ""), files: [], elapsed };
  }
  let stdout: Uint8Array = new Uint8Array(0);
  let stderr: Uint8Array = new Uint8Array(0);
  const files: OutputFile[] = [];
  for (const e of unpack(archive)) {
    if (e.data === null) continue;
    if (e.path === "stdout") stdout = e.data;
    else if (e.path === "stderr") stderr = e.data;
    else if (e.path.startsWith("dir/")) files.push({ name: e.path.slice(4), data: e.data });
    else files.push({ name: e.path, data: e.data });
  }
  return { response, stdout, stderr, files, elapsed };
}

export interface Gist {
  files: Record<string, string>;
  version: string;
  versions?: string[];
}

export function getGist(id: string, rev?: string): Promise<Gist> {
  return getJson<Gist>(`api/gh/gist/${encodeURIComponent(id)}${rev ? "/" + encodeURIComponent(rev) : ""}`);
}

export interface CreatedGist {
  id: string;
  html_url?: string;
  history?: Array<{ version: string }>;
}

export async function createGist(
  githubApi: string,
  token: string,
  description: string,
  files: Record<string, string>,
): Promise<CreatedGist> {
  const body = { description, public: false, files: Object.fromEntries(Object.entries(files).map(([k, v]) => [k, { content: v }])) };
  const r = await fetch(githubApi.replace(/\/+$/, "") + "/gists", {
    method: "POST",
    headers: {
      Authorization: `Bearer ${token}`,
      Accept: "application/vnd.github+json",
      "Content-Type": "application/json",
    },
    body: JSON.stringify(body),
  });
  if (!r.ok) {
    const e = await apiError(r);
    // GitHub answers {"message": "..."}: apiError put it in detail.
    throw e;
  }
  return (await r.json()) as CreatedGist;
}

/** One human line for a finished run. */
export function describeResult(res: RunResult): string {
  const r = res.response;
  const ms = typeof r.duration_ms === "number" ? r.duration_ms : Math.round(res.elapsed);
  const parts: string[] = [];
  if (r.kind === "Panic") {
    parts.push(`failed: ${r.message ?? "panic"}`);
  } else if (r.timed_out || r.kind === "Overtime") {
    parts.push(`timed out after ${ms} ms`);
  } else {
    const si = r.siginfo ?? {};
    let sig: number | undefined;
    for (const k of ["Killed", "Dumped"]) if (typeof si[k] === "number") sig = si[k] as number;
    if (sig !== undefined) parts.push(`killed by signal ${sig} after ${ms} ms`);
    else {
      const code = typeof r.exit_code === "number" ? r.exit_code : typeof si.Exited === "number" ? (si.Exited as number) : undefined;
      parts.push(`done: exit ${code ?? "?"} in ${ms} ms`);
    }
  }
  if (r.stdout_truncated) parts.push("stdout truncated");
  if (r.stderr_truncated) parts.push("stderr truncated");
  if (r.output_truncated) parts.push("output files truncated");
  return parts.join(", ");
}
