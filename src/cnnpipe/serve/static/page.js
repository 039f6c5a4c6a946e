"use strict";
// The page for people: the model card from /metadata, then for a chosen or dropped image its
// answer from /predict and its Grad-CAM heat map from /explain. Everything comes from this
// server (the Content-Security-Policy header allows nothing else).

const $ = (id) => document.getElementById(id);
let shown = []; // object URLs of the images on the page, released when the next one comes

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function percent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function metricText(name, value) {
  // rates as percentages; calibration error and log-likelihood as numbers
  return /ece|nll/.test(name) ? value.toFixed(4) : percent(value);
}

// With CNNPIPE_API_KEY set, every model route answers 401 without the key: the page asks for it
// once and keeps it for this tab only (sessionStorage), sent as Authorization: Bearer <key>.
const KEY = "cnnpipe-api-key";

function authorized(init = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...init, headers: { Authorization: `Bearer ${key}` } } : init;
}

function askForTheKey() {
  $("key").hidden = false;
  $("api-key").focus();
}

async function loadCard() {
  const reply = await fetch("/metadata", authorized());
  if (reply.status === 401) {
    askForTheKey();
    throw new Error(await errorText(reply));
  }
  if (!reply.ok) throw new Error(`/metadata answered ${reply.status}`);
  const card = await reply.json();
  $("model").textContent = `${card.architecture}, ${card.classes.length} classes ` +
    `(${card.model}, ${card.runtime} runtime)`;
  $("classes").textContent = card.classes.join(", ");
  $("version").textContent = card.version;
  const channels = card.channels === 1 ? "greyscale" : "RGB";
  $("input").textContent = `${card.image_size} x ${card.image_size} px, ${channels}`;
  $("calibration").textContent = `temperature ${card.temperature.toFixed(3)}; ` +
    `"unknown" under a top probability of ${card.threshold.toFixed(3)}` +
    (card.distance_threshold != null
      ? ` or beyond a feature distance of ${card.distance_threshold.toFixed(2)}` : "") +
    (card.target_coverage ? ` (${percent(card.target_coverage)} of validation images get a label)` : "");
  $("data").textContent = card.data_hash ? `data/processed ${card.data_hash}` : "not recorded";
  const body = $("metrics").tBodies[0];
  body.replaceChildren();
  for (const [name, value] of Object.entries(card.test_metrics)) {
    const row = body.insertRow();
    cell(row, name.replace(/^test_/, "").replaceAll("_", " "));
    cell(row, metricText(name, value), "number");
  }
}

function problem(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function errorText(reply) {
  try {
    const body = await reply.json();
    if (body.detail) return body.detail.map((d) => d.msg).join("; ");
    return body.error || `the server answered ${reply.status}`;
  } catch {
    return `the server answered ${reply.status}`;
  }
}

function showAnswer(answer) {
  $("label").textContent = answer.label ?? "unknown";
  $("label").className = answer.label === null ? "unknown" : "";
  $("reason").textContent = answer.reason ?? "";
  $("reason").hidden = answer.label !== null;
  const body = $("probabilities").tBodies[0];
  body.replaceChildren();
  for (const [name, p] of Object.entries(answer.probabilities)) {
    const row = body.insertRow();
    cell(row, name, "class");
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = p;
    row.insertCell().append(meter);
    cell(row, percent(p), "number");
  }
}

function post(route, file) {
  const form = new FormData();
  form.append("file", file);
  return fetch(route, authorized({ method: "POST", body: form }));
}

async function classify(file) {
  document.body.dataset.state = "busy";
  problem("");
  shown.forEach(URL.revokeObjectURL);
  shown = [URL.createObjectURL(file)];
  $("preview").src = shown[0];
  $("filename").textContent = file.name;
  const [prediction, explanation] = await Promise.all([post("/predict", file), post("/explain", file)]);
  if (!prediction.ok) {
    if (prediction.status === 401) askForTheKey();
    $("result").hidden = true;
    problem(await errorText(prediction));
    document.body.dataset.state = "error";
    return;
  }
  showAnswer(await prediction.json());
  if (explanation.ok) {
    const heat = URL.createObjectURL(await explanation.blob());
    shown.push(heat);
    $("heatmap").src = heat;
    const explained = decodeURIComponent(explanation.headers.get("X-Explained-Class") || "");
    $("explained").textContent = `Grad-CAM for ${explained}: where the evidence lies (red: most)`;
    $("heatmap").hidden = false;
  } else {
    $("heatmap").hidden = true;
    $("explained").textContent = `no heat map: ${await errorText(explanation)}`;
  }
  $("result").hidden = false;
  document.body.dataset.state = "done";
}

function start() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => {
    if (event.target.files.length) classify(event.target.files[0]).catch((e) => problem(String(e)));
  });
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) {
      classify(event.dataTransfer.files[0]).catch((e) => problem(String(e)));
    }
  });
  $("key").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value);
    $("key").hidden = true;
    problem("");
    loadCard().catch((e) => problem(`the model card could not be read: ${e.message}`));
  });
  loadCard().catch((e) => problem(`the model card could not be read: ${e.message}`));
}

start();
