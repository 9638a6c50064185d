// Your listings: what a provider's dev account has listed, what each earned, the balance to withdraw,
// and per listing "Derive with new terms" (same data, same privacy budget) and "Take off sale".
import { api } from "./api.js";
import { accountPicker } from "./accounts.js";
import { h, mount, empty, errorBox } from "./dom.js";
import { badge, eps, money, parseEth, term } from "./format.js";
import { walletPanel } from "./wallet.js";

const WEI_PER_ETH = 10n ** 18n;

/** Wei (a decimal string) as an exact ETH amount for an input: "2500000000000000" → "0.0025". */
function ethInput(wei) {
  const v = BigInt(wei ?? 0);
  const frac = (v % WEI_PER_ETH).toString().padStart(18, "0").replace(/0+$/, "");
  return `${v / WEI_PER_ETH}${frac ? "." + frac : ""}`;
}

function stateOf(l) {
  if (!l.active) return badge("off sale", "muted", "Taken off sale by its provider: no new job may use it.");
  if (!l.open) return badge("budget spent", "warn", "Its data's privacy budget is spent.");
  return badge("on sale", "state-completed");
}

function field(name, label, input, help = null) {
  return h("div", { class: "field", dataset: { field: name } }, h("label", { for: input.id }, label), input, help ? h("small", { class: "help" }, help) : null, h("div", { class: "field-error", role: "alert" }));
}

