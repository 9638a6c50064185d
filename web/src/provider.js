// Publish data: upload a dataset file, set its terms (price, privacy budget), optionally add a provider
// contract, and list it. The server validates everything first, so a refusal leaves nothing behind.
import { api } from "./api.js";
import { accountPicker } from "./accounts.js";
import { h, mount, errorBox } from "./dom.js";
import { parseEth, term, familyName, eps } from "./format.js";
import { setDiagnostics } from "@codemirror/lint";
import { contractDiagnostics, createEditor } from "./codemirror.js";
import { PROVIDER_CONTRACT_KEY } from "./editor.js";

function field(name, label, input, help = null) {
  return h(
    "div",
    { class: "field", dataset: { field: name } },
    h("label", { for: input.id }, label),
    input,
    help ? h("small", { class: "help" }, help) : null,
    h("div", { class: "field-error", role: "alert" }),
  );
}

export async function render(page) {
  const input = (id, attrs) => h("input", { id, name: id, ...attrs });
  const file = input("file", { type: "file", accept: ".npz,.csv,.parquet,.zip", required: true });
  const name = input("name", { type: "text", placeholder: "e.g. Breast cancer biopsies, hospital A", maxlength: "100" });
  const description = h("textarea", { id: "description", name: "description", rows: "2", placeholder: "What the data is, where it comes from, how it was labelled." });
  const pricePerJob = input("price_per_job_wei", { type: "text", inputmode: "decimal", value: "0.001" });
  const pricePerEps = input("price_per_epsilon_wei", { type: "text", inputmode: "decimal", value: "0.002" });
  const budget = input("epsilon_budget", { type: "number", step: "any", min: "0", value: "10" });
  const cap = input("max_epsilon_per_job", { type: "number", step: "any", min: "0", value: "2" });
  const delta = input("delta", { type: "number", step: "any", min: "0", max: "1", value: "0.00001" });
  const preview = input("publish_preview", { type: "checkbox" });
  const families = ["logistic_regression", "mlp", "cnn"].map((f) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "allowed_families", value: f }), ` ${familyName(f)}`));
  const picker = accountPicker({ id: "provider-account", label: "Publish as account", role: "provider" });
  const contractToggle = input("with_contract", { type: "checkbox" });
  const contractHost = h("div", { class: "editor-host small", id: "contract-editor" });
  const contractPanel = h("div", { class: "panel", id: "contract-panel" });
  const templateSelect = h("select", { id: "contract-template", "aria-label": "Provider contract template" });
  const checkButton = h("button", { type: "button", class: "secondary", id: "check-contract", onclick: checkContract }, "Check contract");
  const contractBox = h(
    "div",
    { class: "contract-box", dataset: { field: "contract" }, hidden: true },
    h("div", { class: "tabs" }, h("label", {}, "Start from ", templateSelect), h("span", { class: "push" }), checkButton),
    h("div", { class: "editor-layout" }, contractHost, h("aside", {}, contractPanel)),
    h("div", { class: "field-error", role: "alert" }),
  );
  const publish = h("button", { type: "submit", class: "primary", id: "publish" }, "Publish");
  const general = h("div", { id: "publish-message", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "form", id: "publish-form", novalidate: true, onsubmit: (e) => { e.preventDefault(); submit(); } },
    h("fieldset", {}, h("legend", {}, "1. Your data"),
      field("file", "Dataset file", file, "A .csv or .parquet table with a “label” column, a .npz with “features” and “labels”, or a .zip of one folder of images per class. The file is encrypted before it is stored; nobody can read it but the enclave."),
      field("name", "Public name", name, "Shown in the marketplace."),
      field("description", "Public description (optional)", description),
      h("div", { class: "field", dataset: { field: "publish_preview" } }, h("label", { class: "check" }, preview, " Show a sample preview in the marketplace: a few images per class, or the first rows of a table. Off by default, because everyone can then see those samples."), h("div", { class: "field-error" }))),
    h("fieldset", { dataset: { field: "terms" } }, h("legend", {}, "2. Your terms"), h("div", { class: "field-error", role: "alert" }),
      h("div", { class: "row" },
        field("price_per_job_wei", "Price per job (ETH)", pricePerJob, "Paid for every job that trains on this data."),
        field("price_per_epsilon_wei", h("span", {}, "Price per unit of ", term("ε", "epsilon"), " (ETH)"), pricePerEps, "Paid on top, for each unit of privacy budget a job spends.")),
      h("div", { class: "row" },
        field("epsilon_budget", h("span", {}, "Total ", term("privacy budget ε", "epsilon")), budget, "All jobs together may never spend more than this. Smaller keeps people more private."),
        field("max_epsilon_per_job", h("span", {}, "Largest ", term("ε", "epsilon"), " per job"), cap, "No single job may spend more."),
        field("delta", term("δ", "delta"), delta, "Usually below 1 / number of rows.")),
      h("div", { class: "field", dataset: { field: "allowed_families" } }, h("label", {}, "Models allowed (none ticked: any)"), h("div", { class: "checks" }, families), h("div", { class: "field-error" }))),
    h("fieldset", {}, h("legend", {}, "3. Your own rules (optional)"),
      h("label", { class: "check" }, contractToggle, " Add a ", term("provider contract", "contract"), ": Python that the enclave runs on every job to accept or refuse it"),
      contractBox),
    h("fieldset", {}, h("legend", {}, "4. Publish"), h("div", { class: "actions" }, picker.element, publish)),
    general,
  );

  mount(
    page,
    h("h1", {}, "Publish data"),
    h("p", { class: "lead" }, "List a dataset so that researchers can train models on it without seeing it. You set the price and how much privacy budget it may ever spend; you are paid when jobs complete. ", h("a", { href: "#/provider/listings" }, "See your listings and earnings.")),
    form,
  );

  const contractEditor = createEditor(contractHost, {
    doc: sessionStorage.getItem(PROVIDER_CONTRACT_KEY) ?? "",
    kind: "provider",
    onChange: (text) => sessionStorage.setItem(PROVIDER_CONTRACT_KEY, text),
  });
  const showContract = () => (contractBox.hidden = !contractToggle.checked);
  contractToggle.addEventListener("change", showContract);
  if (contractEditor.text().trim()) contractToggle.checked = true;
  showContract();

  let templates = {};
  api.get("/api/templates").then(
    (t) => {
      templates = t.provider_contracts ?? {};
      mount(templateSelect, h("option", { value: "" }, "a template…"), Object.entries(templates).map(([k, v]) => h("option", { value: k }, v.title ?? k)));
    },
    () => mount(templateSelect, h("option", { value: "" }, "(templates unavailable)")),
  );
  templateSelect.addEventListener("change", () => {
    if (templates[templateSelect.value]) contractEditor.setText(templates[templateSelect.value].source);
    templateSelect.value = "";
  });

  async function checkContract() {
    mount(contractPanel, h("p", { class: "muted" }, "Checking…"));
    try {
      const out = await api.post("/api/provider/check-contract", { source: contractEditor.text() });
      contractPanel.dataset.state = out.ok ? "ok" : "violations";
      mount(
        contractPanel,
        out.ok ? h("div", { class: "verdict ok" }, "✓ The sandbox accepts this contract.") : h("div", { class: "verdict bad" }, "The sandbox refuses this contract:"),
        out.problems?.length ? h("ol", { class: "violations" }, out.problems.map((p) => h("li", { class: "violation" }, p))) : null,
      );
      contractEditor.view.dispatch(setDiagnostics(contractEditor.view.state, contractDiagnostics(out.problems ?? [], contractEditor.view.state.doc)));
      return out.ok;
    } catch (e) {
      mount(contractPanel, errorBox(`The contract could not be checked: ${e.message}`));
      return false;
    }
  }

  function clearErrors() {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
    mount(general);
  }

  function showError(fieldName, message) {
    const find = (n) => form.querySelector(`[data-field="${CSS.escape(n)}"]`);
    const box = fieldName ? find(fieldName) ?? find(String(fieldName).split(".").pop()) : null;
    if (box) {
      box.classList.add("invalid");
      box.querySelector(":scope > .field-error").textContent = message;
      box.scrollIntoView({ block: "center" });
    } else mount(general, errorBox(message));
  }

  async function submit() {
    clearErrors();
    const data = new FormData();
    if (!file.files.length) return showError("file", "Choose the dataset file to publish.");
    data.set("file", file.files[0]);
    data.set("name", name.value.trim());
    if (description.value.trim()) data.set("description", description.value.trim());
    for (const [el, key] of [[pricePerJob, "price_per_job_wei"], [pricePerEps, "price_per_epsilon_wei"]]) {
      try {
        data.set(key, parseEth(el.value));
      } catch (e) {
        return showError(key, e.message);
      }
    }
    for (const [el, key] of [[budget, "epsilon_budget"], [cap, "max_epsilon_per_job"], [delta, "delta"]]) {
      if (el.value.trim() === "" || !Number.isFinite(Number(el.value))) return showError(key, "Enter a number.");
      data.set(key, el.value.trim());
    }
    const allowed = [...form.querySelectorAll('input[name="allowed_families"]:checked')].map((c) => c.value);
    if (allowed.length) data.set("allowed_families", allowed.join(","));
    if (contractToggle.checked && contractEditor.text().trim()) data.set("contract", contractEditor.text());
    data.set("publish_preview", preview.checked ? "true" : "false");
    const account = picker.value();
    if (account === null) return showError(null, "Choose the account to publish with.");
    data.set("account", String(account));

    publish.disabled = true;
    publish.textContent = "Encrypting and publishing…";
    try {
      const out = await api.post("/api/provider/publish", data);
      mount(
        general,
        h(
          "div",
          { class: "success-box", id: "published", dataset: { listingId: String(out.listing_id) } },
          h("strong", {}, `Published as listing #${out.listing_id}.`),
          ` ${Number(out.rows).toLocaleString("en-US")} rows of ${out.modality} data, encrypted and sealed to the enclave. Privacy budget ε ${eps(Number(budget.value))}. `,
          h("a", { href: "#/market" }, "See it in the marketplace"),
          " · ",
          h("a", { href: "#/provider/listings" }, "Your listings and earnings"),
        ),
      );
      general.scrollIntoView({ block: "center" });
    } catch (e) {
      showError(e.field, `Not published, nothing was stored: ${e.message}`);
    } finally {
      publish.disabled = false;
      publish.textContent = "Publish";
    }
  }

  return () => contractEditor.destroy();
}
