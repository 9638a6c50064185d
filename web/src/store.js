// What the pages share across routes, kept in the browser: the listings chosen for a dataset and the text
// open in the editor (so a reload or a trip to the market loses nothing).
const BASKET = "sterling.dataset";
const EDITOR = "sterling.editor";
const VALIDATION = "sterling.validation";
const listeners = new Set();

export function basket() {
  try {
    const ids = JSON.parse(localStorage.getItem(BASKET) ?? "[]");
    return Array.isArray(ids) ? ids.filter(Number.isInteger) : [];
  } catch {
    return [];
  }
}

function setBasket(ids) {
  localStorage.setItem(BASKET, JSON.stringify([...new Set(ids)].sort((a, b) => a - b)));
  for (const fn of listeners) fn(basket());
}

export const addToBasket = (id) => setBasket([...basket(), id]);
export const removeFromBasket = (id) => setBasket(basket().filter((x) => x !== id));
export const clearBasket = () => setBasket([]);
/** Calls `fn(ids)` whenever the dataset changes; returns a function that stops it. */
export function onBasket(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** {kind: "job"|"provider", text} of the editor, or null. */
export function editorDoc() {
  try {
    return JSON.parse(sessionStorage.getItem(EDITOR) ?? "null");
  } catch {
    return null;
  }
}

export function setEditorDoc(kind, text) {
  sessionStorage.setItem(EDITOR, JSON.stringify({ kind, text }));
}

/** The validation set uploaded for the dataset ({validation_uri, rows, classes, name, listing_ids}), or null. */
export function validation() {
  try {
    return JSON.parse(sessionStorage.getItem(VALIDATION) ?? "null");
  } catch {
    return null;
  }
}

export function setValidation(v) {
  if (v) sessionStorage.setItem(VALIDATION, JSON.stringify(v));
  else sessionStorage.removeItem(VALIDATION);
}