export async function render(page) {
  const picker = accountPicker({ id: "seller-account", label: "Your account", role: "provider" });
  const wallet = walletPanel({ id: "earnings", kind: "provider", account: () => picker.value(), onWithdrawn: () => refresh() });
  const list = h("section", { id: "my-listings-section" });
  const message = h("div", { id: "listing-message", "aria-live": "polite" });
  const deriveHost = h("div", { id: "derive-host" });
  mount(
    page,
    h("h1", {}, "Your listings"),
    h("p", { class: "lead" }, "What this account has listed, what each listing earned, and the earnings waiting in its Marketplace balance. You can list the same data again under new terms (it shares the same ", term("privacy budget", "epsilon"), ") or take a listing off sale. ", h("a", { href: "#/provider" }, "Publish new data.")),
    h("div", { class: "toolbar" }, picker.element),
    wallet.element,
    message,
    deriveHost,
    h("h2", {}, "Listings"),
    list,
  );
  picker.select.addEventListener("change", () => {
    mount(message);
    mount(deriveHost);
    wallet.clearNote();
    refresh();
  });

  let listings = [];
  async function refresh() {
    const index = picker.value();
    await wallet.refresh();
    if (index === null) {
      mount(list, empty("Choose an account to see its listings."));
      return;
    }
    try {
      const out = await api.get(`/api/provider/listings?account=${index}`);
      if (index !== picker.value()) return;
      listings = out.listings;
      mount(list, table(listings));
    } catch (e) {
      mount(list, errorBox(e.message));
    }
  }

  function table(rows) {
    if (!rows.length) return h("div", { id: "my-listings" }, empty("This account has listed nothing yet.", h("a", { class: "button", href: "#/provider" }, "Publish data")));
    return h(
      "table",
      { class: "table", id: "my-listings" },
      h("thead", {}, h("tr", {}, ["Listing", "State", "Price per job", h("span", {}, "Price per ", term("ε", "epsilon")), h("span", {}, term("ε", "epsilon"), " cap / left"), "Jobs", "Earned", ""].map((x) => h("th", {}, x)))),
      h(
        "tbody",
        {},
        rows.map((l) =>
          h(
            "tr",
            { dataset: { listingId: String(l.id), active: String(l.active), open: String(l.open) } },
            h("td", {}, h("strong", {}, `#${l.id} `), l.name, l.parent ? h("small", { class: "muted" }, ` · derived from #${l.parent}`) : null),
            h("td", { class: "state" }, stateOf(l)),
            h("td", {}, money(l.terms.price_per_job_wei)),
            h("td", {}, money(l.terms.price_per_epsilon_wei)),
            h("td", {}, `${eps(l.terms.max_epsilon_per_job)} / ${eps(l.budget.epsilon_left)}`),
            h("td", {}, String(l.jobs)),
            h("td", { class: "earned" }, money(l.earned_wei)),
            h(
              "td",
              { class: "row-actions" },
              h("button", { type: "button", class: "secondary", dataset: { action: "derive" }, onclick: () => showDerive(l) }, "Derive with new terms"),
              " ",
              l.active ? h("button", { type: "button", class: "danger", dataset: { action: "withdraw" }, onclick: (e) => confirmWithdraw(l, e.target) }, "Take off sale") : null,
            ),
          ),
        ),
      ),
    );
  }

  function confirmWithdraw(l, button) {
    const cell = button.parentElement;
    mount(
      cell,
      h("span", { class: "warn-text" }, `Take #${l.id} off sale for good? Jobs already submitted go on. `),
      h("button", { type: "button", class: "danger", dataset: { action: "confirm-withdraw" }, onclick: (e) => withdrawListing(l, e.target) }, "Yes, take it off sale"),
      " ",
      h("button", { type: "button", class: "link", onclick: () => mount(list, table(listings)) }, "Keep it"),
    );
  }

  async function withdrawListing(l, button) {
    button.disabled = true;
    button.textContent = "Taking it off sale…";
    try {
      await api.post(`/api/provider/listings/${l.id}/withdraw`, { account: picker.value() });
      mount(message, h("div", { class: "success-box", id: "withdrawn-listing", dataset: { listingId: String(l.id) } }, `Listing #${l.id} is off sale. Jobs already submitted on it go on; what it earns stays in your balance.`));
    } catch (e) {
      mount(message, errorBox(`Listing #${l.id} is still on sale: ${e.message}`));
    }
    await refresh();
  }

  function showDerive(l) {
    const input = (id, value) => h("input", { id, name: id, type: "text", inputmode: "decimal", value });
    const perJob = input("derive_price_per_job", ethInput(l.terms.price_per_job_wei));
    const perEps = input("derive_price_per_epsilon", ethInput(l.terms.price_per_epsilon_wei));
    const cap = h("input", { id: "derive_max_epsilon", name: "derive_max_epsilon", type: "number", step: "any", min: "0", value: String(l.terms.max_epsilon_per_job) });
    const keep = h("input", { id: "derive_keep_contract", type: "checkbox", checked: true });
    const submit = h("button", { type: "submit", class: "primary", id: "derive-submit" }, "List with these terms");
    const general = h("div", { id: "derive-message", "aria-live": "polite" });
    const form = h(
      "form",
      { class: "form card wide", id: "derive-form", dataset: { parent: String(l.id) }, novalidate: true, onsubmit: (e) => { e.preventDefault(); send(); } },
      h("h2", {}, `Derive from #${l.id} ${l.name}`),
      h("p", { class: "muted small" }, `The new listing sells the same data on the same privacy budget (ε ${eps(l.budget.epsilon_left)} left of ${eps(l.budget.epsilon_total)}); it cannot raise or reset it. Listing #${l.id} stays on sale unless you take it off.`),
      h("div", { class: "row" },
        field("price_per_job_wei", "Price per job (ETH)", perJob),
        field("price_per_epsilon_wei", h("span", {}, "Price per unit of ", term("ε", "epsilon"), " (ETH)"), perEps),
        field("max_epsilon_per_job", h("span", {}, "Largest ", term("ε", "epsilon"), " per job"), cap, `At most the data's whole budget, ε ${eps(l.budget.epsilon_total)}.`)),
      l.terms.has_contract ? h("div", { class: "field", dataset: { field: "contract" } }, h("label", { class: "check" }, keep, " Keep running this listing's ", term("provider contract", "contract")), h("div", { class: "field-error", role: "alert" })) : null,
      h("div", { class: "actions" }, submit, h("button", { type: "button", class: "link", onclick: () => mount(deriveHost) }, "Cancel")),
      general,
    );
    mount(deriveHost, form);
    form.scrollIntoView({ block: "center" });

    function showError(name, text) {
      const box = name ? form.querySelector(`[data-field="${CSS.escape(name)}"]`) : null;
      if (box) {
        box.classList.add("invalid");
        box.querySelector(".field-error").textContent = text;
      } else mount(general, errorBox(text));
    }

    async function send() {
      for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
      for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
      mount(general);
      const body = { account: picker.value() };
      for (const [el, key] of [[perJob, "price_per_job_wei"], [perEps, "price_per_epsilon_wei"]]) {
        try {
          body[key] = parseEth(el.value);
        } catch (e) {
          return showError(key, e.message);
        }
      }
      if (cap.value.trim() === "" || !(Number(cap.value) > 0)) return showError("max_epsilon_per_job", "Enter a number above 0.");
      body.max_epsilon_per_job = Number(cap.value);
      if (l.terms.has_contract) body.contract = keep.checked ? "keep" : "none";
      submit.disabled = true;
      submit.textContent = "Listing…";
      try {
        const out = await api.post(`/api/provider/listings/${l.id}/derive`, body);
        mount(deriveHost);
        mount(message, h("div", { class: "success-box", id: "derived", dataset: { listingId: String(out.listing_id) } }, h("strong", {}, `Listed as #${out.listing_id}`), `, derived from #${l.id}: `, money(out.listing.terms.price_per_job_wei), " per job. ", h("a", { href: "#/market" }, "See it in the marketplace")));
        await refresh();
      } catch (e) {
        showError(e.field, `Not listed: ${e.message}`);
        submit.disabled = false;
        submit.textContent = "List with these terms";
      }
    }
  }

  await picker.ready;
  await refresh();
  const timer = setInterval(() => {
    if (!deriveHost.childElementCount) wallet.refresh();
  }, 5000);
  return () => clearInterval(timer);
}
