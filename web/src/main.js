// The single-page app: a header on every page (chain, block, SIMULATION badge) and hash routes.
import "./style.css";
import { api } from "./api.js";
import { h, mount, errorBox } from "./dom.js";
import { simulationBadge, term } from "./format.js";
import { basket, onBasket } from "./store.js";
import * as market from "./market.js";
import * as assemble from "./assemble.js";
import * as editor from "./editor.js";
import * as provider from "./provider.js";
import * as seller from "./seller.js";
import * as explorer from "./explorer.js";
import * as job from "./job.js";

const ROUTES = [
  [/^#\/market(?:\?(.*))?$/, market.render, "market"], // ?q=&sort=&order=&page=&per_page=: a page one can link to
  [/^#\/assemble$/, assemble.render, "assemble"],
  [/^#\/editor$/, editor.render, "editor"],
  [/^#\/provider$/, provider.render, "provider"],
  [/^#\/provider\/listings$/, seller.render, "listings"],
  [/^#\/explorer(?:\?(.*))?$/, explorer.render, "explorer"], // ?per_page= for its jobs and events
  [/^#\/jobs\/(\d+)(?:\?(.*))?$/, job.render, "explorer"], // ?per_page= for its events
  [/^#\/tx\/(0x[0-9a-fA-F]+)$/, explorer.renderTx, "explorer"],
  [/^#\/blocks\/(\d+)$/, explorer.renderBlock, "explorer"],
];

const NAV = [
  ["market", "#/market", "Marketplace"],
  ["assemble", "#/assemble", "Your dataset"],
  ["editor", "#/editor", "Contract editor"],
  ["provider", "#/provider", "Publish data"],
  ["listings", "#/provider/listings", "Your listings"],
  ["explorer", "#/explorer", "Explorer"],
];

let cleanup = null;
const main = document.getElementById("app");
const header = document.getElementById("header");

function renderHeader() {
  const links = NAV.map(([key, href, label]) =>
    h("a", { href, dataset: { nav: key } }, label, key === "assemble" ? h("span", { class: "count", id: "basket-count" }) : null),
  );
  mount(
    header,
    h("a", { class: "brand", href: "#/market" }, "Sterling"),
    h("nav", {}, links),
    h("div", { class: "chain-status", id: "chain-status" }, "Connecting to the chain…"),
  );
  updateBasketCount(basket());
}

function updateBasketCount(ids) {
  const el = document.getElementById("basket-count");
  if (el) el.textContent = ids.length ? String(ids.length) : "";
}

async function refreshStatus() {
  const el = document.getElementById("chain-status");
  try {
    const s = await api.get("/api/status");
    mount(
      el,
      h("span", { title: "The blockchain this server is connected to" }, `Chain ${s.chain_id}`),
      h("span", {}, term("Block", "block"), ` ${Number(s.block).toLocaleString("en-US")}`),
      s.simulation ? simulationBadge() : null,
    );
    el.dataset.simulation = String(Boolean(s.simulation));
    el.classList.remove("offline");
  } catch (e) {
    // No answer at all (status 0): the server went away; this keeps asking every 3 s and recovers.
    const text = e.status ? e.message : "Lost the connection to the Sterling server; reconnecting…";
    mount(el, h("span", { class: "offline-text", title: e.message }, text));
    el.classList.add("offline");
  }
}

async function route() {
  if (!location.hash || location.hash === "#" || location.hash === "#/") {
    location.replace("#/market");
    return;
  }
  if (cleanup) {
    try {
      cleanup();
    } catch {
      /* a page that fails to clean up must not block the next one */
    }
    cleanup = null;
  }
  const found = ROUTES.map(([re, fn, nav]) => [location.hash.match(re), fn, nav]).find(([m]) => m);
  for (const a of header.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.nav === found?.[2]);
  const page = h("div", { class: "page" });
  mount(main, page);
  window.scrollTo(0, 0);
  if (!found) {
    mount(page, h("h1", {}, "Page not found"), h("p", {}, "There is no page at this address. ", h("a", { href: "#/market" }, "Go to the marketplace.")));
    return;
  }
  const [match, fn] = found;
  try {
    const done = (await fn(page, ...match.slice(1))) ?? null;
    if (page.isConnected) cleanup = done;
    else done?.(); // the reader moved on while this page was loading
  } catch (e) {
    page.append(errorBox(e.status === 404 ? `Nothing here: ${e.message}` : e.message));
  }
}

renderHeader();
onBasket(updateBasketCount);
refreshStatus();
setInterval(refreshStatus, 3000);
window.addEventListener("hashchange", route);
route();
