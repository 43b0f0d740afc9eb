// spotit's page: pick a query photo, draw boxes on it, search, see the matches with the object outlined.
// Plain JavaScript, no build step; boxes are kept in the photo's own (upright) pixels.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const MIN_BOX = 4;          // photo pixels: a smaller drag is a click, not a box
const HANDLE_PX = 12;       // size of a corner handle on screen

// file, width, height and boxes are those of the photo shown; `photos` holds every query photo's own
const state = { file: null, width: 0, height: 0, boxes: [], selected: -1, drag: null, status: null,
  photos: [], current: -1 };

// ---- messages ----------------------------------------------------------------------------------
function say(text, kind = "error") {
  const message = $("message");
  message.textContent = text;
  message.className = kind;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (e) { /* not JSON: fall through */ }
  return `${response.status} ${response.statusText}`;
}

// ---- status and updates --------------------------------------------------------------------------
function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "never";
}

function showStatus(status) {
  state.status = status;
  const update = status.update || {};
  $("status-text").textContent =
    `${status.photos.toLocaleString()} photos · methods: ${status.methods.join(", ")} · gallery: ${status.gallery}` +
    ` · last update: ${when(status.last_update)}` + (update.by ? ` · being updated by ${update.by}` : "") +
    (status.watching ? " · watching the gallery for changes" : "");
  $("update-progress").hidden = !update.running;
  $("update").disabled = Boolean(update.running || update.by);
  if (update.running) {
    const bar = $("update-bar");
    if (update.total) { bar.max = update.total; bar.value = update.done; } else { bar.removeAttribute("value"); }
    $("update-text").textContent = update.total == null ? "Updating: looking for new and changed photos…"
      : `Updating: ${update.done} of ${update.total} photos`;
  }
  const select = $("method");
  if (select.options.length !== status.methods.length) {
    const chosen = select.value;
    select.replaceChildren(...status.methods.map((m) => new Option(m, m)));
    select.value = status.methods.includes(chosen) ? chosen : status.default_method;
  }
}

let statusTimer = null;
async function refreshStatus() {
  clearTimeout(statusTimer);
  let running = false;
  try {
    const response = await fetch("/api/status");
    if (!response.ok) throw new Error(await errorText(response));
    const status = await response.json();
    const wasRunning = state.status && state.status.update && state.status.update.running;
    showStatus(status);
    running = Boolean(status.update.running);
    if (wasRunning && !running) {
      const update = status.update;
      if (update.error) say(`The update stopped: ${update.error}`);
      else if (update.report) {
        const r = update.report;
        say(`Index updated: ${r.added} added, ${r.updated} re-read, ${r.removed} removed` +
            (r.skipped.length ? `, ${r.skipped.length} skipped (${r.skipped.map((s) => s.join(": ")).join("; ")})` : "") +
            ".", "info");
      }
    }
  } catch (e) {
    $("status-text").textContent = `Cannot read the index status: ${e.message}`;
  }
  statusTimer = setTimeout(refreshStatus, running ? 1000 : 15000);
}

async function startUpdate() {
  const response = await fetch("/api/index", { method: "POST" });
  if (!response.ok) { say(`The update did not start: ${await errorText(response)}`); return; }
  say("Updating the index; searches go on meanwhile.", "info");
  showStatus(await response.json());
  refreshStatus();
}

// ---- the query photos ---------------------------------------------------------------------------
function setQuery(file, another = false) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    say(`${file.name || "That file"} is not an image (${file.type}); choose a photo.`);
    return;
  }
  keepPhoto();
  if (!another) state.photos = [];
  state.photos.push({ file, width: 0, height: 0, boxes: [], url: null });
  say("");
  showPhoto(state.photos.length - 1);
}

function keepPhoto() {
  const photo = state.photos[state.current];
  if (photo) Object.assign(photo, { width: state.width, height: state.height, boxes: state.boxes });
}

