// POSIX-shell-like word splitting for the Command and Entrypoint fields (no expansion, no comments):
// whitespace separates words; '…' is literal; "…" keeps everything but lets \ escape $ ` " \ and newline;
// outside quotes \ escapes the next character and backslash-newline is removed.

export class ShellSplitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ShellSplitError";
  }
}

export function shellSplit(s: string): string[] {
  const words: string[] = [];
  let cur = "";
  let inWord = false;
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (c === " " || c === "\t" || c === "\n" || c === "\r") {
      if (inWord) {
        words.push(cur);
        cur = "";
        inWord = false;
      }
      i++;
    } else if (c === "'") {
      const end = s.indexOf("'", i + 1);
      if (end < 0) throw new ShellSplitError("unterminated single quote");
      cur += s.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i++;
      inWord = true;
      for (;;) {
        if (i >= s.length) throw new ShellSplitError("unterminated double quote");
        const d = s[i];
        if (d === '"') {
          i++;
          break;
        }
        if (d === "\\" && i + 1 < s.length && '$`"\\\n'.includes(s[i + 1])) {
          if (s[i + 1] !== "\n") cur += s[i + 1];
          i += 2;
        } else {
          cur += d;
          i++;
        }
      }
    } else if (c === "\\") {
      if (i + 1 >= s.length) throw new ShellSplitError("trailing backslash");
      if (s[i + 1] !== "\n") {
        cur += s[i + 1];
        inWord = true;
      }
      i += 2;
    } else {
      cur += c;
      inWord = true;
      i++;
    }
  }
  if (inWord) words.push(cur);
  return words;
}

/** Quotes one word so that shellSplit gives it back unchanged. */
export function shellQuote(w: string): string {
  if (w !== "" && /^[A-Za-z0-9_\-+=.,/:@%^]+$/.test(w)) return w;
  return "'" + w.replace(/'/g, `'\\''`) + "'";
}

export function shellJoin(words: string[]): string {
  return words.map(shellQuote).join(" ");
}
