import { test } from "node:test";
import assert from "node:assert/strict";
import { SseParser, SseEvent } from "../../src/sse";

// Feeds text in pieces of every size: the events must not depend on how the network cut it.
function parseInPieces(text: string, size: number): SseEvent[] {
  const p = new SseParser();
  const out: SseEvent[] = [];
  for (let i = 0; i < text.length; i += size) out.push(...p.push(text.slice(i, i + size)));
  return out;
}

test("server-sent events, however the text is cut", () => {
  const cases: Array<{ name: string; text: string; want: SseEvent[] }> = [
    {
      name: "pe serve's events",
      text: 'event: start\ndata: {"request_id":"ab"}\n\n: keep-alive\n\nevent: stdout\ndata: "a\\nb"\n\nevent: result\ndata: {"kind":"Ok"}\n\n',
      want: [
        { event: "start", data: '{"request_id":"ab"}' },
        { event: "stdout", data: '"a\\nb"' },
        { event: "result", data: '{"kind":"Ok"}' },
      ],
    },
    {
      name: "CRLF and CR line ends, several data lines, no space after the colon",
      text: "event:x\r\ndata:1\r\ndata: 2\r\n\r\ndata: 3\r\r",
      want: [
        { event: "x", data: "1\n2" },
        { event: "message", data: "3" },
      ],
    },
    {
      name: "an event without data, unknown fields and an unfinished event",
      text: "event: nothing\n\nid: 7\nretry: 10\nfoo: bar\ndata: d\n\nevent: cut\ndata: never",
      want: [{ event: "message", data: "d" }],
    },
  ];
  for (const c of cases) {
    for (const size of [1, 2, 3, 7, 1000]) {
      assert.deepEqual(parseInPieces(c.text, size), c.want, `${c.name}, pieces of ${size}`);
    }
  }
});
