// Explorer: what the chain recorded, in plain words: enclaves, jobs, blocks, transactions and events.
import { api, query } from "./api.js";
import { h, mount, empty, errorBox } from "./dom.js";
import { eps, eth, money, shortHex, simulationBadge, stateBadge, term, when, badge } from "./format.js";
import { accountPicker } from "./accounts.js";
import { walletPanel } from "./wallet.js";
import { pager, perPage } from "./pager.js";

export const JOBS_PER_PAGE = 10;
const EVENT_KINDS = [
  "ListingPublished", "ListingWithdrawn", "BudgetCreated", "BudgetExhausted", "JobSubmitted", "EpsilonReserved",
  "EpsilonReleased", "JobCancelled", "JobClaimed", "JobLeaseExtended", "JobProgress", "JobExpired", "JobCompleted",
  "JobFailed", "Payout", "Refund", "Withdrawal", "EnclaveRegistered", "EnclaveRevoked", "PredictionsPaid",
];
export const EVENTS_PER_PAGE = 30;

const txLink = (hash) => h("a", { class: "mono", href: `#/tx/${hash}`, title: hash }, shortHex(hash));
const blockLink = (n) => (n === null || n === undefined ? h("span", { class: "muted" }, "pending") : h("a", { href: `#/blocks/${n}` }, String(n)));
const addr = (a) => h("span", { class: "mono", title: a ?? "" }, shortHex(a));

