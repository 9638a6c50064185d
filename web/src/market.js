// Marketplace: a page of listings at a time (search, filters, sort, "N listings" and page controls),
// each with its data type, rows, classes, terms, price and privacy budget left.
import { api, query } from "./api.js";
import { h, mount, empty, errorBox } from "./dom.js";
import { money, eps, term, badge, familyName, shortHex } from "./format.js";
import { addToBasket, basket, onBasket, removeFromBasket } from "./store.js";
import { MAX_PER_PAGE, pager } from "./pager.js";

export const PER_PAGE = 24;

const SORTS = [
  ["id", "Date listed", "desc"],
  ["price", "Price", "asc"],
  ["epsilon_left", "Privacy budget left", "desc"],
  ["rows", "Rows", "desc"],
];

export function budgetBar(budget) {
  const total = Number(budget.epsilon_total) || 0;
  const pct = (x) => (total > 0 ? Math.max(0, Math.min(100, (100 * Number(x)) / total)) : 0);
  return h(
    "div",
    { class: "budget", title: `ε left ${eps(budget.epsilon_left)} of ${eps(total)} (spent ${eps(budget.epsilon_spent)}, reserved by running jobs ${eps(budget.epsilon_reserved)})` },
    h(
      "div",
      { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": String(total), "aria-valuenow": String(budget.epsilon_left) },
      h("span", { class: "left", style: { width: `${pct(budget.epsilon_left)}%` } }),
      h("span", { class: "reserved", style: { width: `${pct(budget.epsilon_reserved)}%` } }),
    ),
    h(
      "div",
      { class: "budget-text" },
      term("Privacy budget ε", "epsilon"),
      ` left: ${eps(budget.epsilon_left)} of ${eps(total)}`,
      Number(budget.epsilon_reserved) > 0 ? h("span", { class: "reserved-text" }, ` (${eps(budget.epsilon_reserved)} held by running jobs)`) : null,
    ),
  );
}

function shapeText(listing) {
  const shape = listing.input_shape ?? [];
  if (!shape.length) return "—";
  return listing.modality === "tabular" && shape.length === 1 ? `${shape[0]} features` : `${shape.join(" × ")} ${listing.modality === "image" ? "pixels" : "values"}`;
}

function classesText(listing) {
  const names = listing.classes ?? [];
  if (!names.length) return "—";
  return names.map((c, i) => (listing.class_counts ? `${c} (${listing.class_counts[i]})` : c)).join(", ");
}

function card(listing, chosen) {
  const t = listing.terms;
  const inBasket = chosen.includes(listing.id);
  const button = h(
    "button",
    {
      class: inBasket ? "secondary" : "primary",
      disabled: !listing.open,
      dataset: { action: "basket" },
      onclick: () => (inBasket ? removeFromBasket(listing.id) : addToBasket(listing.id)),
    },
    !listing.open ? "Closed" : inBasket ? "✓ In your dataset (remove)" : "Add to dataset",
  );
  return h(
    "article",
    { class: `card listing${listing.open ? "" : " closed"}`, dataset: { listingId: String(listing.id) } },
    h(
      "header",
      {},
      h("h2", {}, listing.name || `Listing ${listing.id}`),
      h("div", { class: "badges" }, badge(`#${listing.id}`, "muted"), badge(listing.modality, "modality"), listing.open ? null : badge("closed", "warn")),
    ),
    listing.description ? h("p", { class: "description" }, listing.description) : null,
    listing.preview
      ? h(
          "a",
          { href: `/api/listings/${listing.id}/preview.png`, target: "_blank", title: "The samples this provider chose to show (opens full size)" },
          h("img", { class: `preview ${listing.modality}`, src: `/api/listings/${listing.id}/preview.png`, alt: `Samples the provider of listing ${listing.id} chose to show` }),
        )
      : null,
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Rows"),
      h("dd", { class: "rows" }, Number(listing.rows).toLocaleString("en-US")),
      h("dt", {}, "Input"),
      h("dd", {}, shapeText(listing)),
      h("dt", {}, "Classes"),
      h("dd", {}, classesText(listing)),
      h("dt", {}, "Price per job"),
      h("dd", {}, money(t.price_per_job_wei)),
      h("dt", {}, "Price per unit of ", term("ε", "epsilon")),
      h("dd", {}, money(t.price_per_epsilon_wei)),
      h("dt", {}, "Largest ", term("ε", "epsilon"), " per job"),
      h("dd", { class: "cap" }, eps(t.max_epsilon_per_job)),
      h("dt", {}, term("Price at that ε", "price_at_cap")),
      h("dd", { class: "price" }, money(listing.price_at_cap_wei)),
      h("dt", {}, term("δ", "delta")),
      h("dd", {}, String(t.delta)),
      t.allowed_families ? [h("dt", {}, "Models allowed"), h("dd", {}, t.allowed_families.map(familyName).join(", "))] : null,
      t.has_contract ? [h("dt", {}, term("Provider contract", "contract")), h("dd", {}, "Yes: the provider's own rules are checked on each job")] : null,
      t.policy ? [h("dt", {}, "Who may buy"), h("dd", { title: t.policy }, `Restricted by policy ${shortHex(t.policy)}`)] : null,
      h("dt", {}, "Provider"),
      h("dd", { class: "mono", title: listing.provider }, shortHex(listing.provider)),
    ),
    budgetBar(listing.budget),
    h("footer", {}, button),
  );
}

const DEFAULTS = { q: "", modality: "", sort: "id", order: "desc", open: "", page: 1, per_page: PER_PAGE };

