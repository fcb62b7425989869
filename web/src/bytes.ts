// Byte helpers shared by the archive, URL-state and UI code.

const utf8Strict = new TextDecoder("utf-8", { fatal: true });
const utf8Encoder = new TextEncoder();

export function utf8(s: string): Uint8Array {
  return utf8Encoder.encode(s);
}

/** Decodes strict UTF-8; returns null when the bytes are not valid UTF-8. */
export function decodeUtf8(b: Uint8Array): string | null {
  try {
    return utf8Strict.decode(b);
  } catch {
    return null;
  }
}

/** Decodes bytes as Latin-1 (every byte is one code point U+0000..U+00FF). */
export function decodeLatin1(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, Array.from(b.subarray(i, i + 0x8000)));
  }
  return s;
}

/** True when the bytes look like text: valid UTF-8 without NUL bytes. */
export function isText(b: Uint8Array): boolean {
  return b.indexOf(0) < 0 && decodeUtf8(b) !== null;
}

export function bytesToBase64(b: Uint8Array): string {
  return btoa(decodeLatin1(b));
}

/** Accepts standard and URL-safe base64, with or without padding; throws on other input. */
export function base64ToBytes(s: string): Uint8Array {
  let t = s.replace(/[\s]/g, "").replace(/-/g, "+").replace(/_/g, "/");
  t = t.replace(/=+$/, "");
  if (!/^[A-Za-z0-9+/]*$/.test(t) || t.length % 4 === 1) throw new Error("invalid base64");
  t += "===".slice(0, (4 - (t.length % 4)) % 4);
  const bin = atob(t);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** Classic hex dump: offset, 16 hex bytes, printable ASCII. */
export function hexDump(b: Uint8Array, max = 256): string {
  const n = Math.min(b.length, max);
  const lines: string[] = [];
  for (let off = 0; off < n; off += 16) {
    const row = b.subarray(off, Math.min(off + 16, n));
    let hex = "";
    let asc = "";
    for (let i = 0; i < 16; i++) {
      if (i < row.length) {
        hex += row[i].toString(16).padStart(2, "0") + " ";
        asc += row[i] >= 0x20 && row[i] < 0x7f ? String.fromCharCode(row[i]) : ".";
      } else {
        hex += "   ";
      }
      if (i === 7) hex += " ";
    }
    lines.push(off.toString(16).padStart(8, "0") + "  " + hex + " " + asc);
  }
  if (b.length > n) lines.push(`… ${b.length - n} more bytes`);
  return lines.join("\n");
}

export function formatSize(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
