// The verifier's Report in plain words: each violation with its listing, term and numbers, or the ε and
// price summary when the contract passes.
import { h, mount } from "./dom.js";
import { eps, eth, familyName, money, term, weiText } from "./format.js";
import { lineRange } from "./codemirror.js";

const TERM_WORDS = {
  schema: "Contract format",
  epsilon: "Privacy budget ε",
  max_epsilon_per_job: "Largest ε per job",
  epsilon_budget: "Privacy budget left",
  delta: "δ",
  price: "Price",
  payment_cap: "Payment cap",
  allowed_families: "Model allowed",
  policy: "Who may buy",
  contract: "Provider contract",
};

export const termWords = (t) => TERM_WORDS[t] ?? String(t ?? "").replaceAll("_", " ");

function value(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return eps(v);
  if (typeof v === "string" && /^\d{10,}$/.test(v)) return money(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** CodeMirror diagnostics for a Report: violations at their line, a parse error at its position. */
export function reportDiagnostics(report, doc) {
  const out = [];
  if (report.parse_error) {
    const pe = report.parse_error;
    const line = doc.line(Math.max(1, Math.min(doc.lines, pe.line || 1)));
    const from = Math.min(line.to, line.from + Math.max(0, (pe.column || 1) - 1));
    out.push({ from, to: Math.min(doc.length, Math.max(from + 1, line.to)), severity: "error", message: `Not valid JSON: ${pe.message}`, source: "JSON" });
  }
  for (const v of report.violations ?? []) {
    if (!v.line) continue;
    const { from, to } = lineRange(doc, v.line);
    const where = v.listing_id !== null && v.listing_id !== undefined ? `Listing #${v.listing_id}: ` : "";
    out.push({ from, to, severity: "error", message: `${where}${v.message}`, source: termWords(v.term) });
  }
  return out;
}

/** Wei in a message ("cost 8000000000000000 wei") also in ETH, for people. */
const plainWei = (text) => String(text).replace(/\b(\d{7,})( wei)?\b/g, (_, d) => `${eth(d)} (${weiText(d)})`);

function violationItem(v, goToLine) {
  const isWei = v.term === "price" || String(v.field ?? "").endsWith("_wei");
  const shown = (x) => (isWei && x !== null && x !== undefined && /^\d+$/.test(String(x)) ? money(String(BigInt(x))) : value(x));
  return h(
    "li",
    { class: "violation", dataset: { term: String(v.term), listingId: v.listing_id === null || v.listing_id === undefined ? "" : String(v.listing_id), line: v.line ? String(v.line) : "" } },
    h(
      "div",
      { class: "violation-head" },
      h("strong", {}, termWords(v.term)),
      v.listing_id !== null && v.listing_id !== undefined ? h("span", { class: "badge muted" }, `listing #${v.listing_id}`) : null,
      v.line ? h("button", { class: "link", onclick: () => goToLine(v.line), title: "Show this line in the editor" }, `line ${v.line}`) : h("span", { class: "muted" }, v.field ? `at ${v.field}` : "whole contract"),
    ),
    h("p", {}, isWei ? plainWei(v.message) : v.message),
    v.asked !== null && v.asked !== undefined
      ? h("dl", { class: "asked" }, h("dt", {}, "You asked"), h("dd", { class: "asked-value" }, shown(v.asked)), h("dt", {}, "Allowed"), h("dd", { class: "allowed-value" }, shown(v.allowed)))
      : null,
  );
}

function perListing(map) {
  if (!map) return [];
  if (Array.isArray(map)) return map.map((x, i) => (Array.isArray(x) ? x : [x.listing_id ?? i, x.value ?? x]));
  return Object.entries(map);
}

/** The summary's facts worth showing a person, in plain words: [key, label, glossary key]. */
const SUMMARY_FACTS = [
  ["model_family", "Model"],
  ["train_rows", "Rows used for training"],
  ["steps", "Training steps"],
  ["sample_rate", "Share of rows in each step"],
  ["noise_multiplier", "Noise multiplier", "noise"],
  ["epsilon_metrics", "ε for measuring quality", "epsilon"],
  ["epsilon_appraisal", "ε for appraisal", "appraisal"],
  ["epsilon_attribution", "ε for attribution", "epsilon"],
  ["epsilon_total", "ε spent on each listing", "epsilon"],
  ["delta", "δ", "delta"],
  ["payment_cap_wei", "Most you will pay", "escrow"],
  ["bonus_pool_wei", "Bonus pool"],
];

export function summaryView(summary) {
  if (!summary) return null;
  const epsRows = new Map(perListing(summary.epsilon_per_listing));
  const priceRows = new Map(perListing(summary.price_per_listing_wei));
  const ids = [...new Set([...epsRows.keys(), ...priceRows.keys()])];
  const extra = SUMMARY_FACTS.filter(([k]) => summary[k] !== undefined && summary[k] !== null && !(k.startsWith("epsilon_") && k !== "epsilon_total" && Number(summary[k]) === 0));
  return h(
    "div",
    { class: "summary", id: "verify-summary" },
    h(
      "table",
      { class: "table compact" },
      h("thead", {}, h("tr", {}, h("th", {}, "Listing"), h("th", {}, term("ε spent", "epsilon")), h("th", {}, "Price"))),
      h("tbody", {}, ids.map((id) => h("tr", { dataset: { listingId: String(id) } }, h("td", {}, `#${id}`), h("td", {}, eps(epsRows.get(id))), h("td", {}, priceRows.has(id) ? money(priceRows.get(id)) : "—")))),
      summary.total_price_wei !== undefined ? h("tfoot", {}, h("tr", {}, h("td", {}, "Total"), h("td", {}), h("td", { class: "total-price" }, money(summary.total_price_wei)))) : null,
    ),
    extra.length ? h("dl", { class: "facts" }, extra.map(([k, label, key]) => [h("dt", {}, key ? term(label, key) : label), h("dd", { dataset: { summary: k } }, k.endsWith("_wei") ? money(summary[k]) : k === "model_family" ? familyName(summary[k]) : value(summary[k]))])) : null,
  );
}

/** Fills `panel` with the verdict of `report`. */
export function renderReport(panel, report, goToLine) {
  const violations = report.violations ?? [];
  const status = report.parse_error ? "parse-error" : report.ok ? "ok" : "violations";
  panel.dataset.state = status;
  mount(
    panel,
    report.ok
      ? h("div", { class: "verdict ok" }, "✓ This contract respects every listing's terms.")
      : report.parse_error
        ? h("div", { class: "verdict bad" }, `The text is not valid JSON (line ${report.parse_error.line}, column ${report.parse_error.column}): ${report.parse_error.message}`)
        : h("div", { class: "verdict bad" }, `${violations.length} problem${violations.length === 1 ? "" : "s"} to fix before you can submit.`),
    violations.length ? h("ol", { class: "violations", id: "violations" }, violations.map((v) => violationItem(v, goToLine))) : null,
    report.ok ? [h("h3", {}, "What this job will spend"), summaryView(report.summary)] : null,
  );
}
