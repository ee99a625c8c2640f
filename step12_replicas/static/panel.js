// The page's pool panel: live counts, a 60-second chart, and a burst of
// requests. It talks to nothing but the app's own routes.
"use strict";

const script = document.getElementById("panel-script");
const poolUrl = script.dataset.poolUrl;
const messagesUrl = script.dataset.messagesUrl;

// Drawn in this order: connects, thin and dashed, last, so that it shows
// even where it lies on checked out.
const SERIES = ["checked_out", "overflow", "connects"];
const WINDOW_SECONDS = 60;
const samples = [];
let heldBefore = false;

async function refreshPool() {
  let status;
  try {
    const response = await fetch(poolUrl, {cache: "no-store"});
    status = await response.json();
  } catch (error) {
    document.getElementById("pool-error").textContent = "server unreachable";
    return;
  }
  document.getElementById("pool-error").textContent = "";
  for (const cell of document.querySelectorAll("[data-pool]")) {
    cell.textContent = status[cell.dataset.pool];
  }
  // Every other engine's pool, under its name in /pool (step 6's audit).
  for (const cell of document.querySelectorAll("[data-engine-pool]")) {
    const engine = cell.closest("[data-engine]").dataset.engine;
    cell.textContent = status[engine][cell.dataset.enginePool];
  }
  for (const cell of document.querySelectorAll("[data-option]")) {
    cell.textContent = status.options[cell.dataset.option];
  }
  showHeldConnections(status);
  samples.push({time: Date.now(), ...status});
  while (samples.length > WINDOW_SECONDS) {
    samples.shift();
  }
  drawChart();
}

// A connection checked out while no request runs is held by a Session that
// nothing removed. Counts are read one after the other, so a request may end
// between the two: only two samples in a row raise the flag.
function showHeldConnections(status) {
  const held = status.checked_out - status.requests_running;
  const warning = document.getElementById("held-warning");
  const checkedOut = document.querySelector('[data-pool="checked_out"]');
  const showing = held > 0 && heldBefore;
  heldBefore = held > 0;
  warning.hidden = !showing;
  warning.querySelector("[data-held]").textContent = held;
  checkedOut.classList.toggle("held", showing);
}

function drawChart() {
  const svg = document.getElementById("pool-chart");
  const width = 600, height = 160, left = 40, top = 10, bottom = 20;
  const values = samples.flatMap((sample) => SERIES.map((name) => sample[name]));
  const low = Math.min(0, ...values), high = Math.max(1, ...values);
  // The time axis spans the samples kept, at least ten seconds of them.
  const now = Date.now();
  const span = Math.max(10_000, now - samples[0].time);
  const x = (time) => left + (width - left) * (1 - (now - time) / span);
  const y = (value) => top + (height - top - bottom) * (high - value) / (high - low);
  const parts = [
    `<line class="axis" x1="${left}" x2="${width}" y1="${y(0)}" y2="${y(0)}"/>`,
    `<text x="${left - 6}" y="${y(high) + 4}" text-anchor="end">${high}</text>`,
    `<text x="${left - 6}" y="${y(0) + 4}" text-anchor="end">0</text>`,
    `<text x="${left}" y="${height - 4}">${Math.round(span / 1000)} s ago</text>`,
    `<text x="${width}" y="${height - 4}" text-anchor="end">now</text>`,
  ];
  if (low < 0) {
    parts.push(`<text x="${left - 6}" y="${y(low) + 4}" text-anchor="end">${low}</text>`);
  }
  // Checked out last, on top: it is the one that flags a leak, and it often
  // equals overflow (both 0, say), whose line would hide it.
  for (const name of [...SERIES].reverse()) {
    const points = samples.map((sample) => `${x(sample.time)},${y(sample[name])}`);
    parts.push(`<polyline class="${name}" data-series="${name}" points="${points.join(" ")}"/>`);
    // A line needs two samples; the dot shows the latest from the first one.
    const latest = samples[samples.length - 1];
    parts.push(`<circle class="${name}" data-latest="${name}" r="3"`
      + ` cx="${x(latest.time)}" cy="${y(latest[name])}"/>`);
  }
  svg.innerHTML = parts.join("");
  svg.dataset.samples = samples.length;
}

async function burst(path, count) {
  const result = document.getElementById("burst-result");
  result.textContent = `sending ${count} requests…`;
  const one = async () => {
    const started = performance.now();
    try {
      const response = await fetch(path, {cache: "no-store"});
      await response.text();
      return {status: response.status, ms: performance.now() - started};
    } catch (error) {
      return {status: "no answer", ms: performance.now() - started};
    }
  };
  const answers = await Promise.all(Array.from({length: count}, one));
  const byStatus = {};
  for (const answer of answers) {
    byStatus[answer.status] = (byStatus[answer.status] || 0) + 1;
  }
  const slowest = Math.max(...answers.map((answer) => answer.ms));
  const summary = Object.entries(byStatus).map(([status, n]) => `${n} × ${status}`);
  result.textContent = `${count} requests: ${summary.join(", ")}; slowest ${Math.round(slowest)} ms`;
  result.dataset.ok = byStatus[200] || 0;
  result.dataset.unavailable = byStatus[503] || 0;
  result.dataset.slowestMs = Math.round(slowest);
}

document.getElementById("burst").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target.elements;
  burst(form.path.value, Number(form.count.value));
});

document.getElementById("new-message").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch(messagesUrl, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text: event.target.elements.text.value}),
  });
  if (response.ok) {
    location.reload();
  } else {
    const body = await response.json();
    document.getElementById("form-error").textContent = body.error;
  }
});

refreshPool();
setInterval(refreshPool, 1000);
