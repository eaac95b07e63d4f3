// fastimg's search page: drop or pick a photo -> POST api/search; click a result ->
// GET api/similar/{id}; no query -> browse GET api/images.  Plain DOM, no dependencies.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const grid = $("grid"), status = $("status"), error = $("error"), more = $("more");
  const kInput = $("k"), metricSelect = $("metric"), drop = $("drop"), fileInput = $("file"), queryImg = $("query");
  let info = null, browseOffset = 0, lastQuery = null, queryUrl = null;
  const PAGE = 48;

  function showError(message) {
    error.textContent = message;
    error.hidden = !message;
  }

  async function call(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (e) {
      throw new Error("the server cannot be reached (" + e.message + ")");
    }
    let body = null;
    try { body = await response.json(); } catch (e) { /* not JSON */ }
    if (!response.ok) {
      const msg = body && body.error ? body.error.message : response.status + " " + response.statusText;
      throw new Error(msg);
    }
    return body;
  }

  function card(item) {
    const el = document.createElement("button");
    el.type = "button";
    el.className = "card";
    el.dataset.id = item.id;
    el.title = item.name + " \u2014 click to find similar images";
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = item.name;
    if (item.thumbnail) img.src = item.thumbnail;
    const meta = document.createElement("span");
    meta.className = "meta";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.name.split("/").pop();  // the file name; the whole name in the title
    meta.appendChild(name);
    if (item.score !== undefined) {
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = Number(item.score).toPrecision(4);
      meta.appendChild(score);
    }
    el.append(img, meta);
    el.addEventListener("click", () => similar(item));
    return el;
  }

  function params() {
    const p = new URLSearchParams();
    p.set("k", String(Math.max(1, parseInt(kInput.value, 10) || 24)));
    if (metricSelect.value) p.set("metric", metricSelect.value);
    return p;
  }

  function render(items, append) {
    if (!append) grid.replaceChildren();
    for (const item of items) grid.appendChild(card(item));
  }

  function resultsStatus(doc, what) {
    status.textContent = doc.results.length + " results for " + what + " (" + doc.metric + ", " +
      doc.took_ms.toFixed(1) + " ms)";
  }

  async function browse(append) {
    lastQuery = null;
    if (!append) { browseOffset = 0; setQueryImage(null); }
    showError("");
    try {
      const doc = await call("api/images?offset=" + browseOffset + "&limit=" + PAGE);
      render(doc.images, append);
      browseOffset += doc.images.length;
      more.hidden = browseOffset >= doc.total;
      status.textContent = "Browsing " + Math.min(browseOffset, doc.total) + " of " + doc.total +
        " images \u2014 drop a photo to search, or click one";
    } catch (e) {
      showError(e.message);
    }
  }

  function setQueryImage(src) {
    if (queryUrl) { URL.revokeObjectURL(queryUrl); queryUrl = null; }
    if (src) queryImg.src = src; else queryImg.removeAttribute("src");
  }

  async function searchFile(file) {
    if (!file) return;
    lastQuery = { file: file };
    more.hidden = true;
    showError("");
    setQueryImage(null);
    if (file.type.startsWith("image/")) { queryUrl = URL.createObjectURL(file); queryImg.src = queryUrl; }
    status.textContent = "Searching\u2026";
    const form = new FormData();
    form.append("image", file, file.name || "upload");
    for (const [key, value] of params()) form.append(key, value);
    try {
      const doc = await call("api/search", { method: "POST", body: form });
      render(doc.results, false);
      resultsStatus(doc, file.name || "the photo");
    } catch (e) {
      grid.replaceChildren();
      status.textContent = "";
      showError(e.message);
    }
  }

  async function similar(item) {
    lastQuery = { item: item };
    more.hidden = true;
    showError("");
    setQueryImage(item.thumbnail ? item.thumbnail : null);
    status.textContent = "Searching\u2026";
    try {
      const doc = await call("api/similar/" + encodeURIComponent(item.id) + "?" + params());
      render(doc.results, false);
      resultsStatus(doc, item.name);
      window.scrollTo({ top: 0 });
    } catch (e) {
      showError(e.message);
    }
  }

  function rerun() {
    if (!lastQuery) return;
    if (lastQuery.file) searchFile(lastQuery.file); else similar(lastQuery.item);
  }

  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) searchFile(file);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); } });
  fileInput.addEventListener("change", () => { searchFile(fileInput.files[0]); fileInput.value = ""; });
  $("browse").addEventListener("click", () => browse(false));
  more.addEventListener("click", () => browse(true));
  $("controls").addEventListener("submit", (e) => { e.preventDefault(); rerun(); });  // Enter in "results"
  kInput.addEventListener("change", rerun);
  metricSelect.addEventListener("change", rerun);
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());

  (async function start() {
    try {
      info = await call("api/info");
      $("count").textContent = info.count.toLocaleString() + " images \u00b7 " + info.descriptor;
      kInput.max = String(info.max_k);
      for (const m of info.metrics) {
        const option = document.createElement("option");
        option.value = m.name;
        option.textContent = m.name + (m.name === info.metric ? " (default)" : "");
        option.selected = m.name === info.metric;
        metricSelect.appendChild(option);
      }
      if (!info.search_by_image) {
        $("drop-text").textContent = "This index holds vectors computed elsewhere: click an image to search";
        fileInput.disabled = true;
      }
    } catch (e) {
      showError(e.message);
    }
    browse(false);
  })();
})();
