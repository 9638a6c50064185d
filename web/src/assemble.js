// Your dataset: the chosen listings, your own validation set (optional), a model family, and a contract
// written to satisfy every one of them.
import { api } from "./api.js";
import { accountPicker } from "./accounts.js";
import { h, mount, empty, errorBox } from "./dom.js";
import { eps, money, term, familyName } from "./format.js";
import { basket, clearBasket, onBasket, removeFromBasket, setEditorDoc, setValidation, validation } from "./store.js";

export async function render(page) {
  const list = h("div", { id: "dataset" });
  const families = h("div", { class: "families", id: "families" });
  const message = h("div", { id: "assemble-message" });
  const picker = accountPicker({ id: "assemble-account", label: "Buy as account" });
  const go = h("button", { class: "primary", id: "assemble-go", onclick: assemble }, "Write the contract");
  const validationFile = h("input", { type: "file", id: "validation-file", accept: ".npz,.csv,.parquet,.zip" });
  const validationGo = h("button", { id: "validation-upload", onclick: uploadValidation }, "Upload validation set");
  const validationStatus = h("div", { id: "validation-status", "aria-live": "polite" });
  mount(
    page,
    h("h1", {}, "Your dataset"),
    h(
      "p",
      { class: "lead" },
      "The listings you picked in the marketplace. Choose a kind of model, and Sterling writes a training contract that stays within each provider's ",
      term("privacy budget", "epsilon"),
      " and price. You can review and edit it before submitting.",
    ),
    list,
    h("h2", {}, "Your validation set ", h("span", { class: "muted" }, "(optional)")),
    h(
      "p",
      { class: "muted" },
      "A file of your own labelled examples, with the same columns and classes as the listings (.csv or .parquet with a “label” column, .npz, or a .zip of class folders). With it, the model is measured on your examples (exactly, at no privacy cost), the training epoch that does best on them is the one you get, and you learn how much each provider's data helped: its ",
      term("appraisal value", "appraisal"),
      ", released with a small privacy budget. Without it, quality is measured on a slice of the providers' data instead.",
    ),
    h("div", { class: "actions" }, validationFile, validationGo),
    validationStatus,
    h("h2", {}, "Model"),
    families,
    h("div", { class: "actions" }, picker.element, go),
    message,
  );

  // Only the listings in the dataset, one request each: the market may hold far more than a page.
  async function basketListings() {
    const got = await Promise.all(basket().map((id) => api.get(`/api/listings/${id}`).catch((e) => (e.status === 404 ? null : Promise.reject(e)))));
    return got.filter(Boolean);
  }

  let listings = [];
  let templates = {};
  try {
    [listings, templates] = await Promise.all([basketListings(), api.get("/api/templates")]);
  } catch (e) {
    mount(list, errorBox(`The listings could not be loaded: ${e.message}`));
    return null;
  }

  let family = "logistic_regression";

  function drawValidation(error = null) {
    const v = validation();
    validationStatus.dataset.state = error ? "error" : v ? "ready" : "none";
    if (error) mount(validationStatus, errorBox(`Your validation set was not accepted: ${error}`));
    else if (v)
      mount(
        validationStatus,
        h(
          "p",
          { class: "ok-text" },
          `Using ${v.name}: ${Number(v.rows).toLocaleString("en-US")} rows, classes ${v.classes.join(", ")}. The contract will evaluate on it and ask for each provider's appraisal value. `,
          h("button", { class: "link", id: "validation-remove", onclick: () => { setValidation(null); drawValidation(); } }, "Don't use it"),
        ),
      );
    else mount(validationStatus);
  }

  async function uploadValidation() {
    if (!validationFile.files.length) return drawValidation("choose a file first.");
    if (!basket().length) return drawValidation("add listings to your dataset first; the file must match them.");
    const data = new FormData();
    data.set("file", validationFile.files[0]);
    data.set("listing_ids", basket().join(","));
    validationGo.disabled = true;
    validationGo.textContent = "Checking…";
    try {
      const out = await api.post("/api/validation", data);
      setValidation({ ...out, name: validationFile.files[0].name });
      drawValidation();
    } catch (e) {
      setValidation(null);
      drawValidation(e.message);
    } finally {
      validationGo.disabled = false;
      validationGo.textContent = "Upload validation set";
    }
  }
  function chosen() {
    const ids = basket();
    return listings.filter((l) => ids.includes(l.id));
  }

  function draw() {
    const picked = chosen();
    go.disabled = picked.length === 0;
    if (!picked.length) {
      mount(
        list,
        empty(
          "Your dataset is empty. Go to the marketplace and press “Add to dataset” on the listings you want to train on.",
          h("a", { class: "button primary", href: "#/market" }, "Open the marketplace"),
        ),
      );
    } else {
      const total = picked.reduce((s, l) => s + Number(l.rows), 0);
      mount(
        list,
        h(
          "table",
          { class: "table" },
          h("thead", {}, h("tr", {}, ["Listing", "Rows", "Classes", h("span", {}, "Largest ", term("ε", "epsilon"), " per job"), term("Privacy budget left", "epsilon"), term("Price at that ε", "price_at_cap"), ""].map((x) => h("th", {}, x)))),
          h(
            "tbody",
            {},
            picked.map((l) =>
              h(
                "tr",
                { dataset: { listingId: String(l.id) } },
                h("td", {}, l.name || `Listing ${l.id}`, " ", h("span", { class: "muted" }, `#${l.id}`), l.open ? null : h("span", { class: "badge warn" }, "closed")),
                h("td", {}, Number(l.rows).toLocaleString("en-US")),
                h("td", {}, (l.classes ?? []).join(", ")),
                h("td", {}, eps(l.terms.max_epsilon_per_job)),
                h("td", {}, eps(l.budget.epsilon_left)),
                h("td", {}, money(l.price_at_cap_wei)),
                h("td", {}, h("button", { class: "link", onclick: () => removeFromBasket(l.id) }, "Remove")),
              ),
            ),
          ),
          h("tfoot", {}, h("tr", {}, h("td", {}, `${picked.length} listing${picked.length > 1 ? "s" : ""}`), h("td", {}, total.toLocaleString("en-US")), h("td", { colspan: "5" }, h("button", { class: "link", onclick: clearBasket }, "Clear all")))),
        ),
      );
    }
    const jobs = templates.jobs ?? {};
    const names = Object.keys(jobs).length ? Object.keys(jobs) : ["logistic_regression", "mlp", "cnn"];
    mount(
      families,
      names.map((name) => {
        const refusing = picked.filter((l) => l.terms.allowed_families && !l.terms.allowed_families.includes(name));
        return h(
          "label",
          { class: `family${family === name ? " selected" : ""}${refusing.length ? " refused" : ""}` },
          h("input", { type: "radio", name: "family", value: name, checked: family === name, onchange: () => { family = name; draw(); } }),
          h("strong", {}, jobs[name]?.title ?? familyName(name)),
          h("span", {}, jobs[name]?.description ?? ""),
          refusing.length ? h("span", { class: "warn-text" }, `Not allowed by ${refusing.map((l) => `#${l.id}`).join(", ")}`) : null,
        );
      }),
    );
  }

  async function assemble() {
    const account = picker.value();
    mount(message);
    if (account === null) {
      mount(message, errorBox("Choose an account to buy with first."));
      return;
    }
    go.disabled = true;
    go.textContent = "Writing…";
    try {
      const v = validation();
      const body = { listing_ids: basket(), family, account };
      if (v) body.validation_uri = v.validation_uri;
      const out = await api.post("/api/assemble", body);
      setEditorDoc("job", out.text);
      localStorage.setItem("sterling.account.consumer", String(account));
      location.hash = "#/editor";
    } catch (e) {
      mount(message, errorBox(`The contract could not be written: ${e.message}`));
    } finally {
      go.disabled = false;
      go.textContent = "Write the contract";
    }
  }

  const off = onBasket(draw);
  draw();
  drawValidation();
  return off;
}
