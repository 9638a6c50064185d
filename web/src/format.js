// Numbers for people: wei also in ETH, ε with sensible digits, short addresses, and plain-word tooltips.
import { h } from "./dom.js";

const WEI_PER_ETH = 10n ** 18n;

/** "0.0012 ETH" for a wei amount given as a decimal string, number or BigInt. */
export function eth(wei, digits = 6) {
  if (wei === null || wei === undefined || wei === "") return "—";
  let v = BigInt(wei);
  const negative = v < 0n;
  if (negative) v = -v;
  const whole = v / WEI_PER_ETH;
  let frac = (v % WEI_PER_ETH).toString().padStart(18, "0").slice(0, digits).replace(/0+$/, "");
  if (!frac && whole === 0n && v % WEI_PER_ETH !== 0n) return `${negative ? "-" : ""}< 0.${"0".repeat(digits - 1)}1 ETH`;
  return `${negative ? "-" : ""}${whole.toLocaleString("en-US")}${frac ? "." + frac : ""} ETH`;
}

/** Wei with thousands separators. */
export function weiText(wei) {
  if (wei === null || wei === undefined || wei === "") return "—";
  return `${BigInt(wei).toLocaleString("en-US")} wei`;
}

/** An amount shown in ETH, with the exact wei as a second line / tooltip. */
export function money(wei) {
  if (wei !== null && wei !== undefined && wei !== "" && BigInt(wei) === 0n) return h("span", { class: "money zero" }, "0 ETH");
  return h("span", { class: "money", title: weiText(wei) }, eth(wei), h("small", { class: "wei" }, weiText(wei)));
}

/** ETH as a float, for charts. */
export function ethNumber(wei) {
  const v = BigInt(wei ?? 0);
  return Number(v / 10n ** 9n) / 1e9;
}

/** Parses "0.5" (ETH) into a wei decimal string; throws a plain Error on anything else. */
export function parseEth(text) {
  const s = String(text).trim();
  if (!/^\d+(\.\d{0,18})?$/.test(s)) throw new Error("Enter an amount in ETH, such as 0.001 (at most 18 decimals).");
  const [whole, frac = ""] = s.split(".");
  return (BigInt(whole) * WEI_PER_ETH + BigInt(frac.padEnd(18, "0"))).toString();
}

export function eps(x) {
  if (x === null || x === undefined) return "—";
  const v = Number(x);
  if (!Number.isFinite(v)) return String(x);
  return String(v === 0 ? 0 : v >= 100 ? Math.round(v) : v >= 1 ? Number(v.toFixed(2)) : Number(v.toPrecision(2)));
}

export function shortHex(hex, keep = 6) {
  if (!hex) return "—";
  return hex.length > 2 * keep + 2 ? `${hex.slice(0, keep + 2)}…${hex.slice(-keep + 2)}` : hex;
}

export function when(timestamp) {
  if (!timestamp) return "—";
  return new Date(Number(timestamp) * 1000).toLocaleString();
}

export function familyName(family) {
  return { logistic_regression: "Logistic regression", mlp: "Neural network (MLP)", cnn: "Image network (CNN)" }[family] ?? family;
}

/** Plain-word explanations of the jargon, shown as tooltips. */
export const GLOSSARY = {
  epsilon:
    "Privacy budget (ε): how much a training job may learn about any one person in the data. Smaller is more private. Each job spends some; when a listing's budget is used up it cannot be trained on again.",
  delta: "δ: the small probability with which the privacy guarantee may fail. Usually far below 1 / number of rows.",
  wei: "Prices are paid in ETH on the local test chain. 1 ETH = 10^18 wei; the exact wei amount is shown below.",
  escrow: "Escrow: the payment locked when a job is submitted. Providers are paid from it when the job completes; the rest is refunded.",
  enclave: "Enclave: the sealed machine that decrypts the data, trains the model and never shows the data to anyone.",
  simulation:
    "SIMULATION: this enclave is simulated in software, with a local key instead of real hardware attestation. Fine for trying Sterling out; it does not protect real data.",
  measurement: "Measurement: a fingerprint of the code running in the enclave. Providers can insist on a particular one.",
  block: "Block: a batch of recorded actions on the chain. The block number grows as actions are recorded.",
  transaction: "Transaction: one recorded action (publishing data, submitting a job, a payout).",
  event: "Event: a notice the Marketplace contract records when something happens, such as a job completing.",
  noise: "Noise multiplier: how much random noise training adds to protect privacy; it is calculated from ε.",
  appraisal: "Appraisal: an estimate of how much each dataset helped the model; it can shape the payouts.",
  contract: "Provider contract: a short Python function that the enclave runs on each job to accept or refuse it.",
  account: "Account: one of the local test chain's ready-made accounts, each with test ETH.",
  price_at_cap: "Price if a job uses the largest ε this listing allows per job.",
};

/** A word with a dotted underline and a tooltip explaining it. */
export function term(text, key) {
  return h("span", { class: "term", title: GLOSSARY[key] ?? key, tabindex: "0" }, text);
}

export function badge(text, kind = "", title = null) {
  return h("span", { class: `badge ${kind}`, title }, text);
}

export function simulationBadge() {
  return badge("SIMULATION", "sim", GLOSSARY.simulation);
}

export function stateBadge(state) {
  return badge(state ?? "unknown", `state-${state}`);
}
