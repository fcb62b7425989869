// The page state in the URL hash, compatible with the original Program Explorer:
//   #s=<base64(JSON)>   JSON = {cmd, stdin, env, image, files: [{p, s} | {p, b: base64}]} (+ pe's entrypoint, timeout, memory)
//   #gist=ID or #gist=ID/REVISION   (wins over s=)
// Parts are '&'-separated key=value pairs (the original also wrote more=x / help=x).
// Writing encodes the JSON as UTF-8 before base64 (the original's btoa threw on non-Latin-1 text);
// reading decodes base64 to bytes, then strict UTF-8, falling back to Latin-1 for old links.

import { base64ToBytes, bytesToBase64, decodeLatin1, decodeUtf8, utf8 } from "./bytes";

export interface InputFile {
  path: string;
  /** Text, or bytes for a binary file. */
  data: string | Uint8Array;
}

export interface State {
  image: string;
  cmd: string;
  entrypoint: string;
  env: string;
  /** Path of the input file given as stdin, or null. */
  stdin: string | null;
  files: InputFile[];
  timeout?: string | number;
  memory?: string | number;
}

export interface HashParts {
  s?: string;
  gist?: { id: string; rev?: string };
  other: Record<string, string>;
}

export function parseHash(hash: string): HashParts {
  const h = hash.startsWith("#") ? hash.slice(1) : hash;
  const out: HashParts = { other: {} };
  for (const part of h.split("&")) {
    if (!part) continue;
    const eq = part.indexOf("=");
    const k = eq < 0 ? part : part.slice(0, eq);
    let v = eq < 0 ? "" : part.slice(eq + 1);
    if (v.includes("%")) {
      try {
        v = decodeURIComponent(v);
      } catch {
        /* keep as is */
      }
    }
    if (k === "s") out.s = v;
    else if (k === "gist") {
      const m = /^([0-9A-Za-z_-]+)(?:\/([0-9A-Za-z_-]+))?\/?$/.exec(v);
      if (m) out.gist = { id: m[1], rev: m[2] };
    } else out.other[k] = v;
  }
  return out;
}

export function gistHash(id: string, rev?: string): string {
  return "#gist=" + id + (rev ? "/" + rev : "");
}

interface JsonState {
  cmd?: unknown;
  stdin?: unknown;
  env?: unknown;
  image?: unknown;
  entrypoint?: unknown;
  timeout?: unknown;
  memory?: unknown;
  files?: unknown;
}

export function stateToJson(st: State): object {
  const j: Record<string, unknown> = {
    cmd: st.cmd,
    stdin: st.stdin,
    env: st.env,
    image: st.image,
    files: st.files.map((f) => (typeof f.data === "string" ? { p: f.path, s: f.data } : { p: f.path, b: bytesToBase64(f.data) })),
  };
  if (st.entrypoint) j.entrypoint = st.entrypoint;
  if (st.timeout !== undefined && st.timeout !== "") j.timeout = st.timeout;
  if (st.memory !== undefined && st.memory !== "") j.memory = st.memory;
  return j;
}

/** The value of s= for a state. */
export function encodeState(st: State): string {
  return bytesToBase64(utf8(JSON.stringify(stateToJson(st))));
}

/** Decodes an s= value. Fields of the wrong type are ignored (as the original did); missing ones are "" / null / []. */
export function decodeState(s: string): State {
  const bytes = base64ToBytes(s);
  const text = decodeUtf8(bytes) ?? decodeLatin1(bytes);
  let j: JsonState;
  try {
    j = JSON.parse(text) as JsonState;
  } catch (e) {
    throw new Error(`shared link: not valid JSON (${(e as Error).message})`);
  }
  if (typeof j !== "object" || j === null) throw new Error("shared link: JSON is not an object");
  const str = (v: unknown) => (typeof v === "string" ? v : "");
  const st: State = {
    image: str(j.image),
    cmd: str(j.cmd),
    entrypoint: str(j.entrypoint),
    env: str(j.env),
    stdin: typeof j.stdin === "string" && j.stdin !== "" && j.stdin !== "/dev/null" ? j.stdin : null,
    files: [],
  };
  if (typeof j.timeout === "string" || typeof j.timeout === "number") st.timeout = j.timeout;
  if (typeof j.memory === "string" || typeof j.memory === "number") st.memory = j.memory;
  if (Array.isArray(j.files)) {
    for (const f of j.files as unknown[]) {
      if (typeof f !== "object" || f === null) continue;
      const o = f as { p?: unknown; s?: unknown; b?: unknown };
      if (typeof o.p !== "string") continue;
      if (typeof o.s === "string") st.files.push({ path: o.p, data: o.s });
      else if (typeof o.b === "string") {
        try {
          st.files.push({ path: o.p, data: base64ToBytes(o.b) });
        } catch {
          /* skip a corrupt file */
        }
      }
    }
  }
  return st;
}

/** Env box → request env: lines not starting with '#' (blank lines dropped); null when nothing is left. */
export function envList(env: string): string[] | null {
  const lines = env
    .split("\n")
    .map((l) => l.replace(/\r$/, ""))
    .filter((l) => l.trim() !== "" && !l.startsWith("#"));
  return lines.length ? lines : null;
}
