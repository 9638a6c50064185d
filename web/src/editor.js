// Contract editor: a job contract (JSON) verified live against the chain as you type, or a provider
// contract (Python) checked in the sandbox; templates for both; submit a job with a dev account.
import { api } from "./api.js";
import { accountPicker } from "./accounts.js";
import { h, mount, errorBox } from "./dom.js";
import { term, familyName } from "./format.js";
import { forceLinting } from "@codemirror/lint";
import { contractDiagnostics, createEditor } from "./codemirror.js";
import { renderReport, reportDiagnostics } from "./report.js";
import { basket, editorDoc, setEditorDoc } from "./store.js";

export const PROVIDER_CONTRACT_KEY = "sterling.providerContract";

export async function render(page) {
  const saved = editorDoc();
  let kind = saved?.kind ?? "job";
  const panel = h("div", { class: "panel", id: "verify-panel", "aria-live": "polite" });
  const message = h("div", { id: "editor-message" });
  const host = h("div", { class: "editor-host", id: "editor" });
  const templateSelect = h("select", { id: "template", "aria-label": "Start from a template" });
  const picker = accountPicker({ id: "submit-account", label: "Submit as account" });
  const submit = h("button", { class: "primary", id: "submit-job", onclick: submitJob }, "Submit job");
  const useForPublish = h("button", { class: "primary", id: "use-contract", onclick: () => { sessionStorage.setItem(PROVIDER_CONTRACT_KEY, ed.text()); location.hash = "#/provider"; } }, "Use this contract when publishing");
  const modeButtons = {
    job: h("button", { class: "tab", dataset: { kind: "job" }, onclick: () => switchKind("job") }, "Job contract (JSON)"),
    provider: h("button", { class: "tab", dataset: { kind: "provider" }, onclick: () => switchKind("provider") }, "Provider contract (Python)"),
  };
  const submitBar = h("div", { class: "actions", id: "submit-bar" }, picker.element, submit);
  const publishBar = h("div", { class: "actions", id: "publish-bar" }, useForPublish);

  mount(
    page,
    h("h1", {}, "Contract editor"),
    h(
      "p",
      { class: "lead" },
      "A ",
      h("strong", {}, "job contract"),
      " says which listings to train on, the model, and how much ",
      term("privacy budget ε", "epsilon"),
      " to spend on each. It is checked against every listing's terms while you type. A ",
      term("provider contract", "contract"),
      " is a data owner's own rule, written in Python.",
    ),
    h("div", { class: "tabs" }, modeButtons.job, modeButtons.provider, h("label", { class: "push" }, "Start from a template ", templateSelect)),
    h("div", { class: "editor-layout" }, host, h("aside", {}, h("h2", {}, "Check"), panel)),
    submitBar,
    publishBar,
    message,
  );

  const seq = { n: 0 };
  async function checkJob(text, doc) {
    if (!text.trim()) {
      mount(panel, h("p", { class: "muted" }, "The editor is empty. Pick a template above, or write the contract from Your dataset."));
      panel.dataset.state = "empty";
      return [];
    }
    const mine = ++seq.n;
    panel.dataset.state = "checking";
    panel.classList.add("checking");
    try {
      const report = await api.post("/api/verify", { text, account: picker.value() ?? 0 });
      if (mine !== seq.n) return [];
      renderReport(panel, report, (n) => ed.goToLine(n));
      submit.disabled = !report.ok;
      return reportDiagnostics(report, doc);
    } catch (e) {
      if (mine === seq.n) {
        panel.dataset.state = "error";
        mount(panel, errorBox(`The contract could not be checked: ${e.message}`));
      }
      return [];
    } finally {
      if (mine === seq.n) panel.classList.remove("checking");
    }
  }

  async function checkProvider(text, doc) {
    if (!text.trim()) {
      mount(panel, h("p", { class: "muted" }, "The editor is empty. Pick a provider contract template above."));
      panel.dataset.state = "empty";
      return [];
    }
    const mine = ++seq.n;
    panel.dataset.state = "checking";
    try {
      const out = await api.post("/api/provider/check-contract", { source: text });
      if (mine !== seq.n) return [];
      panel.dataset.state = out.ok ? "ok" : "violations";
      mount(
        panel,
        out.ok
          ? h("div", { class: "verdict ok" }, "✓ The sandbox accepts this contract. Publish a listing with it on the Publish data page.")
          : h("div", { class: "verdict bad" }, `${out.problems.length} problem${out.problems.length === 1 ? "" : "s"} the sandbox found:`),
        out.problems.length ? h("ol", { class: "violations" }, out.problems.map((p) => h("li", { class: "violation" }, p))) : null,
      );
      return contractDiagnostics(out.problems, doc);
    } catch (e) {
      if (mine === seq.n) {
        panel.dataset.state = "error";
        mount(panel, errorBox(`The contract could not be checked: ${e.message}`));
      }
      return [];
    }
  }

  const checker = (k) => (k === "provider" ? checkProvider : checkJob);
  const ed = createEditor(host, { doc: saved?.text ?? "", kind, check: checker(kind), onChange: (text) => setEditorDoc(kind, text) });
  picker.select.addEventListener("change", () => forceLinting(ed.view)); // prices depend on the buyer
  submit.disabled = true; // until the first check passes

  let templates = { jobs: {}, provider_contracts: {} };
  function fillTemplates() {
    const entries = kind === "job" ? Object.entries(templates.jobs ?? {}) : Object.entries(templates.provider_contracts ?? {});
    mount(templateSelect, h("option", { value: "" }, "Choose…"), entries.map(([name, t]) => h("option", { value: name }, t.title ?? familyName(name))));
  }
  templateSelect.addEventListener("change", async () => {
    const name = templateSelect.value;
    templateSelect.value = "";
    if (!name) return;
    mount(message);
    try {
      if (kind === "provider") ed.setText(templates.provider_contracts[name].source);
      else ed.setText(await jobTemplate(name, templates.jobs[name]));
    } catch (e) {
      mount(message, errorBox(e.message));
    }
  });

  async function jobTemplate(name, t) {
    const ids = basket();
    if (ids.length) {
      const out = await api.post("/api/assemble", { listing_ids: ids, family: name, account: picker.value() ?? 0 });
      return out.text;
    }
    if (t?.text) return t.text;
    throw new Error("Add listings to your dataset first (in the marketplace): a job contract names the listings it trains on.");
  }

  function switchKind(next) {
    if (next === kind) return;
    setEditorDoc(kind, ed.text());
    kind = next;
    const other = next === "provider" ? sessionStorage.getItem(PROVIDER_CONTRACT_KEY) ?? "" : sessionStorage.getItem("sterling.jobText") ?? "";
    if (next === "provider") sessionStorage.setItem("sterling.jobText", ed.text());
    else sessionStorage.setItem(PROVIDER_CONTRACT_KEY, ed.text());
    ed.setKind(next, checker(next));
    ed.setText(other);
    layout();
  }

  function layout() {
    for (const [k, b] of Object.entries(modeButtons)) b.classList.toggle("active", k === kind);
    submitBar.hidden = kind !== "job";
    publishBar.hidden = kind !== "provider";
    fillTemplates();
    if (!ed.text().trim()) checker(kind)("", ed.view.state.doc);
  }

  async function submitJob() {
    const account = picker.value();
    mount(message);
    if (account === null) {
      mount(message, errorBox("Choose an account to pay with first."));
      return;
    }
    submit.disabled = true;
    submit.textContent = "Submitting…";
    try {
      const out = await api.post("/api/jobs", { text: ed.text(), account });
      sessionStorage.removeItem("sterling.editor");
      location.hash = `#/jobs/${out.job_id}`;
    } catch (e) {
      mount(message, errorBox(`The job was not submitted, and nothing was paid: ${e.message}`));
      if (e.body?.report) renderReport(panel, e.body.report, (n) => ed.goToLine(n));
    } finally {
      submit.disabled = false;
      submit.textContent = "Submit job";
    }
  }

  layout();
  try {
    templates = await api.get("/api/templates");
    fillTemplates();
  } catch (e) {
    mount(message, errorBox(`Templates are unavailable: ${e.message}`));
  }
  return () => ed.destroy();
}
