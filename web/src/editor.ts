// CodeMirror 6 set-up: one view, one EditorState per input file (so each keeps its undo history).
// Tab indents, but never traps keyboard users: Escape then Tab (or Ctrl+M, which toggles) moves focus on.

import { minimalSetup } from "codemirror";
import { EditorView, keymap, lineNumbers, highlightActiveLine, highlightActiveLineGutter } from "@codemirror/view";
import { EditorState, Extension, Prec } from "@codemirror/state";
import { indentWithTab, temporarilySetTabFocusMode, simplifySelection } from "@codemirror/commands";
import { indentOnInput, bracketMatching, StreamLanguage, LanguageSupport } from "@codemirror/language";
import { shell } from "@codemirror/legacy-modes/mode/shell";
import { toml } from "@codemirror/legacy-modes/mode/toml";

type Lang = "cpp" | "python" | "shell" | "toml";

function langOf(path: string): Lang | null {
  const name = path.split("/").pop() ?? "";
  const ext = name.includes(".") ? name.split(".").pop()!.toLowerCase() : "";
  if (["c", "h", "cc", "cpp", "cxx", "hpp", "hh", "hxx", "ino"].includes(ext)) return "cpp";
  if (["py", "pyw"].includes(ext)) return "python";
  if (["sh", "bash", "ash", "ksh", "zsh"].includes(ext)) return "shell";
  if (ext === "toml") return "toml";
  return null;
}

// The C++ and Python parsers are most of the bundle's weight: they load on first use (separate chunks).
const loaded: Partial<Record<Lang, () => Extension>> = {
  shell: () => new LanguageSupport(StreamLanguage.define(shell)),
  toml: () => new LanguageSupport(StreamLanguage.define(toml)),
};

/** Loads the language support the given paths need; call before makeState. Never throws (plain text then). */
export async function prepareLanguages(paths: string[]): Promise<void> {
  const need = new Set(paths.map(langOf));
  const jobs: Promise<unknown>[] = [];
  if (need.has("cpp") && !loaded.cpp) jobs.push(import("@codemirror/lang-cpp").then((m) => (loaded.cpp = m.cpp)));
  if (need.has("python") && !loaded.python) jobs.push(import("@codemirror/lang-python").then((m) => (loaded.python = m.python)));
  await Promise.all(jobs).catch(() => undefined);
}

function language(path: string): Extension {
  const l = langOf(path);
  const f = l && loaded[l];
  return f ? f() : [];
}

const escapeLeaves = Prec.low(
  keymap.of([
    {
      key: "Escape",
      run: (v) => {
        simplifySelection(v);
        return temporarilySetTabFocusMode(v);
      },
    },
  ]),
);

const theme = EditorView.theme({
  "&": { height: "var(--editor-height, 60vh)", backgroundColor: "var(--panel)", color: "var(--fg)" },
  "&.cm-focused": { outline: "3px solid var(--focus)", outlineOffset: "-3px" },
  ".cm-scroller": { fontFamily: "var(--mono)", fontSize: "14px", lineHeight: "1.45" },
  ".cm-gutters": { backgroundColor: "var(--gutter)", color: "var(--muted)", borderRight: "1px solid var(--line)" },
  ".cm-activeLine": { backgroundColor: "var(--active-line)" },
  ".cm-activeLineGutter": { backgroundColor: "var(--active-gutter)" },
});

const base: Extension = [
  theme,
  minimalSetup, // special chars, history, selection drawing, default highlight style, default + history keymaps
  lineNumbers(),
  highlightActiveLineGutter(),
  indentOnInput(),
  bracketMatching(),
  highlightActiveLine(),
  keymap.of([indentWithTab]),
  escapeLeaves,
  EditorView.lineWrapping,
];

export function makeState(path: string, text: string, label: string): EditorState {
  return EditorState.create({
    doc: text,
    extensions: [
      base,
      language(path),
      EditorView.contentAttributes.of({ "aria-label": label }),
    ],
  });
}

/**
 * The editor lives in a shadow root: there CodeMirror's style-mod uses a constructed (adopted) style
 * sheet instead of inserting <style> elements, which a strict CSP (style-src 'self') would block.
 * Page styles do not cross the shadow boundary, so the editor's look is set by `theme` with the
 * page's CSS custom properties (which do inherit).
 */
export function makeView(parent: HTMLElement): EditorView {
  const host = document.createElement("div");
  host.className = "cm-host";
  parent.appendChild(host);
  const root = host.attachShadow({ mode: "open" });
  return new EditorView({ parent: root, root, state: EditorState.create({ doc: "" }) });
}

export { EditorView, EditorState };
