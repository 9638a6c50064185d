// A job's page: its state (and, while it waits, "Cancel and refund"), live training progress pushed by
// the server (SSE), then metrics, the validation curve, appraisal values and payouts as charts.
import { accounts, api } from "./api.js";
import { h, mount, empty, errorBox } from "./dom.js";
import { eps, ethNumber, familyName, money, shortHex, simulationBadge, stateBadge, term, when } from "./format.js";
import { barChart, lineChart, palette } from "./charts.js";
import { eventRows } from "./explorer.js";
import { walletPanel } from "./wallet.js";
import { pager, perPage } from "./pager.js";

export const JOB_EVENTS_PER_PAGE = 20;

const FINAL = new Set(["completed", "failed", "cancelled"]);
const STATE_WORDS = {
  pending: "Waiting for an enclave to pick it up.",
  claimed: "An enclave has picked it up and is preparing the data.",
  training: "An enclave is training the model.",
  completed: "Training finished; providers have been paid.",
  failed: "The job failed; the escrow, less anything owed, was refunded.",
  cancelled: "The job was cancelled and its escrow refunded.",
};

export async function render(page, id, search) {
  const eventsPerPage = perPage(search, JOB_EVENTS_PER_PAGE);
  const charts = [];
  let source = null;
  const head = h("div", { id: "job-head" });
  const cancelBox = h("div", { id: "job-cancel" });
  const walletBox = h("div", { id: "job-wallet" });
  const progressBar = h("div", { class: "progress", id: "progress", role: "progressbar", "aria-valuemin": "0" }, h("span", { class: "fill" }));
  const progressText = h("div", { class: "progress-text", id: "progress-text" });
  // Says so when the server stops answering (the browser keeps retrying the stream by itself).
  const liveNote = h("div", { class: "live-status", id: "live-status", role: "status", dataset: { state: "live" } });
  const epsChartBox = h("div", { class: "chart small" }, h("canvas", { id: "epsilon-chart" }));
  const results = h("section", { id: "job-results" });
  const events = h("section", { id: "job-events" });
  let eventsPage = 1;
  const eventsPager = pager({ id: "job-events-pager", noun: "event", onPage: (n) => { eventsPage = n; drawEvents(); } });
  mount(
    page,
    h("p", {}, h("a", { href: "#/explorer" }, "← Explorer")),
    head,
    cancelBox,
    walletBox,
    h("section", { class: "card wide" }, h("h2", {}, "Training progress"), progressBar, progressText, liveNote, epsChartBox),
    results,
    h("h2", {}, "What the chain recorded"),
    eventsPager.element,
    events,
  );

  const epsChart = lineChart(epsChartBox.querySelector("canvas"), { xTitle: "training step", yTitle: "ε spent", label: "ε spent so far" });
  charts.push(epsChart);

  let job = await api.get(`/api/jobs/${id}`);
  let reserved = 0;

  function drawHead() {
    reserved = Math.max(0, ...(job.allocations ?? []).map((a) => Number(a.epsilon_reserved) || 0));
    mount(
      head,
      h("h1", {}, `Job ${job.id} `, h("span", { id: "job-state", dataset: { state: job.state } }, stateBadge(job.state))),
      h("p", { class: "lead" }, STATE_WORDS[job.state] ?? "", job.reason ? h("span", { class: "warn-text" }, ` Reason: ${job.reason}`) : null),
      h(
        "dl",
        { class: "facts wide" },
        h("dt", {}, "Buyer"), h("dd", { class: "mono" }, job.consumer),
        h("dt", {}, term("Enclave", "enclave")), h("dd", { class: "mono" }, job.enclave && !/^0x0+$/.test(job.enclave) ? [job.enclave, " ", simulationBadgeFor(job.enclave)] : "not claimed yet"),
        h("dt", {}, term("Escrow", "escrow")), h("dd", {}, money(job.escrow_wei)),
        job.refund_wei !== null && job.refund_wei !== undefined ? [h("dt", {}, "Refunded"), h("dd", {}, money(job.refund_wei))] : null,
        job.lease_deadline ? [h("dt", {}, "Enclave must report by"), h("dd", {}, when(job.lease_deadline))] : null,
      ),
    );
  }

  // "Cancel and refund" while no enclave has taken the job; the buyer's dev account signs it.
  let cancelNote = null;
  let cancelling = false;
  async function drawCancel() {
    if (job.state !== "pending" || cancelling) {
      mount(cancelBox, cancelNote);
      return;
    }
    let owner = null;
    try {
      owner = (await accounts()).find((a) => a.address.toLowerCase() === String(job.consumer).toLowerCase()) ?? null;
    } catch {
      owner = null;
    }
    if (job.state !== "pending" || cancelling) return;
    if (!owner) {
      mount(cancelBox, cancelNote, h("p", { class: "muted small" }, "Only its buyer can cancel this job, and this server does not hold the buyer's account: cancel it with `sterling job cancel`."));
      return;
    }
    const button = h("button", { class: "danger", id: "cancel-job", onclick: () => cancel(owner.index, button) }, "Cancel and refund");
    mount(cancelBox, h("div", { class: "actions" }, button, h("span", { class: "muted" }, "No enclave has picked it up yet: cancelling returns the whole escrow (", money(job.escrow_wei), ") to the buyer's Marketplace balance.")), cancelNote);
  }

  async function cancel(account, button) {
    cancelling = true;
    button.disabled = true;
    button.textContent = "Cancelling…";
    try {
      const out = await api.post(`/api/jobs/${id}/cancel`, { account });
      cancelNote = h("div", { class: "success-box", id: "cancel-result", dataset: { refundWei: out.refund_wei } }, "Cancelled. ", money(out.refund_wei), " was refunded to the buyer's Marketplace balance.");
      job = await api.get(`/api/jobs/${id}`);
      cancelling = false;
      drawAll();
    } catch (e) {
      const why =
        e.status === 409
          ? "It can no longer be cancelled: an enclave has already picked it up. If the enclave stops reporting and its lease runs out, it can be cancelled then."
          : e.status === 400
            ? `It was not cancelled: ${e.message}`
            : `It was not cancelled: ${e.message}`;
      cancelNote = h("div", { class: "error-box", id: "cancel-result", role: "alert" }, why);
      cancelling = false;
      try {
        job = await api.get(`/api/jobs/${id}`);
      } catch {
        /* keep what is shown */
      }
      drawAll();
    }
  }

  const enclaveSim = new Map();
  function simulationBadgeFor(address) {
    const span = h("span", {});
    const show = () => {
      if (enclaveSim.get(address.toLowerCase())) mount(span, simulationBadge());
    };
    if (enclaveSim.size) show();
    else
      api.get("/api/enclaves").then((list) => {
        for (const e of list) enclaveSim.set(e.address.toLowerCase(), e.simulated);
        show();
      }, () => {});
    return span;
  }

  function drawProgress(p) {
    const steps = Number(p.steps) || 0;
    const step = Number(p.step) || 0;
    const pct = steps ? Math.min(100, (100 * step) / steps) : job.state === "completed" ? 100 : 0;
    progressBar.querySelector(".fill").style.width = `${pct}%`;
    progressBar.setAttribute("aria-valuenow", String(step));
    progressBar.setAttribute("aria-valuemax", String(steps));
    progressBar.dataset.step = String(step);
    progressBar.dataset.steps = String(steps);
    mount(
      progressText,
      steps ? `Step ${step.toLocaleString("en-US")} of ${steps.toLocaleString("en-US")} (${pct.toFixed(0)}%)` : job.state === "pending" ? "Not started: waiting for an enclave." : "Starting…",
      " · ",
      term("Privacy budget ε", "epsilon"),
      ` spent so far: ${eps(p.epsilon_spent)}${reserved ? ` of ${eps(reserved)} reserved` : ""}`,
    );
  }

  // ε spent by step: the chain's history, merged with what the stream pushed since, one point per step.
  const points = new Map();
  function addPoints(list, steps) {
    for (const [step, spent] of list) points.set(step, spent);
    const data = [...points].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x, y }));
    epsChart.data.datasets[0].data = data;
    if (steps) epsChart.options.scales.x.max = steps;
    epsChart.update("none");
  }

  // One page of the job's events, newest first (a long job reports progress many times).
  let eventsSeq = 0;
  async function drawEvents() {
    const mine = ++eventsSeq;
    let got;
    try {
      got = await api.get(`/api/jobs/${id}/events?page=${eventsPage}&per_page=${eventsPerPage}`);
    } catch (e) {
      if (mine === eventsSeq) mount(events, errorBox(`The job's events could not be loaded: ${e.message}`));
      return;
    }
    if (mine !== eventsSeq) return;
    if (got.pages > 0 && got.page > got.pages) {
      eventsPage = got.pages;
      drawEvents();
      return;
    }
    eventsPager.draw(got);
    events.dataset.page = String(got.page);
    mount(
      events,
      got.items.length ? h("table", { class: "table", id: "job-event-table" }, h("thead", {}, h("tr", {}, ["Event", "Block", "Transaction", "Details"].map((x) => h("th", {}, x)))), h("tbody", {}, eventRows(got.items))) : empty("No event for this job yet."),
    );
  }

  function drawResults() {
    for (const c of charts.splice(1)) c.destroy();
    const allocations = job.allocations ?? [];
    const labels = allocations.map((a) => `#${a.listing_id}`);
    const parts = [];
    if (job.state !== "completed") {
      mount(results, job.state === "pending" || job.state === "claimed" ? h("p", { class: "muted" }, "Metrics, appraisal values and payouts appear here when training completes.") : null);
      return;
    }
    const result = job.result;
    if (result && result.model_released === false) {
      parts.push(
        h("section", { class: "card", id: "no-model" }, h("h2", {}, "No model"),
          h("p", {}, `This job completed without a model: ${result.reason ?? "no provider was kept"}. What ran on the providers' data (the pilot and its appraisal) was charged to their budgets; the appraisal below is what was released.`)),
      );
    }
    if (result?.receipt_sha256) {
      parts.push(
        h("section", { class: "card", id: "receipt" }, h("h2", {}, "Privacy receipt"),
          h("p", { class: "muted small" }, `Every mechanism that ran on each listing's data, accounted under ${String(result.neighbours ?? "replace_one").replaceAll("_", "-")} adjacency; its hash ${shortHex(result.receipt_sha256)} is on chain. Check it yourself: `, h("code", {}, `sterling privacy receipt ${job.id}`), ".")),
      );
    }
    if (result?.metrics && Object.keys(result.metrics).length) {
      const entries = Object.entries(result.metrics).filter(([, v]) => typeof v === "number");
      parts.push(
        h("section", { class: "card", id: "metrics" }, h("h2", {}, "Model quality"),
          h("dl", { class: "facts" }, entries.map(([k, v]) => [h("dt", {}, k.replaceAll("_", " ")), h("dd", { dataset: { metric: k } }, v.toFixed(4))]),
            result.model ? [h("dt", {}, "model"), h("dd", {}, `${familyName(result.model.family)}, ${Number(result.model.params).toLocaleString("en-US")} parameters`)] : null,
            result.steps ? [h("dt", {}, "training steps"), h("dd", {}, String(result.steps))] : null),
          h("p", { class: "muted small" }, result.metrics_private === false
            ? "Measured on your own validation set, inside the enclave: exact, at no privacy cost."
            : "Measured on a held-out part of the data, inside the enclave, with its own small privacy budget.")),
      );
    } else if (!result) {
      parts.push(h("section", { class: "card" }, h("h2", {}, "Model quality"), h("p", { class: "muted" }, "The result is encrypted to the buyer's key, which this server does not hold; fetch it with `sterling job result`.")));
    }
    // The validation curve: the DP model's accuracy on the buyer's own validation set after each epoch.
    const curve = result?.checkpoint?.curve ?? [];
    const curveCanvas = curve.length ? h("canvas", { id: "checkpoint-chart" }) : null;
    if (curveCanvas) {
      const picked = result.checkpoint.selected_step;
      const best = curve.find((p) => p.step === picked);
      parts.push(
        h("section", { class: "card", id: "checkpoint", dataset: { selectedStep: String(picked), points: String(curve.length) } },
          h("h2", {}, "Accuracy on your validation set"),
          h("div", { class: "chart" }, curveCanvas),
          h("p", { class: "muted small" },
            `Scored after each epoch of training. You get the model from step ${Number(picked).toLocaleString("en-US")}`,
            best ? ` (accuracy ${Number(best.accuracy).toFixed(4)})` : "",
            `, the best on your validation set (${String(result.checkpoint.rule).replaceAll("_", " ")}). Choosing it costs no privacy: the set is yours.`)),
      );
    }
    const payoutCanvas = h("canvas", { id: "payout-chart" });
    parts.push(
      h("section", { class: "card", id: "payouts" }, h("h2", {}, "Payouts to providers"),
        h("div", { class: "chart" }, payoutCanvas),
        h("table", { class: "table compact" },
          h("thead", {}, h("tr", {}, ["Listing", h("span", {}, term("ε", "epsilon"), " spent"), "Price", "Paid"].map((x) => h("th", {}, x)))),
          h("tbody", {}, allocations.map((a) => h("tr", { dataset: { listingId: String(a.listing_id) } }, h("td", {}, `#${a.listing_id}`), h("td", {}, eps(a.epsilon_spent)), h("td", {}, money(a.price_wei)), h("td", { class: "payout" }, money(a.payout_wei))))),
          job.refund_wei !== null && job.refund_wei !== undefined ? h("tfoot", {}, h("tr", {}, h("td", { colspan: "3" }, "Refunded to the buyer"), h("td", {}, money(job.refund_wei)))) : null)),
    );
    // Appraisal values when the buyer asked for them (and gave a validation set); otherwise the shares the
    // chain recorded for splitting fees (by rows, method "row_share").
    const appraisal = result?.appraisal ?? {};
    const released = appraisal.values && Object.keys(appraisal.values).length;
    const appraisalIds = released ? Object.keys(appraisal.values) : allocations.map((a) => String(a.listing_id));
    const appraisalData = released ? appraisalIds.map((x) => Number(appraisal.values[x])) : allocations.map((a) => Number(a.weight) || 0);
    const totalWeight = released ? 1 : appraisalData.reduce((x, y) => x + y, 0) || 1;
    const appraisalCanvas = h("canvas", { id: "appraisal-chart" });
    const method = appraisal.method ?? (released ? "appraisal" : "row_share");
    const flagged = new Set((appraisal.flagged ?? []).map(String));
    const valueRows = released
      ? appraisalIds.map((x, i) =>
          h("tr", { dataset: { listingId: x, flagged: String(flagged.has(x)) }, class: flagged.has(x) ? "flagged" : null },
            h("td", {}, `#${x}`),
            h("td", { class: "appraisal-value" }, appraisalData[i].toFixed(4)),
            h("td", {}, flagged.has(x) ? h("span", { class: "bad-text" }, "Flagged as fake: the model predicts its labels worse than it predicts yours.") : appraisalData[i] > 0 ? "Helped your model." : "No clear effect (within the noise).")))
      : [];
    parts.push(
      h("section", { class: "card", id: "appraisal", dataset: { method, released: String(Boolean(released)) } },
        h("h2", {}, term("Appraisal", "appraisal"), released ? ": how much each dataset helped" : ": each dataset's share"),
        h("div", { class: "chart" }, appraisalCanvas),
        released
          ? h("table", { class: "table compact", id: "appraisal-table" }, h("thead", {}, h("tr", {}, ["Listing", "Value", "What it means"].map((x) => h("th", {}, x)))), h("tbody", {}, valueRows))
          : null,
        h("p", { class: "muted small", id: "appraisal-method" },
          released
            ? `Method: ${method.replaceAll("_", " ")}. Each value estimates how much that provider's data improved your model on your validation set (above 0 helped, below 0 hurt). It is released with differential privacy, so values near 0 may be noise. ${appraisal.flagged?.length ? `Flagged as fake (in red): ${appraisal.flagged.map((x) => `#${x}`).join(", ")}: the enclave's label screen found that the model predicts its labels worse than it predicts your own validation set's.` : "No dataset was flagged as fake."}`
            : `Method: ${method.replaceAll("_", " ")}. This job did not ask for appraisal values (they need your own validation set), so each dataset's share is its share of the training rows, as recorded on the chain.`)),
    );
    mount(results, h("div", { class: "two-col" }, parts));
    charts.push(barChart(payoutCanvas, { labels, yTitle: "ETH", datasets: [
      { label: "Price", data: allocations.map((a) => ethNumber(a.price_wei)), colors: "#b8c6e0" },
      { label: "Paid", data: allocations.map((a) => ethNumber(a.payout_wei)), colors: palette(1) },
    ] }));
    charts.push(barChart(appraisalCanvas, { labels: appraisalIds.map((x) => `#${x}`), yTitle: released ? "value" : "share", datasets: [
      { label: released ? "Appraisal value" : "Share", data: appraisalData.map((v) => v / totalWeight), colors: appraisalIds.map((x) => (flagged.has(String(x)) ? "#d9534f" : palette(0))) },
    ] }));
    if (curveCanvas) {
      const chart = lineChart(curveCanvas, { xTitle: "training step", yTitle: "accuracy", label: "validation accuracy" });
      chart.data.datasets[0].data = curve.map((p) => ({ x: Number(p.step), y: Number(p.accuracy) }));
      chart.options.scales.y.max = 1;
      chart.update("none");
      charts.push(chart);
    }
  }

  // Once the job is over and something was refunded, the buyer's balance with "Withdraw to wallet".
  let wallet = null;
  async function drawWallet() {
    if (wallet || !FINAL.has(job.state) || !job.refund_wei || job.refund_wei === "0") {
      wallet?.refresh();
      return;
    }
    let owner = null;
    try {
      owner = (await accounts()).find((a) => a.address.toLowerCase() === String(job.consumer).toLowerCase()) ?? null;
    } catch {
      owner = null;
    }
    if (!owner || wallet) return;
    wallet = walletPanel({ id: "refund-wallet", kind: "consumer", account: () => owner.index });
    mount(walletBox, wallet.element);
    wallet.refresh();
  }

  function drawAll() {
    drawHead();
    drawCancel();
    drawWallet();
    drawProgress(job.progress ?? {});
    addPoints((job.progress?.history ?? []).map((p) => [Number(p.step), Number(p.epsilon_spent)]), Number(job.progress?.steps) || 0);
    drawResults();
    drawEvents();
  }

  let fetching = null;
  function refetch() {
    fetching ??= api.get(`/api/jobs/${id}`).then(
      (fresh) => {
        fetching = null;
        if (FINAL.has(fresh.state) && !FINAL.has(job.state)) return; // "done" redraws everything
        job = { ...fresh, state: job.state };
        drawHead();
        drawEvents();
      },
      () => (fetching = null),
    );
  }

  drawAll();
  if (!FINAL.has(job.state)) {
    source = new EventSource(`/api/jobs/${id}/stream`);
    const onUpdate = (e) => {
      const p = JSON.parse(e.data);
      if (p.state !== job.state) {
        job.state = p.state;
        drawHead();
        drawCancel();
        refetch(); // the enclave, its lease and the chain's events change with the state
      }
      drawProgress(p);
      addPoints(p.step ? [[Number(p.step), Number(p.epsilon_spent)]] : [], Number(p.steps) || 0);
    };
    source.addEventListener("progress", onUpdate);
    source.addEventListener("done", async (e) => {
      onUpdate(e);
      source.close();
      try {
        job = await api.get(`/api/jobs/${id}`);
        drawAll();
      } catch (err) {
        mount(results, errorBox(`The final result could not be loaded: ${err.message}`));
      }
    });
    source.onopen = () => {
      if (liveNote.dataset.state !== "lost") return;
      liveNote.dataset.state = "live";
      mount(liveNote);
      refetch(); // what changed while the connection was down (the stream resends progress itself)
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        liveNote.dataset.state = "stopped";
        mount(liveNote, "Live updates stopped; reload the page to resume.");
      } else {
        liveNote.dataset.state = "lost";
        mount(liveNote, "Lost the connection to the server; reconnecting…");
      }
    };
  }
  return () => {
    source?.close();
    for (const c of charts) c.destroy();
  };
}

