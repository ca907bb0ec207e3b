// The search page: reads /api/info once, then sends searches to the JSON API and draws the
// results. Everything shown is set with textContent (never parsed as HTML), so captions and
// file names from a data set cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const MAP_NAMES = { i2t: "I→T", t2i: "T→I", i2i: "I→I", t2t: "T→T" };
let info = null;

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function targetName(modality) {
  if (modality === "text") return info.data.has_captions ? "captions" : "texts";
  return "images";
}

function renderHeader() {
  const model = info.model;
  $("fact-model").textContent = [model.method || "model", model.checkpoint].filter(Boolean).join(" · ");
  $("fact-bits").textContent = `${model.bits} bits`;
  $("fact-database").textContent = Object.entries(info.databases)
    .map(([m, n]) => `${n.toLocaleString()} ${targetName(m)}`).join(", ");
  const metrics = model.metrics || {};
  const maps = Object.keys(metrics).filter((k) => k.endsWith("_map"))
    .map((k) => `${MAP_NAMES[k.slice(0, -4)] || k} ${metrics[k].toFixed(4)}`);
  $("fact-map").textContent = maps.length
    ? `${maps.join(", ")}${metrics.topk ? ` (MAP@${metrics.topk})` : ""}` : "not recorded";
  $("fact-data").textContent = `${info.data.name}, ${info.data.items.toLocaleString()} items`;
}

function disable(formId, reasonId, reason) {
  for (const control of $(formId).querySelectorAll("input, button")) control.disabled = true;
  $(reasonId).textContent = reason;
  $(reasonId).hidden = false;
}

function renderControls() {
  const caps = info.capabilities;
  if (!caps.caption.available) disable("caption-form", "caption-unavailable", `Caption search is not available: ${caps.caption.reason}`);
  if (!caps.image_upload.available) disable("image-form", "image-unavailable", `Image search is not available: ${caps.image_upload.reason}`);
  const select = $("item-modality");
  for (const m of caps.item) select.append(el("option", { value: m, text: m === "image" ? "its image" : "its text" }));
  const targets = Object.keys(info.databases);
  const preferred = targets.includes("image") ? "image" : targets[0];
  for (const m of targets) {
    const id = `target-${m}`;
    const input = el("input", { type: "radio", name: "target", value: m, id, checked: m === preferred });
    $("target").append(el("label", { htmlFor: id }, [input, ` ${targetName(m)}`]));
  }
}

const target = () => document.querySelector("input[name=target]:checked").value;
const k = () => Number($("k").value);

function hitCard(hit, targetModality) {
  const item = hit.item;
  const showImage = targetModality === "image" && item.image_url;
  const classes = ["hit"];
  if (hit.relevant === true) classes.push("relevant");
  if (hit.relevant === false) classes.push("irrelevant");
  const meta = el("div", { class: "meta" }, [
    el("span", { class: "distance", text: `d = ${hit.distance}` }),
    hit.relevant === true ? el("span", { class: "mark", text: "✓ shares a label", title: "shares a label with the query" }) : null,
    el("span", { class: "id", text: `#${item.id}` }),
    el("span", { class: "labels", text: `labels ${item.labels.join(", ")}` }),
  ]);
  const caption = item.caption !== null && (targetModality === "text" || !showImage)
    ? el("p", { class: "caption", text: item.caption || "(empty caption)" }) : null;
  const more = el("button", { type: "button", class: "more", text: "More like this" });
  more.addEventListener("click", () => searchItem(item.id, targetModality));
  return el("article", { class: classes.join(" "), data: { item: item.id, distance: hit.distance } }, [
    showImage ? el("img", { src: item.image_url, alt: `item ${item.id}`, loading: "lazy" }) : null,
    caption, meta, more,
  ]);
}

function renderQuery(query, preview) {
  const box = $("query");
  box.replaceChildren();
  let text;
  if (query.kind === "caption") text = `Caption: “${query.caption}”`;
  else if (query.kind === "image") text = `Image: ${query.filename || "upload"}`;
  else if (query.kind === "item") {
    const item = query.item;
    text = `Item #${item.id} (${query.modality}; ${item.split}; labels ${item.labels.join(", ")})`;
    if (query.modality === "image" && item.image_url) preview = item.image_url;
    if (item.caption) text += ` — “${item.caption}”`;
  } else text = `${query.modality} vector of length ${query.length}`;
  if (preview) box.append(el("img", { src: preview, alt: "query" }));
  box.append(el("span", { class: "kind", text }));
  box.hidden = false;
}

async function run(request, preview = null) {
  const buttons = document.querySelectorAll("#controls button");
  buttons.forEach((b) => { b.dataset.wasDisabled = b.disabled; b.disabled = true; });
  $("results").dataset.state = "busy";
  setStatus("Searching…");
  try {
    const result = await request();
    renderQuery(result.query, preview);
    $("results").replaceChildren(...result.results.map((hit) => hitCard(hit, result.target)));
    const t = result.timing_ms;
    setStatus(`${result.results.length} ${targetName(result.target)} of ${result.database_size.toLocaleString()}, ` +
              `encoded in ${t.encode.toFixed(1)} ms, ranked in ${t.rank.toFixed(1)} ms`);
    for (const w of result.warnings) $("status").append(el("span", { class: "warning", text: ` — ${w}` }));
    $("results").dataset.state = "done";
    $("results").dataset.kind = result.query.kind;
  } catch (error) {
    setStatus(error.message, true);
    $("results").dataset.state = "error";
  } finally {
    buttons.forEach((b) => { b.disabled = b.dataset.wasDisabled === "true"; });
  }
}

const postJson = (path, body) => () => api(path, {
  method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
});

function searchItem(id, modality) {
  $("item-id").value = id;
  if ([...$("item-modality").options].some((o) => o.value === modality)) $("item-modality").value = modality;
  return run(postJson("/api/search/item", { item: Number(id), modality, target: target(), k: k() }));
}

function wire() {
  $("caption-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("caption").value.trim();
    if (!text) return setStatus("Type a caption first.", true);
    run(postJson("/api/search/caption", { text, target: target(), k: k() }));
  });
  $("image-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("image-file").files[0];
    if (!file) return setStatus("Choose an image file first.", true);
    const form = new FormData();
    form.append("file", file);
    form.append("target", target());
    form.append("k", String(k()));
    run(() => api("/api/search/image", { method: "POST", body: form }), URL.createObjectURL(file));
  });
  $("item-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("item-id").value;
    if (id === "") return setStatus("Give an item id first.", true);
    searchItem(id, $("item-modality").value);
  });
  $("random-query").addEventListener("click", async () => {
    try {
      const item = await api("/api/items/random?split=query");
      searchItem(item.id, $("item-modality").value);
    } catch (error) { setStatus(error.message, true); }
  });
}

async function start() {
  try {
    info = await api("/api/info");
  } catch (error) {
    setStatus(`Cannot reach the server: ${error.message}`, true);
    return;
  }
  renderHeader();
  renderControls();
  wire();
  document.body.dataset.ready = "true";
  setStatus("Ready.");
}

start();