function table(id, headers, rows, emptyText) {
  if (!rows.length) return h("div", { id }, empty(emptyText));
  return h("table", { class: "table", id }, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

const WEI_ARG = /(^|_)(amount|price|escrow|paid|refunded|fee|value|wei)$/;

function argText(k, v) {
  if (k.startsWith("micro_") && /^\d+$/.test(String(v))) return `${eps(Number(v) / 1e6)}`; // the chain counts micro-ε
  if (WEI_ARG.test(k) && /^\d+$/.test(String(v))) return eth(String(v));
  // δ goes on chain in units of 10⁻¹⁸ (the ledger's fixed point): 10000000000000 is δ = 1e-5.
  if (k === "delta" && /^\d+$/.test(String(v))) return String(Number((Number(v) / 1e18).toPrecision(6)));
  if (typeof v === "string" && v.startsWith("0x") && v.length > 20) return shortHex(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function argsText(args) {
  return Object.entries(args ?? {})
    .map(([k, v]) => `${k}=${argText(k, v)}`)
    .join(", ");
}

export function eventRows(events) {
  return events.map((e) =>
    h("tr", { dataset: { event: e.name } }, h("td", {}, h("strong", {}, e.name)), h("td", {}, blockLink(e.block)), h("td", {}, txLink(e.tx_hash)), h("td", { class: "args", title: JSON.stringify(e.args) }, argsText(e.args))),
  );
}

/** What each Marketplace function does, in plain words. */
const ACTIONS = {
  publish: "a provider lists a dataset",
  submit_job: "a buyer submits a job and pays into escrow",
  claim_job: "an enclave picks up a job",
  report_progress: "the enclave reports training progress",
  complete_job: "the enclave settles: providers paid, the rest refunded",
  fail_job: "the enclave gives up on a job; escrow refunded",
  cancel_job: "the buyer cancels a job; escrow refunded",
  register_enclave: "an enclave registers with its attestation",
  allow_measurement: "the admin allows an enclave's code",
  withdraw: "someone withdraws their balance",
  withdraw_listing: "a provider takes a listing off sale",
  derive: "a provider lists a derived dataset",
  extend_lease: "the enclave asks for more time",
  expire_job: "a job whose enclave went silent is reopened",
  revoke_enclave: "the admin revokes an enclave",
  set_lease_seconds: "the admin sets how long an enclave may stay silent",
  set_attestation_signer: "the admin sets who signs attestations",
  transfer_admin: "the admin hands over the Marketplace",
};

function action(fn) {
  if (!fn) return h("span", { class: "muted" }, "—");
  return h("span", {}, h("span", { class: "mono" }, fn), ACTIONS[fn] ? h("small", { class: "muted action-words" }, ACTIONS[fn]) : null);
}

function txRows(txs) {
  return txs.map((t) =>
    h(
      "tr",
      { dataset: { tx: t.hash } },
      h("td", {}, txLink(t.hash)),
      h("td", {}, blockLink(t.block)),
      h("td", {}, action(t.function)),
      h("td", {}, addr(t.from)),
      h("td", {}, addr(t.to)),
      h("td", {}, t.status === null || t.status === undefined ? badge("pending", "muted") : t.status ? badge("ok", "state-completed") : badge("failed", "state-failed")),
      h("td", {}, money(t.value_wei)),
    ),
  );
}

export function enclaveTable(enclaves) {
  return table(
    "enclaves",
    ["Address", term("Measurement", "measurement"), "Registered", "Hardware"],
    enclaves.map((e) =>
      h(
        "tr",
        { dataset: { enclave: e.address } },
        h("td", {}, addr(e.address)),
        h("td", { class: "mono measurement", title: e.measurement }, e.measurement),
        h("td", {}, e.registered ? "yes" : "no"),
        h("td", {}, e.simulated ? simulationBadge() : badge("attested hardware", "state-completed")),
      ),
    ),
    "No enclave has registered yet. Start one with `sterling enclave run`; jobs wait until one claims them.",
  );
}

function jobsTable(jobs) {
  return table(
    "jobs",
    ["Job", "State", "Buyer", "Listings", "Progress", h("span", {}, term("ε", "epsilon"), " spent"), term("Escrow", "escrow")],
    jobs.map((j) =>
      h(
        "tr",
        { dataset: { jobId: String(j.id) } },
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, `Job ${j.id}`)),
        h("td", {}, stateBadge(j.state)),
        h("td", {}, addr(j.consumer)),
        h("td", {}, (j.listing_ids ?? []).map((x) => `#${x}`).join(", ")),
        h("td", {}, j.steps ? `${j.step} / ${j.steps} steps` : "—"),
        h("td", {}, eps(j.epsilon_spent)),
        h("td", {}, money(j.escrow_wei)),
      ),
    ),
    "No job yet. Pick datasets in the marketplace and submit a contract to start one.",
  );
}

export async function render(page, search) {
  const jobsPerPage = perPage(search, JOBS_PER_PAGE);
  const eventsPerPage = perPage(search, EVENTS_PER_PAGE);
  const sections = {
    enclaves: h("section", { id: "explorer-enclaves" }),
    jobs: h("section", { id: "explorer-jobs" }),
    blocks: h("section", { id: "explorer-blocks" }),
    txs: h("section", { id: "explorer-transactions" }),
    events: h("section", { id: "explorer-events" }),
  };
  let eventName = "";
  // Pages of jobs and events (newest first), with their totals: never the whole history at once.
  const at = { jobs: 1, events: 1 };
  const jobsPager = pager({ id: "jobs-pager", noun: "job", onPage: (n) => { at.jobs = n; refresh(); } });
  const eventsPager = pager({ id: "events-pager", noun: "event", onPage: (n) => { at.events = n; refresh(); } });
  const eventSelect = h("select", { id: "event-filter", "aria-label": "Show events named", onchange: (e) => { eventName = e.target.value; at.events = 1; refresh(); } });
  // Every kind one can filter on, known before it appears on the page shown (pages hold few).
  const names = new Set(EVENT_KINDS);
  // A buyer's refunds (cancelled or failed jobs, and what settlement did not spend), next to the jobs.
  const buyer = accountPicker({ id: "refund-account", label: "Buyer account", role: "consumer" });
  const refunds = walletPanel({ id: "buyer-wallet", kind: "consumer", account: () => buyer.value() });
  buyer.select.addEventListener("change", () => {
    refunds.clearNote();
    refunds.refresh();
  });
  refunds.element.querySelector("h2").after(buyer.element);
  buyer.ready.then(() => refunds.refresh());
  mount(
    page,
    h("h1", {}, "Explorer"),
    h("p", { class: "lead" }, "Everything the marketplace records on the chain: who trains where, what was paid, and each ", term("block", "block"), ", ", term("transaction", "transaction"), " and ", term("event", "event"), ". It refreshes by itself."),
    h("h2", {}, term("Enclaves", "enclave")),
    sections.enclaves,
    h("h2", {}, "Jobs"),
    jobsPager.element,
    sections.jobs,
    refunds.element,
    h("h2", {}, "Latest blocks"),
    sections.blocks,
    h("h2", {}, "Transactions"),
    sections.txs,
    h("div", { class: "section-head" }, h("h2", {}, "Marketplace events"), h("label", {}, "Show ", eventSelect)),
    eventsPager.element,
    sections.events,
  );

  async function part(el, load, draw) {
    try {
      mount(el, draw(await load()));
    } catch (e) {
      mount(el, errorBox(e.message));
    }
  }

  async function refresh() {
    await Promise.all([
      part(sections.enclaves, () => api.get("/api/enclaves"), enclaveTable),
      part(sections.jobs, () => api.get(`/api/jobs${query({ page: at.jobs, per_page: jobsPerPage })}`), (got) => {
        jobsPager.draw(got);
        return jobsTable(got.items);
      }),
      part(sections.blocks, () => api.get("/api/explorer/blocks?limit=8"), (blocks) =>
        table("blocks", ["Block", "Time", "Transactions", "Gas used"], blocks.map((b) => h("tr", { dataset: { block: String(b.number) } }, h("td", {}, blockLink(b.number)), h("td", {}, when(b.timestamp)), h("td", {}, String(b.tx_count)), h("td", {}, Number(b.gas_used).toLocaleString("en-US")))), "No block yet."),
      ),
      part(sections.txs, () => api.get("/api/explorer/transactions?limit=15"), (t) => [
        h("h3", {}, `Waiting to be recorded (${t.pending.length})`),
        table("pending-transactions", ["Transaction", "Block", "Action", "From", "To", "Status", "Value"], txRows(t.pending), "Nothing waiting: every transaction sent has been recorded."),
        h("h3", {}, "Recorded"),
        table("mined-transactions", ["Transaction", "Block", "Action", "From", "To", "Status", "Value"], txRows(t.mined), "No transaction recorded yet."),
      ]),
      part(sections.events, () => api.get(`/api/explorer/events${query({ kind: eventName, page: at.events, per_page: eventsPerPage })}`), (got) => {
        eventsPager.draw(got);
        const events = got.items;
        const before = names.size;
        if (eventName) names.add(eventName);
        for (const e of events) names.add(e.name);
        if (names.size !== before || !eventSelect.options.length) {
          mount(eventSelect, h("option", { value: "" }, "all events"), [...names].sort().map((n) => h("option", { value: n, selected: n === eventName }, n)));
        }
        return table("events", ["Event", "Block", "Transaction", "Details"], eventRows(events), "No Marketplace event yet.");
      }),
    ]);
  }

  await refresh();
  const timer = setInterval(refresh, 3000);
  return () => clearInterval(timer);
}

export async function renderTx(page, hash) {
  const t = await api.get(`/api/explorer/transactions/${hash}`);
  mount(
    page,
    h("p", {}, h("a", { href: "#/explorer" }, "← Explorer")),
    h("h1", {}, "Transaction ", h("span", { class: "mono hash" }, t.hash)),
    h(
      "dl",
      { class: "facts wide" },
      h("dt", {}, "Action"), h("dd", {}, action(t.function)),
      h("dt", {}, "Block"), h("dd", {}, blockLink(t.block)),
      h("dt", {}, "Status"), h("dd", {}, t.status === null || t.status === undefined ? "pending" : t.status ? "succeeded" : "failed"),
      h("dt", {}, "From"), h("dd", { class: "mono" }, t.from ?? "—"),
      h("dt", {}, "To"), h("dd", { class: "mono" }, t.to ?? "—"),
      h("dt", {}, "Value"), h("dd", {}, money(t.value_wei)),
      h("dt", {}, "Gas used"), h("dd", {}, t.gas_used === null || t.gas_used === undefined ? "—" : Number(t.gas_used).toLocaleString("en-US")),
    ),
    h("h2", {}, "Events"),
    table("tx-events", ["Event", "Block", "Transaction", "Details"], eventRows(t.events ?? []), "This transaction recorded no Marketplace event."),
  );
  return null;
}

export async function renderBlock(page, n) {
  const b = await api.get(`/api/explorer/blocks/${n}`);
  mount(
    page,
    h("p", {}, h("a", { href: "#/explorer" }, "← Explorer"), " · ", Number(n) > 0 ? h("a", { href: `#/blocks/${Number(n) - 1}` }, "previous block") : null, " · ", h("a", { href: `#/blocks/${Number(n) + 1}` }, "next block")),
    h("h1", {}, `Block ${b.number}`),
    h("dl", { class: "facts wide" }, h("dt", {}, "Hash"), h("dd", { class: "mono" }, b.hash), h("dt", {}, "Time"), h("dd", {}, when(b.timestamp)), h("dt", {}, "Gas used"), h("dd", {}, Number(b.gas_used).toLocaleString("en-US"))),
    h("h2", {}, "Transactions"),
    table("block-transactions", ["Transaction", "Block", "Action", "From", "To", "Status", "Value"], txRows(b.transactions ?? []), "This block holds no transaction."),
  );
  return null;
}
