// A dev account's Marketplace balance: what settlement credited to it (a provider's payouts, a buyer's
// refunds) and is not yet withdrawn, with "Withdraw to wallet". Settlement never sends ether itself,
// so this is where earnings and refunds leave the Marketplace.
import { api } from "./api.js";
import { h, mount, errorBox } from "./dom.js";
import { money } from "./format.js";

/**
 * A panel for dev account `account()` (a function, so a picker can change it); `kind` "provider"
 * lists payouts, "consumer" refunds. `refresh()` re-reads the balance without disturbing the rest.
 */
export function walletPanel({ id, account, kind = "consumer", onWithdrawn = null }) {
  const amount = h("div", { class: "wallet-amount", id: `${id}-amount` });
  const button = h("button", { type: "button", class: "primary", id: `${id}-withdraw`, disabled: true, onclick: withdraw }, "Withdraw to wallet");
  const note = h("div", { id: `${id}-result`, "aria-live": "polite" });
  const sources = h("div", { id: `${id}-sources` });
  const title = kind === "provider" ? "Earnings waiting to be withdrawn" : "Refunds waiting to be withdrawn";
  const element = h(
    "section",
    { class: "card wide wallet", id },
    h("h2", {}, title),
    h("p", { class: "muted small" }, "Payouts and refunds are credited to the account's balance on the Marketplace; withdrawing sends them to the account's wallet (it costs a little gas)."),
    h("div", { class: "actions" }, amount, button),
    note,
    sources,
  );
  let busy = false;
  let last = null;

  async function refresh() {
    const index = account();
    if (index === null || index === undefined) {
      mount(amount, h("span", { class: "muted" }, "Choose an account."));
      button.disabled = true;
      return;
    }
    try {
      const b = await api.get(`/api/accounts/${index}/balance`);
      if (index !== account()) return; // the picker moved on meanwhile
      last = b;
      element.dataset.balanceWei = b.balance_wei;
      mount(amount, h("span", {}, "Balance: "), money(b.balance_wei), h("small", { class: "muted" }, " · wallet "), money(b.ether_wei));
      button.disabled = busy || BigInt(b.balance_wei) === 0n;
      button.title = BigInt(b.balance_wei) === 0n ? "Nothing to withdraw: the balance is 0." : "";
      const rows = kind === "provider" ? b.payouts : b.refunds;
      mount(
        sources,
        rows.length
          ? h(
              "table",
              { class: "table compact", id: `${id}-table` },
              h("thead", {}, h("tr", {}, h("th", {}, "Job"), kind === "provider" ? h("th", {}, "Listing") : h("th", {}, "State"), h("th", {}, kind === "provider" ? "Paid" : "Refunded"))),
              h(
                "tbody",
                {},
                rows.map((r) =>
                  h(
                    "tr",
                    { dataset: { jobId: String(r.job_id) } },
                    h("td", {}, h("a", { href: `#/jobs/${r.job_id}` }, `Job ${r.job_id}`)),
                    h("td", {}, kind === "provider" ? `#${r.listing_id}` : r.state),
                    h("td", {}, money(kind === "provider" ? r.payout_wei : r.refund_wei)),
                  ),
                ),
              ),
            )
          : h("p", { class: "muted small" }, kind === "provider" ? "No job has paid this account yet." : "No job has refunded this account yet."),
      );
    } catch (e) {
      mount(amount, errorBox(`The balance could not be read: ${e.message}`));
      button.disabled = true;
    }
  }

  async function withdraw() {
    const index = account();
    if (index === null || busy) return;
    busy = true;
    button.disabled = true;
    button.textContent = "Withdrawing…";
    try {
      const out = await api.post(`/api/accounts/${index}/withdraw`);
      mount(note, h("div", { class: "success-box", id: `${id}-withdrawn`, dataset: { withdrawnWei: out.withdrawn_wei } }, "Withdrawn: ", money(out.withdrawn_wei), " sent to the account's wallet."));
      onWithdrawn?.(out);
    } catch (e) {
      mount(note, errorBox(e.status === 409 ? `Nothing was withdrawn: ${e.message}` : `Not withdrawn: ${e.message}`));
    } finally {
      busy = false;
      button.textContent = "Withdraw to wallet";
      await refresh();
    }
  }

  return { element, refresh, last: () => last, clearNote: () => mount(note) };
}