function showPhoto(i) {
  keepPhoto();
  const entry = state.photos[i];
  state.current = i;
  Object.assign(state, { file: entry.file, width: entry.width, height: entry.height, boxes: entry.boxes, selected: -1 });
  const photo = $("photo");
  photo.onload = () => {
    // naturalWidth/Height are upright: browsers apply the EXIF orientation, as spotit does; a preview made
    // by spotit is smaller than the photo, whose size it said
    if (!entry.width) { entry.width = state.width = photo.naturalWidth; entry.height = state.height = photo.naturalHeight; }
    $("overlay").setAttribute("viewBox", `0 0 ${state.width} ${state.height}`);
    for (const id of ["stage", "hint", "box-tools"]) $(id).hidden = false;
    drawBoxes();
  };
  photo.onerror = () => serverPreview(entry);
  photo.src = entry.url || (entry.url = URL.createObjectURL(entry.file));
  drawPhotoList();
}

async function serverPreview(entry) {
  // HEIC, camera raw...: what the browser cannot show, spotit decodes
  for (const id of ["stage", "hint", "box-tools"]) $(id).hidden = true;
  const form = new FormData();
  form.append("image", entry.file, entry.file.name || "upload");
  let response;
  try { response = await fetch("/api/preview", { method: "POST", body: form }); } catch (e) { response = null; }
  if (!response || !response.ok) {
    say(`Neither the browser nor spotit can show ${entry.file.name || "this file"}` +
        (response ? `: ${await errorText(response)}` : "."));
    return;
  }
  entry.width = state.width = Number(response.headers.get("X-Photo-Width"));
  entry.height = state.height = Number(response.headers.get("X-Photo-Height"));
  entry.url = URL.createObjectURL(await response.blob());
  if (state.photos[state.current] === entry) $("photo").src = entry.url;
}

