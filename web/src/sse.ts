// A server-sent events parser for a fetch() body: EventSource cannot POST, so the page reads the
// streaming form of `POST api/v2/runi` (Accept: text/event-stream) itself.

export interface SseEvent {
  event: string;
  data: string;
}

/**
 * SseParser takes the stream's text in any pieces and returns the events they complete, as the
 * HTML standard reads them: lines end in LF, CRLF or CR; `event:` names the event (default
 * "message"), `data:` lines are joined with LF; comments (`:`), `id:`, `retry:` and unknown fields
 * are ignored; an event without data is not dispatched; a blank line ends an event.
 */
export class SseParser {
  private buf = "";
  private event = "";
  private data: string[] = [];
  private sawCR = false;

  push(text: string): SseEvent[] {
    const out: SseEvent[] = [];
    // A CR at the end of the previous piece may be the first half of a CRLF.
    if (this.sawCR && text.startsWith("\n")) text = text.slice(1);
    this.sawCR = false;
    this.buf += text;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.buf);
      if (!m) break;
      if (m[0] === "\r" && m.index === this.buf.length - 1) this.sawCR = true;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      this.line(line, out);
    }
    return out;
  }

  private line(line: string, out: SseEvent[]) {
    if (line === "") {
      if (this.data.length) out.push({ event: this.event || "message", data: this.data.join("\n") });
      this.event = "";
      this.data = [];
      return;
    }
    if (line.startsWith(":")) return;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
  }
}
