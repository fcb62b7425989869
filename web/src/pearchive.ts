// pearchive v1, the Program Explorer file archive (byte-compatible with the original):
//   File: 0x01 name 0x00 u32LE size bytes
//   Dir:  0x02 name 0x00          (following messages are inside it)
//   Pop:  0x03                    (leave the current directory)
// and the request/response framing  u32LE json_len ‖ JSON ‖ archive.

import { utf8, decodeUtf8 } from "./bytes";

export const TAG_FILE = 1;
export const TAG_DIR = 2;
export const TAG_POP = 3;
export const MAX_NAME = 255;
export const MAX_DEPTH = 32;

export interface ArchiveFile {
  /** Slash-separated relative path, e.g. "folder/data.txt". */
  path: string;
  /** Text (encoded as UTF-8) or raw bytes. */
  data: string | Uint8Array;
}

export class ArchiveError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ArchiveError";
  }
}

/** Checks one path component; returns an error message or null. */
export function badComponent(name: string): string | null {
  if (name === "") return "empty path component";
  if (name === "." || name === "..") return `path component "${name}" is not allowed`;
  if (name.includes("\0")) return "NUL byte in a name";
  if (name.includes("/")) return "slash in a name";
  if (utf8(name).length > MAX_NAME) return `name longer than ${MAX_NAME} bytes`;
  return null;
}

/** Validates a relative file path; returns an error message or null. */
export function badPath(path: string): string | null {
  if (path.startsWith("/")) return "path must be relative (no leading /)";
  const parts = path.split("/");
  if (parts.length > MAX_DEPTH) return `more than ${MAX_DEPTH} levels of directories`;
  for (const p of parts) {
    const e = badComponent(p);
    if (e) return e;
  }
  return null;
}

interface Dir {
  files: Map<string, Uint8Array>;
  dirs: Map<string, Dir>;
  order: Array<[string, boolean]>; // name, isDir — insertion order
}

function newDir(): Dir {
  return { files: new Map(), dirs: new Map(), order: [] };
}

/** Packs files into a pearchive v1. Directories are emitted in first-seen order. */
export function pack(files: ArchiveFile[]): Uint8Array {
  const root = newDir();
  for (const f of files) {
    const err = badPath(f.path);
    if (err) throw new ArchiveError(`${JSON.stringify(f.path)}: ${err}`);
    const parts = f.path.split("/");
    let d = root;
    for (const p of parts.slice(0, -1)) {
      if (d.files.has(p)) throw new ArchiveError(`${JSON.stringify(f.path)}: "${p}" is both a file and a directory`);
      let sub = d.dirs.get(p);
      if (!sub) {
        sub = newDir();
        d.dirs.set(p, sub);
        d.order.push([p, true]);
      }
      d = sub;
    }
    const name = parts[parts.length - 1];
    if (d.files.has(name)) throw new ArchiveError(`${JSON.stringify(f.path)}: duplicate file`);
    if (d.dirs.has(name)) throw new ArchiveError(`${JSON.stringify(f.path)}: is both a file and a directory`);
    d.files.set(name, typeof f.data === "string" ? utf8(f.data) : f.data);
    d.order.push([name, false]);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  const push = (b: Uint8Array) => {
    chunks.push(b);
    total += b.length;
  };
  const header = (tag: number, name: string) => {
    const nb = utf8(name);
    const h = new Uint8Array(nb.length + 2);
    h[0] = tag;
    h.set(nb, 1);
    h[nb.length + 1] = 0;
    push(h);
  };
  const walk = (d: Dir) => {
    for (const [name, isDir] of d.order) {
      if (isDir) {
        header(TAG_DIR, name);
        walk(d.dirs.get(name)!);
        push(Uint8Array.of(TAG_POP));
      } else {
        const data = d.files.get(name)!;
        header(TAG_FILE, name);
        const sz = new Uint8Array(4);
        new DataView(sz.buffer).setUint32(0, data.length, true);
        push(sz);
        push(data);
      }
    }
  };
  walk(root);
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

export interface UnpackedEntry {
  path: string;
  /** Null for a directory. */
  data: Uint8Array | null;
}

/** Unpacks a pearchive v1; every malformed input gives an ArchiveError naming the offset. */
export function unpack(buf: Uint8Array): UnpackedEntry[] {
  const out: UnpackedEntry[] = [];
  const stack: string[] = [];
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  let i = 0;
  const readName = (): string => {
    const start = i;
    const end = buf.indexOf(0, start);
    if (end < 0) throw new ArchiveError(`offset ${start}: name not terminated`);
    if (end === start) throw new ArchiveError(`offset ${start}: empty name`);
    if (end - start > MAX_NAME) throw new ArchiveError(`offset ${start}: name longer than ${MAX_NAME} bytes`);
    const name = decodeUtf8(buf.subarray(start, end));
    if (name === null) throw new ArchiveError(`offset ${start}: name is not valid UTF-8`);
    const err = badComponent(name);
    if (err) throw new ArchiveError(`offset ${start}: ${err}`);
    i = end + 1;
    return name;
  };
  while (i < buf.length) {
    const at = i;
    const tag = buf[i++];
    if (tag === TAG_FILE) {
      const name = readName();
      if (i + 4 > buf.length) throw new ArchiveError(`offset ${at}: truncated file size`);
      const size = view.getUint32(i, true);
      i += 4;
      if (i + size > buf.length) throw new ArchiveError(`offset ${at}: file "${name}" needs ${size} bytes, ${buf.length - i} left`);
      out.push({ path: [...stack, name].join("/"), data: buf.slice(i, i + size) });
      i += size;
    } else if (tag === TAG_DIR) {
      const name = readName();
      if (stack.length >= MAX_DEPTH) throw new ArchiveError(`offset ${at}: more than ${MAX_DEPTH} nested directories`);
      stack.push(name);
      out.push({ path: stack.join("/"), data: null });
    } else if (tag === TAG_POP) {
      if (stack.length === 0) throw new ArchiveError(`offset ${at}: pop at top level`);
      stack.pop();
    } else {
      throw new ArchiveError(`offset ${at}: unknown tag ${tag}`);
    }
  }
  if (stack.length) throw new ArchiveError(`archive ends inside directory "${stack.join("/")}"`);
  return out;
}

/** u32LE json_len ‖ JSON ‖ archive */
export function frame(json: unknown, archive: Uint8Array): Uint8Array {
  const j = utf8(JSON.stringify(json));
  const out = new Uint8Array(4 + j.length + archive.length);
  new DataView(out.buffer).setUint32(0, j.length, true);
  out.set(j, 4);
  out.set(archive, 4 + j.length);
  return out;
}

export function unframe(buf: Uint8Array): { json: unknown; archive: Uint8Array } {
  if (buf.length < 4) throw new ArchiveError(`response too short (${buf.length} bytes)`);
  const n = new DataView(buf.buffer, buf.byteOffset, buf.byteLength).getUint32(0, true);
  if (4 + n > buf.length) throw new ArchiveError(`JSON length ${n} exceeds the ${buf.length - 4} bytes left`);
  const text = decodeUtf8(buf.subarray(4, 4 + n));
  if (text === null) throw new ArchiveError("response JSON is not valid UTF-8");
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ArchiveError(`response JSON: ${(e as Error).message}`);
  }
  return { json, archive: buf.subarray(4 + n) };
}