function drawPhotoList() {
  $("photos").hidden = state.photos.length === 0;
  $("photo-list").replaceChildren(...state.photos.map((entry, i) => {
    const item = document.createElement("li");
    const show = document.createElement("button");
    show.type = "button";
    const boxes = i === state.current ? state.boxes.length : entry.boxes.length;
    show.textContent = `Photo ${i + 1}: ${entry.file.name || "pasted"} (${boxes ? `${boxes} box${boxes > 1 ? "es" : ""}` : "whole"})`;
    show.setAttribute("aria-current", String(i === state.current));
    show.onclick = () => showPhoto(i);
    item.append(show);
    if (state.photos.length > 1) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove photo ${i + 1}`);
      remove.onclick = () => {
        keepPhoto();
        state.photos.splice(i, 1);
        state.current = -1;
        showPhoto(Math.min(i, state.photos.length - 1));
      };
      item.append(remove);
    }
    return item;
  }));
}

// ---- boxes ---------------------------------------------------------------------------------------
function toPhoto(event) {
  const rect = $("overlay").getBoundingClientRect();
  return [(event.clientX - rect.left) * state.width / rect.width, (event.clientY - rect.top) * state.height / rect.height];
}

function clamp(value, low, high) { return Math.min(Math.max(value, low), high); }

function normalised([x0, y0, x1, y1]) {
  const left = clamp(Math.min(x0, x1), 0, state.width), right = clamp(Math.max(x0, x1), 0, state.width);
  const top = clamp(Math.min(y0, y1), 0, state.height), bottom = clamp(Math.max(y0, y1), 0, state.height);
  return [left, top, right - left, bottom - top];
}

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function boxLabel(box, i) {
  const [x, y, w, h] = box.map(Math.round);
  return `Box ${i + 1}: x ${x}, y ${y}, ${w} × ${h} pixels`;
}

function drawBoxes() {
  const overlay = $("overlay");
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.box : null;
  overlay.replaceChildren();
  const rect = overlay.getBoundingClientRect();
  const handle = rect.width ? HANDLE_PX * state.width / rect.width : 10;
  state.boxes.forEach((box, i) => {
    const [x, y, w, h] = box;
    const element = svg("rect", { x, y, width: w, height: h, class: "box" + (i === state.selected ? " selected" : ""),
      tabindex: 0, role: "img", "aria-label": boxLabel(box, i), "data-box": i });
    overlay.append(element);
    if (i === state.selected) {
      for (const [corner, cx, cy] of [["nw", x, y], ["ne", x + w, y], ["sw", x, y + h], ["se", x + w, y + h]]) {
        overlay.append(svg("rect", { x: cx - handle / 2, y: cy - handle / 2, width: handle, height: handle,
          class: "handle", "data-box": i, "data-corner": corner }));
      }
    }
  });
  if (focused !== null && focused !== undefined) {
    const again = overlay.querySelector(`.box[data-box="${focused}"]`);
    if (again) again.focus();
  }
  const list = $("box-list");
  list.replaceChildren(...state.boxes.map((box, i) => {
    const item = document.createElement("li");
    item.textContent = boxLabel(box, i).replace(/^Box \d+: /, "");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.setAttribute("aria-label", `Remove box ${i + 1}`);
    remove.onclick = () => removeBox(i);
    item.append(remove);
    return item;
  }));
  $("clear-boxes").disabled = state.boxes.length === 0;
  if (state.photos.length) drawPhotoList();
}

function removeBox(i) {
  state.boxes.splice(i, 1);
  state.selected = Math.min(state.selected, state.boxes.length - 1);
  drawBoxes();
}

function onPointerDown(event) {
  if (!state.width || event.button > 0) return;
  const target = event.target;
  const at = toPhoto(event);
  if (target.dataset && target.dataset.corner) {
    const i = Number(target.dataset.box);
    const [x, y, w, h] = state.boxes[i];
    // the corner opposite the one held stays put
    const fixed = { nw: [x + w, y + h], ne: [x, y + h], sw: [x + w, y], se: [x, y] }[target.dataset.corner];
    state.drag = { mode: "resize", i, fixed };
  } else if (target.dataset && target.dataset.box !== undefined) {
    const i = Number(target.dataset.box);
    state.drag = { mode: "move", i, start: at, origin: state.boxes[i].slice() };
    state.selected = i;
  } else {
    state.boxes.push([at[0], at[1], 0, 0]);
    state.selected = state.boxes.length - 1;
    state.drag = { mode: "resize", i: state.selected, fixed: at, fresh: true };
  }
  $("overlay").setPointerCapture(event.pointerId);
  event.preventDefault();
  drawBoxes();
}

function onPointerMove(event) {
  const drag = state.drag;
  if (!drag) return;
  const at = toPhoto(event);
  if (drag.mode === "resize") {
    state.boxes[drag.i] = normalised([...drag.fixed, ...at]);
  } else {
    const [x, y, w, h] = drag.origin;
    state.boxes[drag.i] = [clamp(x + at[0] - drag.start[0], 0, state.width - w),
                           clamp(y + at[1] - drag.start[1], 0, state.height - h), w, h];
  }
  drawBoxes();
}

function onPointerUp(event) {
  const drag = state.drag;
  if (!drag) return;
  state.drag = null;
  const [, , w, h] = state.boxes[drag.i];
  if (w < MIN_BOX || h < MIN_BOX) {
    if (drag.fresh) { state.boxes.splice(drag.i, 1); state.selected = -1; }
    else state.boxes[drag.i] = normalised([drag.fixed[0], drag.fixed[1], drag.fixed[0] + MIN_BOX, drag.fixed[1] + MIN_BOX]);
  }
  drawBoxes();
}

function onBoxKey(event) {
  const i = event.target.dataset ? Number(event.target.dataset.box) : NaN;
  if (Number.isNaN(i) || !state.boxes[i]) return;
  if (event.key === "Delete" || event.key === "Backspace") {
    removeBox(i);
    event.preventDefault();
    return;
  }
  const steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
  if (!steps) return;
  const step = Math.max(1, Math.round(Math.max(state.width, state.height) / 100));
  let [x, y, w, h] = state.boxes[i];
  if (event.shiftKey) {
    w = clamp(w + steps[0] * step, MIN_BOX, state.width - x);
    h = clamp(h + steps[1] * step, MIN_BOX, state.height - y);
  } else {
    x = clamp(x + steps[0] * step, 0, state.width - w);
    y = clamp(y + steps[1] * step, 0, state.height - h);
  }
  state.boxes[i] = [x, y, w, h];
  state.selected = i;
  event.preventDefault();
  drawBoxes();
}

function addBox() {
  if (!state.width) return;
  const w = state.width / 3, h = state.height / 3;
  state.boxes.push([w, h, w, h]);
  state.selected = state.boxes.length - 1;
  drawBoxes();
  const element = $("overlay").querySelector(`.box[data-box="${state.selected}"]`);
  if (element) element.focus();
}

// ---- searching and results -------------------------------------------------------------------------
async function search(event) {
  event.preventDefault();
  if (!state.file) { say("Choose, drop or paste a query photo first."); $("drop").focus(); return; }
  const top = Number($("top").value);
  if (!Number.isInteger(top) || top < 1 || top > 1000) { say("Results must be a whole number from 1 to 1000."); return; }
  keepPhoto();
  const form = new FormData();
  const rounded = (boxes) => boxes.map((b) => b.map((v) => Math.round(v * 10) / 10));
  for (const entry of state.photos) form.append("image", entry.file, entry.file.name || "pasted.png");
  form.append("boxes", JSON.stringify(state.photos.length > 1 ? state.photos.map((p) => rounded(p.boxes))
    : rounded(state.boxes)));
  form.append("top", String(top));
  for (const field of ["method", "matches", "under", "since", "until"]) {
    if ($(field).value.trim()) form.append(field, $(field).value.trim());
  }
  say("");
  $("search").disabled = true;
  $("searching").hidden = false;
  $("results").setAttribute("aria-busy", "true");
  const started = performance.now();
  try {
    const response = await fetch("/api/search", { method: "POST", body: form });
    if (!response.ok) { say(await errorText(response)); return; }
    const answer = await response.json();
    showResults(answer, (performance.now() - started) / 1000);
  } catch (e) {
    say(`The search failed: ${e.message}`);
  } finally {
    $("search").disabled = false;
    $("searching").hidden = true;
    $("results").removeAttribute("aria-busy");
  }
}

function outline(result, target) {
  target.setAttribute("viewBox", `0 0 ${result.width} ${result.height}`);
  target.setAttribute("preserveAspectRatio", "xMidYMid meet");
  target.replaceChildren();
  if (result.quad) {
    target.append(svg("polygon", { points: result.quad.map((p) => p.join(",")).join(" "), class: "outline" }));
  }
}

function caption(result, rank) {
  const parts = [`#${rank}`, result.id, `score ${result.score.toFixed(3)}`];
  if (result.match) parts.push(`match: ${result.match} (${Math.round(result.confidence * 100)}%)`);
  if (result.inliers != null) parts.push(`${result.inliers} inliers`);
  if (result.query_photo != null) parts.push(`found by photo ${result.query_photo + 1}`);
  return parts;
}

function showResults(answer, seconds) {
  const results = $("results");
  const heading = document.createElement("p");
  const photos = Array.isArray(answer.query) ? answer.query.length : 1;
  const boxes = (photos > 1 ? answer.boxes.flat(1) : answer.boxes).length;
  heading.textContent = `${answer.results.length} results (${answer.method}, ${seconds.toFixed(2)} s)` +
    (photos > 1 ? ` for ${photos} photos` : "") +
    (boxes ? ` for ${boxes} box${boxes > 1 ? "es" : ""}` : photos > 1 ? "" : " for the whole photo") +
    (answer.results.length === 0 && $("matches").value ? ": no photo shows it" : "");
  const cards = answer.results.map((result, i) => {
    const figure = document.createElement("figure");
    figure.className = "result";
    figure.tabIndex = 0;
    figure.setAttribute("role", "button");
    figure.dataset.id = result.id;
    if (result.match) figure.dataset.match = result.match;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    if (result.thumbnail_url) {
      const img = document.createElement("img");
      img.src = result.thumbnail_url;
      img.alt = result.id;
      img.loading = "lazy";
      const overlay = document.createElementNS(SVG, "svg");
      overlay.setAttribute("aria-hidden", "true");
      outline(result, overlay);
      thumb.append(img, overlay);
    } else {
      const missing = document.createElement("p");
      missing.className = "missing";
      missing.textContent = result.unavailable || "This photo is not served.";
      thumb.append(missing);
    }
    const text = document.createElement("figcaption");
    const [rank, ...rest] = caption(result, i + 1);
    const strong = document.createElement("span");
    strong.className = "rank";
    strong.textContent = rank + " ";
    text.append(strong, rest.filter((part) => !part.startsWith("match:")).join(" · "));
    if (result.match) {  // the verdict as a badge; the label says it in words
      const badge = document.createElement("span");
      badge.className = `match ${result.match}`;
      badge.textContent = `${result.match} ${Math.round(result.confidence * 100)}%`;
      badge.title = "Does this photo show the object? (calibrated confidence)";
      text.prepend(badge);
    }
    if (result.quad) {
      const verified = document.createElement("span");
      verified.className = "verified";
      verified.textContent = " · located";
      text.append(verified);
    }
    if (result.stale) {
      const stale = document.createElement("span");
      stale.className = "stale";
      stale.textContent = ` · ${result.stale} since indexing`;
      text.append(stale);
    }
    figure.setAttribute("aria-label", caption(result, i + 1).join(", ") + (result.quad ? ", object located" : ""));
    figure.append(thumb, text);
    if (result.image_url) {
      figure.onclick = () => openViewer(result, i + 1);
      figure.onkeydown = (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openViewer(result, i + 1); } };
    }
    return figure;
  });
  results.replaceChildren(heading, ...cards);
  if (results.getBoundingClientRect().top > window.innerHeight) results.scrollIntoView({ behavior: "smooth" });
}

function openViewer(result, rank) {
  const photo = $("viewer-photo");
  photo.src = result.image_url;
  photo.alt = result.id;
  outline(result, $("viewer-overlay"));
  $("viewer-caption").textContent = caption(result, rank).join(" · ");
  $("viewer").showModal();
}

// ---- wiring ------------------------------------------------------------------------------------------
function imageFrom(dataTransfer) {
  if (!dataTransfer) return null;
  for (const file of dataTransfer.files || []) if (!file.type || file.type.startsWith("image/")) return file;
  return dataTransfer.files && dataTransfer.files[0];
}

document.addEventListener("DOMContentLoaded", () => {
  $("file").addEventListener("change", (e) => setQuery(e.target.files[0]));
  $("more").addEventListener("change", (e) => { setQuery(e.target.files[0], true); e.target.value = ""; });
  const drop = $("drop");
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = imageFrom(e.dataTransfer);
    if (file) setQuery(file); else say("Nothing to search in what was dropped: drop a photo file.");
  });
  document.addEventListener("paste", (e) => {
    const file = imageFrom(e.clipboardData);
    if (file) { e.preventDefault(); setQuery(file); }
  });
  const overlay = $("overlay");
  overlay.addEventListener("pointerdown", onPointerDown);
  overlay.addEventListener("pointermove", onPointerMove);
  overlay.addEventListener("pointerup", onPointerUp);
  overlay.addEventListener("pointercancel", onPointerUp);
  overlay.addEventListener("keydown", onBoxKey);
  overlay.addEventListener("focusin", (e) => {
    if (e.target.dataset && e.target.dataset.box !== undefined && state.selected !== Number(e.target.dataset.box)) {
      state.selected = Number(e.target.dataset.box);
      drawBoxes();
    }
  });
  window.addEventListener("resize", drawBoxes);
  $("add-box").addEventListener("click", addBox);
  $("clear-boxes").addEventListener("click", () => { state.boxes = []; state.selected = -1; drawBoxes(); });
  $("search-form").addEventListener("submit", search);
  $("update").addEventListener("click", startUpdate);
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) $("viewer").close(); });
  refreshStatus();
});
