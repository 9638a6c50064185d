// A chooser of the local chain's development accounts, remembering the last one picked.
import { accounts } from "./api.js";
import { h, mount } from "./dom.js";
import { eth, shortHex, term } from "./format.js";

const KEY = "sterling.account";

export function accountPicker({ id, label = "Account", role = "consumer" }) {
  const select = h("select", { id, name: "account", onchange: () => localStorage.setItem(`${KEY}.${role}`, select.value) });
  const wrap = h("label", { class: "account-picker" }, term(label, "account"), " ", select);
  mount(select, h("option", { value: "" }, "Loading accounts…"));
  select.disabled = true;
  const ready = accounts().then(
    (list) => {
      const saved = localStorage.getItem(`${KEY}.${role}`);
      const hinted = list.find((a) => (a.role_hint ?? "").toLowerCase().includes(role));
      const fallback = list.find((a) => a.index !== 0) ?? list[0];
      const chosen = list.find((a) => String(a.index) === saved) ?? hinted ?? fallback;
      mount(
        select,
        list.map((a) =>
          h(
            "option",
            { value: String(a.index), selected: a === chosen, title: a.address },
            `#${a.index} ${shortHex(a.address, 4)} · ${eth(a.ether_wei, 2)}${a.role_hint ? ` · ${a.role_hint}` : ""}`,
          ),
        ),
      );
      select.disabled = false;
      return list;
    },
    (e) => {
      mount(select, h("option", { value: "" }, `No accounts: ${e.message}`));
      return [];
    },
  );
  return { element: wrap, select, ready, value: () => (select.value === "" ? null : Number(select.value)) };
}
