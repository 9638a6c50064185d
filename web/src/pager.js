// Pages of a list the API answers as {items, total, page, per_page, pages}: how many there are
// ("12,345 listings") and controls to move between pages. Nothing asks for more than one page.
import { h, mount } from "./dom.js";

export const MAX_PER_PAGE = 200; // the API's bound

/** The page size an address asks for (`?per_page=`), within 1..MAX_PER_PAGE; `fallback` otherwise. */
export function perPage(search, fallback) {
  const n = Math.trunc(Number(new URLSearchParams(search ?? "").get("per_page")));
  return Number.isFinite(n) && n >= 1 ? Math.min(n, MAX_PER_PAGE) : fallback;
}

/** "1 listing", "12,345 listings". */
export function count(total, noun) {
  return `${Number(total).toLocaleString("en-US")} ${total === 1 ? noun : `${noun}s`}`;
}

/**
 * A pager: `draw(envelope)` shows the total and the page controls; a click calls `onPage(n)`.
 * `id` names the element (tests find it by it); `noun` is what is counted, singular.
 */
export function pager({ id, noun, onPage }) {
  const element = h("nav", { class: "pager", id, "aria-label": `Pages of ${noun}s` });
  let current = { total: 0, page: 1, pages: 0 };

  function go(n) {
    const target = Math.max(1, Math.min(current.pages || 1, n));
    if (target !== current.page) onPage(target);
  }

  function button(label, name, target, disabled) {
    return h("button", { class: "secondary small", dataset: { page: name }, disabled, onclick: () => go(target) }, label);
  }

  function draw(envelope) {
    const total = Number(envelope.total) || 0;
    const page = Number(envelope.page) || 1;
    const pages = Number(envelope.pages) || 0;
    current = { total, page, pages };
    Object.assign(element.dataset, { total: String(total), page: String(page), pages: String(pages) });
    const jump = h("input", {
      type: "number",
      class: "page-input",
      min: "1",
      max: String(Math.max(1, pages)),
      value: String(page),
      "aria-label": "Page number",
      onchange: (e) => go(Math.trunc(Number(e.target.value)) || 1),
    });
    mount(
      element,
      h("span", { class: "count" }, count(total, noun)),
      pages > 1
        ? [
            button("« First", "first", 1, page <= 1),
            button("‹ Previous", "previous", page - 1, page <= 1),
            h("label", { class: "where" }, "Page ", jump, ` of ${pages.toLocaleString("en-US")}`),
            button("Next ›", "next", page + 1, page >= pages),
            button("Last »", "last", pages, page >= pages),
          ]
        : null,
    );
  }

  return { element, draw };
}
