// A small TOML parser: the subset pe.toml needs, with errors that name the line.
// Supported: comments, bare/quoted/dotted keys, [table] headers, basic/literal strings (single and
// multi-line), integers (dec/hex/oct/bin, underscores), floats, booleans, arrays, inline tables.
// Not supported (clear error): dates/times, [[array of tables]].

export type TomlValue = string | number | boolean | TomlValue[] | TomlTable;
export interface TomlTable {
  [key: string]: TomlValue;
}

export class TomlError extends Error {
  line: number;
  constructor(line: number, message: string) {
    super(`line ${line}: ${message}`);
    this.name = "TomlError";
    this.line = line;
  }
}

export interface TomlDoc {
  table: TomlTable;
  /** Line of the first definition of each top-level key. */
  lines: Map<string, number>;
}

const BARE = /[A-Za-z0-9_-]/;

export function parseToml(src: string): TomlDoc {
  let i = 0;
  let line = 1;
  const root: TomlTable = {};
  const lines = new Map<string, number>();
  const defined = new Set<TomlTable>(); // tables created by a [header] (may not be re-opened)
  const inline = new Set<TomlTable>(); // inline tables are closed once written
  let current = root;

  const err = (msg: string): never => {
    throw new TomlError(line, msg);
  };
  const peek = () => src[i];
  const skipWs = () => {
    while (i < src.length && (src[i] === " " || src[i] === "\t")) i++;
  };
  const skipComment = () => {
    if (src[i] === "#") {
      while (i < src.length && src[i] !== "\n") {
        const c = src.charCodeAt(i);
        if ((c < 0x20 && c !== 9 && c !== 13) || c === 0x7f) err("control character in comment");
        i++;
      }
    }
  };
  const newline = () => {
    if (src[i] === "\r" && src[i + 1] === "\n") i += 2;
    else if (src[i] === "\n") i++;
    else return false;
    line++;
    return true;
  };
  const endOfLine = () => {
    skipWs();
    skipComment();
    if (i < src.length && !newline()) err(`unexpected ${JSON.stringify(src[i])} after value`);
  };
  // Skips whitespace, newlines and comments (inside arrays).
  const skipAll = () => {
    for (;;) {
      skipWs();
      skipComment();
      if (!newline()) break;
    }
  };

  const escape = (): string => {
    // at backslash
    i++;
    const c = src[i++];
    switch (c) {
      case "b":
        return "\b";
      case "t":
        return "\t";
      case "n":
        return "\n";
      case "f":
        return "\f";
      case "r":
        return "\r";
      case "e":
        return "\x1b";
      case '"':
        return '"';
      case "\\":
        return "\\";
      case "u":
      case "U": {
        const n = c === "u" ? 4 : 8;
        const hex = src.slice(i, i + n);
        if (!new RegExp(`^[0-9A-Fa-f]{${n}}$`).test(hex)) err(`bad \\${c} escape`);
        i += n;
        const cp = parseInt(hex, 16);
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) err(`\\${c}${hex} is not a Unicode scalar value`);
        return String.fromCodePoint(cp);
      }
      default:
        return err(`bad escape \\${c ?? "(end of file)"}`);
    }
  };

  const checkChar = (c: string) => {
    const code = c.charCodeAt(0);
    if ((code < 0x20 && code !== 9) || code === 0x7f) err("control character in string");
  };

  const basicString = (): string => {
    if (src.startsWith('"""', i)) {
      i += 3;
      if (newline()) {
        /* a newline right after the opening delimiter is trimmed */
      }
      let s = "";
      for (;;) {
        if (i >= src.length) err("unterminated multi-line string");
        if (src.startsWith('"""', i)) {
          // up to two extra quotes may close the string
          let q = 3;
          while (src[i + q] === '"' && q < 5) q++;
          s += '"'.repeat(q - 3);
          i += q;
          return s;
        }
        const c = src[i];
        if (c === "\\") {
          // line-ending backslash: trim whitespace and newlines
          let j = i + 1;
          while (src[j] === " " || src[j] === "\t") j++;
          if (src[j] === "\n" || (src[j] === "\r" && src[j + 1] === "\n")) {
            i = j;
            for (;;) {
              if (newline()) continue;
              if (src[i] === " " || src[i] === "\t") {
                i++;
                continue;
              }
              break;
            }
            continue;
          }
          s += escape();
        } else if (newline()) {
          s += "\n";
        } else {
          checkChar(c);
          s += c;
          i++;
        }
      }
    }
    i++;
    let s = "";
    for (;;) {
      if (i >= src.length || src[i] === "\n") err("unterminated string");
      const c = src[i];
      if (c === '"') {
        i++;
        return s;
      }
      if (c === "\\") s += escape();
      else {
        checkChar(c);
        s += c;
        i++;
      }
    }
  };

  const literalString = (): string => {
    if (src.startsWith("'''", i)) {
      i += 3;
      newline();
      let s = "";
      for (;;) {
        if (i >= src.length) err("unterminated multi-line literal string");
        if (src.startsWith("'''", i)) {
          let q = 3;
          while (src[i + q] === "'" && q < 5) q++;
          s += "'".repeat(q - 3);
          i += q;
          return s;
        }
        if (newline()) s += "\n";
        else {
          checkChar(src[i]);
          s += src[i++];
        }
      }
    }
    i++;
    const end = src.indexOf("'", i);
    const nl = src.indexOf("\n", i);
    if (end < 0 || (nl >= 0 && nl < end)) err("unterminated literal string");
    const s = src.slice(i, end);
    for (const c of s) checkChar(c);
    i = end + 1;
    return s;
  };

  const key = (): string[] => {
    const parts: string[] = [];
    for (;;) {
      skipWs();
      const c = peek();
      if (c === '"') {
        if (src.startsWith('"""', i)) err("multi-line string cannot be a key");
        parts.push(basicString());
      } else if (c === "'") {
        if (src.startsWith("'''", i)) err("multi-line string cannot be a key");
        parts.push(literalString());
      } else if (c !== undefined && BARE.test(c)) {
        const start = i;
        while (i < src.length && BARE.test(src[i])) i++;
        parts.push(src.slice(start, i));
      } else {
        err(c === undefined || c === "\n" || c === "\r" ? "expected a key" : `expected a key, found ${JSON.stringify(c)}`);
      }
      skipWs();
      if (peek() === ".") {
        i++;
        continue;
      }
      return parts;
    }
  };

  const number = (): number | boolean => {
    const m = /^[+-]?[0-9A-Za-z_.+-]+/.exec(src.slice(i, i + 100));
    const tok = m ? m[0] : "";
    if (tok === "") err(`expected a value, found ${JSON.stringify(src[i] ?? "end of file")}`);
    i += tok.length;
    if (tok === "true") return true;
    if (tok === "false") return false;
    if (/^[+-]?(inf|nan)$/.test(tok)) return tok.endsWith("inf") ? (tok[0] === "-" ? -Infinity : Infinity) : NaN;
    const us = /^[+-]?[0-9]+(_[0-9]+)*$/; // decimal integer
    if (/^0x[0-9A-Fa-f]+(_[0-9A-Fa-f]+)*$/.test(tok)) return parseInt(tok.slice(2).replace(/_/g, ""), 16);
    if (/^0o[0-7]+(_[0-7]+)*$/.test(tok)) return parseInt(tok.slice(2).replace(/_/g, ""), 8);
    if (/^0b[01]+(_[01]+)*$/.test(tok)) return parseInt(tok.slice(2).replace(/_/g, ""), 2);
    if (us.test(tok)) {
      if (/^[+-]?0[0-9]/.test(tok)) err(`leading zero in ${tok}`);
      return Number(tok.replace(/_/g, ""));
    }
    if (/^[+-]?[0-9]+(_[0-9]+)*(\.[0-9]+(_[0-9]+)*)?([eE][+-]?[0-9]+(_[0-9]+)*)?$/.test(tok) && /[.eE]/.test(tok)) {
      if (/^[+-]?0[0-9]/.test(tok)) err(`leading zero in ${tok}`);
      return Number(tok.replace(/_/g, ""));
    }
    if (/^\d{4}-\d{2}-\d{2}/.test(tok) || /^\d{2}:\d{2}/.test(tok)) err("dates and times are not supported in pe.toml");
    return err(`invalid value ${JSON.stringify(tok)} (strings need quotes)`);
  };

  const value = (): TomlValue => {
    skipWs();
    const c = peek();
    if (c === '"') return basicString();
    if (c === "'") return literalString();
    if (c === "[") {
      i++;
      const arr: TomlValue[] = [];
      for (;;) {
        skipAll();
        if (peek() === "]") {
          i++;
          return arr;
        }
        arr.push(value());
        skipAll();
        if (peek() === ",") {
          i++;
          continue;
        }
        if (peek() === "]") {
          i++;
          return arr;
        }
        err("expected , or ] in array");
      }
    }
    if (c === "{") {
      i++;
      const t: TomlTable = {};
      skipWs();
      if (peek() === "}") {
        i++;
        inline.add(t);
        return t;
      }
      for (;;) {
        const k = key();
        if (peek() !== "=") err("expected = after key");
        i++;
        assign(t, k, value(), false);
        skipWs();
        if (peek() === ",") {
          i++;
          continue;
        }
        if (peek() === "}") {
          i++;
          inline.add(t);
          return t;
        }
        err("expected , or } in inline table");
      }
    }
    return number();
  };

  const isTable = (v: TomlValue | undefined): v is TomlTable =>
    typeof v === "object" && v !== null && !Array.isArray(v);

  const assign = (t: TomlTable, k: string[], v: TomlValue, top: boolean) => {
    let cur = t;
    for (const p of k.slice(0, -1)) {
      const ex = cur[p];
      if (ex === undefined) {
        cur[p] = {};
        if (top && cur === root && !lines.has(p)) lines.set(p, line);
      } else if (!isTable(ex) || inline.has(ex)) err(`key "${p}" is already defined as a value`);
      cur = cur[p] as TomlTable;
    }
    const last = k[k.length - 1];
    if (Object.prototype.hasOwnProperty.call(cur, last)) err(`duplicate key "${k.join(".")}"`);
    cur[last] = v;
    if (top && cur === root) lines.set(last, line);
  };

  while (i < src.length) {
    skipWs();
    skipComment();
    if (newline()) continue;
    if (i >= src.length) break;
    if (peek() === "[") {
      if (src[i + 1] === "[") err("arrays of tables ([[…]]) are not supported in pe.toml");
      i++;
      const k = key();
      if (peek() !== "]") err("expected ] after table name");
      i++;
      let t = root;
      for (const [n, p] of k.entries()) {
        const ex = t[p];
        if (ex === undefined) {
          t[p] = {};
          if (t === root) lines.set(p, line);
        } else if (!isTable(ex) || inline.has(ex)) err(`key "${k.slice(0, n + 1).join(".")}" is already defined as a value`);
        t = t[p] as TomlTable;
      }
      if (defined.has(t)) err(`table [${k.join(".")}] defined twice`);
      defined.add(t);
      current = t;
      endOfLine();
      continue;
    }
    const k = key();
    if (peek() !== "=") err(`expected = after key "${k.join(".")}"`);
    i++;
    const startLine = line;
    const v = value();
    const endLine = line;
    line = startLine;
    assign(current, k, v, true);
    line = endLine;
    endOfLine();
  }
  return { table: root, lines };
}