/** The page's state from its address (`#/market?q=…&page=2`), each value checked; defaults otherwise. */
function fromAddress(search) {
  const got = new URLSearchParams(search ?? "");
  const state = { ...DEFAULTS };
  const whole = (name, hi) => {
    const n = Math.trunc(Number(got.get(name)));
    return Number.isFinite(n) && n >= 1 ? Math.min(n, hi) : DEFAULTS[name];
  };
  state.q = (got.get("q") ?? "").slice(0, 200);
  if (SORTS.some(([k]) => k === got.get("sort"))) state.sort = got.get("sort");
  if (["asc", "desc"].includes(got.get("order"))) state.order = got.get("order");
  if (["tabular", "image"].includes(got.get("modality"))) state.modality = got.get("modality");
  if (got.get("open") === "true") state.open = "true";
  state.page = whole("page", Number.MAX_SAFE_INTEGER);
  state.per_page = whole("per_page", MAX_PER_PAGE);
  return state;
}

/** Keeps the address in step with the page (no reload, no history entry per keystroke). */
function toAddress(state) {
  const changed = Object.fromEntries(Object.entries(state).filter(([k, v]) => v !== DEFAULTS[k]));
  history.replaceState(null, "", `#/market${query(changed)}`);
}

export async function render(page, address) {
  const state = fromAddress(address);
  const grid = h("div", { class: "grid", id: "listings" });
  const top = pager({ id: "listings-pager", noun: "listing", onPage: (n) => set({ page: n }, false) });
  const bottom = pager({ id: "listings-pager-bottom", noun: "listing", onPage: (n) => set({ page: n }, false) });
  const modalities = new Set(["tabular", "image"]);
  const modalitySelect = h("select", { id: "filter-modality", "aria-label": "Data type", onchange: (e) => set({ modality: e.target.value }) });
  const sortSelect = h(
    "select",
    { id: "sort", "aria-label": "Sort by", onchange: (e) => set({ sort: e.target.value, order: SORTS.find(([k]) => k === e.target.value)[2] }) },
    SORTS.map(([k, label]) => h("option", { value: k, selected: k === state.sort }, label)),
  );
  const orderButton = h("button", { class: "secondary", id: "order", title: "Reverse the order", onclick: () => set({ order: state.order === "asc" ? "desc" : "asc" }) });
  let timer = null;
  const search = h("input", {
    type: "search",
    id: "filter-q",
    value: state.q,
    placeholder: "Search names, classes…",
    "aria-label": "Search",
    oninput: (e) => {
      clearTimeout(timer);
      timer = setTimeout(() => set({ q: e.target.value.trim() }), 250);
    },
  });
  const openOnly = h("input", { type: "checkbox", id: "filter-open", checked: state.open === "true", onchange: (e) => set({ open: e.target.checked ? "true" : "" }) });

  mount(
    page,
    h("h1", {}, "Marketplace"),
    h(
      "p",
      { class: "lead" },
      "Datasets you can train a model on without ever seeing the data. Pick the ones you need, add them to your dataset, and Sterling writes a contract that respects each provider's price and ",
      term("privacy budget", "epsilon"),
      ".",
    ),
    h(
      "div",
      { class: "toolbar" },
      search,
      h("label", {}, "Data type ", modalitySelect),
      h("label", {}, "Sort by ", sortSelect, orderButton),
      h("label", { class: "check" }, openOnly, " Only open listings"),
      h("a", { class: "button primary", href: "#/assemble", id: "go-assemble" }, "Your dataset →"),
    ),
    top.element,
    grid,
    bottom.element,
  );

  function fillModalities() {
    mount(
      modalitySelect,
      h("option", { value: "" }, "All"),
      [...modalities].sort().map((m) => h("option", { value: m, selected: m === state.modality }, m)),
    );
  }

  let seq = 0;
  let listings = [];
  let envelope = { items: [], total: 0, page: 1, pages: 0 };
  async function load() {
    const mine = ++seq;
    orderButton.textContent = state.order === "asc" ? "↑ ascending" : "↓ descending";
    toAddress(state);
    try {
      const got = await api.get(`/api/listings${query(state)}`);
      if (mine !== seq) return;
      if (got.pages > 0 && got.page > got.pages) return set({ page: got.pages }, false); // the list shrank
      envelope = got;
      listings = got.items;
      for (const l of listings) if (l.modality) modalities.add(l.modality);
      fillModalities();
      draw();
    } catch (e) {
      if (mine === seq) mount(grid, errorBox(`The listings could not be loaded: ${e.message}`));
    }
  }

  function draw() {
    grid.dataset.loaded = String(seq);
    top.draw(envelope);
    bottom.draw(envelope);
    bottom.element.hidden = envelope.pages <= 1;
    if (!listings.length) {
      const filtered = state.q || state.modality || state.open;
      mount(
        grid,
        filtered
          ? empty("No listing matches these filters. Clear the search or choose another data type.")
          : empty("No datasets are listed yet.", h("a", { class: "button primary", href: "#/provider" }, "Publish the first one")),
      );
      return;
    }
    const chosen = basket();
    mount(grid, listings.map((l) => card(l, chosen)));
  }

  // A new search, filter or sort starts again at page 1; moving between pages keeps the rest.
  function set(change, fromStart = true) {
    Object.assign(state, change, fromStart ? { page: 1 } : {});
    load();
    if (!fromStart) top.element.scrollIntoView?.({ block: "nearest" });
  }

  const off = onBasket(() => draw());
  fillModalities();
  await load();
  return () => {
    clearTimeout(timer);
    off();
  };
}
