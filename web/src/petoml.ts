// pe.toml: the settings file of a gist (or of files given to `pe run`).
// Keys: image, cmd (string shell-split, or array), entrypoint (same), env (string of VAR=value lines or a
// table), stdin (input file name), timeout, memory, platform. Unknown keys are an error naming key and line.

import { parseToml, TomlValue, TomlError } from "./toml";
import { shellJoin } from "./shell";

export interface PeFields {
  image?: string;
  cmd?: string;
  entrypoint?: string;
  env?: string;
  stdin?: string;
  timeout?: string | number;
  memory?: string | number;
  platform?: string;
}

export class PeTomlError extends Error {
  constructor(message: string) {
    super(`pe.toml: ${message}`);
    this.name = "PeTomlError";
  }
}

const KEYS = ["image", "cmd", "entrypoint", "env", "stdin", "timeout", "memory", "platform"];

export function parsePeToml(text: string): PeFields {
  let doc;
  try {
    doc = parseToml(text);
  } catch (e) {
    if (e instanceof TomlError) throw new PeTomlError(e.message);
    throw e;
  }
  const t = doc.table;
  const out: PeFields = {};
  const at = (k: string) => `line ${doc.lines.get(k) ?? "?"}`;
  const str = (k: string, v: TomlValue): string => {
    if (typeof v !== "string") throw new PeTomlError(`${at(k)}: "${k}" must be a string`);
    return v;
  };
  const words = (k: string, v: TomlValue): string => {
    if (typeof v === "string") return v;
    if (Array.isArray(v) && v.every((x) => typeof x === "string")) return shellJoin(v as string[]);
    throw new PeTomlError(`${at(k)}: "${k}" must be a string or an array of strings`);
  };
  for (const k of Object.keys(t)) {
    const v = t[k];
    switch (k) {
      case "image":
        out.image = str(k, v);
        break;
      case "cmd":
        out.cmd = words(k, v);
        break;
      case "entrypoint":
        out.entrypoint = words(k, v);
        break;
      case "stdin":
        out.stdin = str(k, v);
        break;
      case "platform":
        out.platform = str(k, v);
        break;
      case "env":
        if (typeof v === "string") out.env = v;
        else if (typeof v === "object" && !Array.isArray(v)) {
          const lines: string[] = [];
          for (const [name, val] of Object.entries(v)) {
            if (typeof val === "object") throw new PeTomlError(`${at(k)}: env.${name} must be a string, number or boolean`);
            lines.push(`${name}=${String(val)}`);
          }
          out.env = lines.join("\n");
        } else throw new PeTomlError(`${at(k)}: "env" must be a string of VAR=value lines or a table`);
        break;
      case "timeout":
      case "memory":
        if (typeof v !== "string" && typeof v !== "number") throw new PeTomlError(`${at(k)}: "${k}" must be a string or a number`);
        out[k] = v;
        break;
      default:
        throw new PeTomlError(`${at(k)}: unknown key "${k}" (known: ${KEYS.join(", ")})`);
    }
  }
  return out;
}

/** A TOML basic string literal. */
export function tomlString(s: string): string {
  let o = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0)!;
    if (ch === '"') o += '\\"';
    else if (ch === "\\") o += "\\\\";
    else if (ch === "\n") o += "\\n";
    else if (ch === "\t") o += "\\t";
    else if (ch === "\r") o += "\\r";
    else if (c < 0x20 || c === 0x7f) o += "\\u" + c.toString(16).padStart(4, "0");
    else o += ch;
  }
  return o + '"';
}

function tomlText(s: string): string {
  // Multi-line literal strings read best; fall back to a basic string when they cannot hold s.
  if (s.includes("\n") && !s.includes("'''") && !/[\x00-\x08\x0b-\x1f\x7f]/.test(s) && !s.endsWith("'")) {
    return "'''\n" + s + "'''";
  }
  return tomlString(s);
}

/** Writes a pe.toml that parsePeToml reads back to the same fields (empty fields are left out). */
export function formatPeToml(f: PeFields): string {
  const lines: string[] = ["# pe.toml: settings for `pe run --gist` and the pe web page"];
  if (f.image) lines.push(`image = ${tomlString(f.image)}`);
  if (f.cmd) lines.push(`cmd = ${tomlString(f.cmd)}`);
  if (f.entrypoint) lines.push(`entrypoint = ${tomlString(f.entrypoint)}`);
  if (f.env) lines.push(`env = ${tomlText(f.env.endsWith("\n") ? f.env : f.env + "\n")}`);
  if (f.stdin) lines.push(`stdin = ${tomlString(f.stdin)}`);
  for (const k of ["timeout", "memory"] as const) {
    const v = f[k];
    if (typeof v === "number") lines.push(`${k} = ${v}`);
    else if (v) lines.push(`${k} = ${tomlString(v)}`);
  }
  if (f.platform) lines.push(`platform = ${tomlString(f.platform)}`);
  return lines.join("\n") + "\n";
}
