// CodeMirror 6 editors for job contracts (JSON) and provider contracts (Python), with lint diagnostics
// that come from the server (the same verifier as `sterling job verify`), debounced while typing.
import { EditorView, basicSetup } from "codemirror";
import { Compartment, EditorState } from "@codemirror/state";
import { json } from "@codemirror/lang-json";
import { python } from "@codemirror/lang-python";
import { linter, lintGutter } from "@codemirror/lint";

export const LINT_DELAY_MS = 300;

const theme = EditorView.theme({
  "&": { fontSize: "13.5px", height: "100%" },
  ".cm-scroller": { fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace" },
});

/** A range covering line `n` (1-based) without its indentation, clamped to the document. */
export function lineRange(doc, n) {
  const line = doc.line(Math.max(1, Math.min(doc.lines, Number(n) || 1)));
  const indent = line.text.length - line.text.trimStart().length;
  return { from: line.from + indent, to: Math.max(line.from + indent, line.to) };
}

/**
 * An editor in `parent`. `check(text) -> Promise<Diagnostic[]>` runs LINT_DELAY_MS after typing stops;
 * `onChange(text)` runs on every change.
 */
export function createEditor(parent, { doc = "", kind = "job", check = null, onChange = null }) {
  const language = new Compartment();
  const lint = new Compartment();
  const lintExtension = (fn) => (fn ? [linter((view) => fn(view.state.doc.toString(), view.state.doc), { delay: LINT_DELAY_MS }), lintGutter()] : []);
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc,
      extensions: [
        basicSetup,
        theme,
        language.of(kind === "provider" ? python() : json()),
        lint.of(lintExtension(check)),
        EditorView.updateListener.of((u) => {
          if (u.docChanged && onChange) onChange(u.state.doc.toString());
        }),
      ],
    }),
  });
  return {
    view,
    text: () => view.state.doc.toString(),
    setText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    },
    setKind(next, nextCheck) {
      view.dispatch({ effects: [language.reconfigure(next === "provider" ? python() : json()), lint.reconfigure(lintExtension(nextCheck))] });
    },
    goToLine(n) {
      const { from } = lineRange(view.state.doc, n);
      view.dispatch({ selection: { anchor: from }, scrollIntoView: true });
      view.focus();
    },
    destroy: () => view.destroy(),
  };
}

/** Diagnostics for the problems of a provider contract check: "line N" in a problem places it there. */
export function contractDiagnostics(problems, doc) {
  return problems.map((p) => {
    const m = /line (\d+)/i.exec(p);
    const { from, to } = lineRange(doc, m ? Number(m[1]) : 1);
    return { from, to, severity: "error", message: p, source: "sandbox check" };
  });
}
