// The page talks to the jobs API: POST /v1/jobs, then polls GET /v1/jobs/{id} for progress, previews and results.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = localStorage.getItem("sd-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = (data.error && (data.error.message || data.errors)) || data.detail || r.statusText;
    throw new Error(r.status + ": " + msg);
  }
  return data;
}

async function init() {
  $("apikey").value = localStorage.getItem("sd-api-key") || "";
  $("apikey").addEventListener("change", () => localStorage.setItem("sd-api-key", $("apikey").value));
  try {
    const samplers = await api("GET", "/sdapi/v1/samplers");
    $("sampler").replaceChildren(...samplers.map((s) => new Option(s.name, s.name, s.name === "Euler", s.name === "Euler")));
    const models = await api("GET", "/v1/models");
    $("model").replaceChildren(...models.data.map((m) => new Option(m.id, m.id)));
    const ready = await fetch("/ready").then((r) => r.json());
    if (ready.model) $("model").value = ready.model;
  } catch (e) {
    $("error").textContent = String(e.message || e);
  }
}

function num(id) { return Number($(id).value); }

async function generate(ev) {
  ev.preventDefault();
  $("error").textContent = "";
  const body = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value,
    width: num("width"), height: num("height"), steps: num("steps"), cfg_scale: num("cfg_scale"),
    sampler_name: $("sampler").value, seed: num("seed"), batch_size: num("batch_size"),
    override_settings: { sd_model_checkpoint: $("model").value },
  };
  try {
    $("generate").disabled = true;
    $("interrupt").disabled = false;
    const job = await api("POST", "/v1/jobs", body);
    current = job.id;
    await follow(job.id);
  } catch (e) {
    $("error").textContent = String(e.message || e);
  } finally {
    $("generate").disabled = false;
    $("interrupt").disabled = true;
    current = null;
  }
}

async function follow(id) {
  for (;;) {
    const v = await api("GET", "/v1/jobs/" + id);
    $("bar").value = v.progress;
    const eta = v.eta_s ? ` · ETA ${v.eta_s.toFixed(1)} s` : "";
    $("status").textContent = v.status === "queued"
      ? `queued (position ${v.queue_position + 1})`
      : `${v.status} · step ${v.step}/${v.steps}${v.batches > 1 ? ` · batch ${v.batch + 1}/${v.batches}` : ""}${eta}`;
    if (v.preview) { $("preview").src = "data:image/png;base64," + v.preview; $("preview").style.display = "block"; }
    if (v.status === "done") { show(v); return; }
    if (v.status === "failed" || v.status === "cancelled") throw new Error(v.status + ": " + (v.error || ""));
    await new Promise((r) => setTimeout(r, 300));
  }
}

function show(v) {
  $("preview").style.display = "none";
  const info = JSON.parse(v.info);
  // the server's format (A1111's samples_format option): png, jpeg or webp
  const format = v.format || "png";
  const ext = format === "jpeg" ? "jpg" : format;
  v.images.forEach((b64, n) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `data:image/${format};base64,` + b64;
    img.alt = info.infotexts[n] || "";
    img.className = "result";
    const link = document.createElement("a");
    link.href = img.src;
    link.download = `sd-${info.all_seeds[n]}-${n}.${ext}`;
    link.textContent = "download";
    const cap = document.createElement("figcaption");
    cap.textContent = info.infotexts[n] || "";
    fig.append(img, link, cap);
    $("gallery").prepend(fig);
  });
  $("status").textContent = `done · ${v.images.length} image(s) in ${v.elapsed_s.toFixed(1)} s${v.interrupted ? " (interrupted)" : ""}`;
}

$("form").addEventListener("submit", generate);
$("interrupt").addEventListener("click", () => { if (current) api("POST", "/sdapi/v1/interrupt", {}).catch(() => {}); });
init();
