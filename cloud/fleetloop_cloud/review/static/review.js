// FleetLoop review page: keyboard-first labeling, audit grid, live counters. Vanilla JS, no build.
"use strict";

(function () {
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const KEYS = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "n"];

  async function api(method, path, body) {
    const options = { method, headers: { "X-CSRF-Token": CSRF }, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (!response.ok) {
      if (response.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname); }
      const error = new Error(data.error || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function text(el, value) { if (el) el.textContent = value; }

  function setStatus(message, isError) {
    const el = document.getElementById("status");
    if (!el) return;
    el.textContent = message;
    el.classList.toggle("error", !!isError);
  }

  // ------------------------------------------------------------------ counters
  function renderCounters(c) {
    if (!c) return;
    const queue = document.querySelector("#queue tbody");
    if (queue) {
      queue.innerHTML = "";
      const purposes = Object.keys(c.queue);
      if (!purposes.length) queue.innerHTML = "<tr><td>empty</td></tr>";
      const head = document.createElement("tr");
      head.innerHTML = "<th>purpose</th><th>waiting</th><th>leased</th>";
      if (purposes.length) queue.appendChild(head);
      for (const p of purposes) {
        const row = document.createElement("tr");
        row.innerHTML = "<td></td><td></td><td></td>";
        row.children[0].textContent = p;
        row.children[1].textContent = c.queue[p].waiting;
        row.children[2].textContent = c.queue[p].leased;
        queue.appendChild(row);
      }
      queue.dataset.waiting = c.waiting;
    }
    const rates = document.querySelector("#rates tbody");
    if (rates) {
      rates.innerHTML = "";
      for (const a of c.annotators) {
        const row = document.createElement("tr");
        row.innerHTML = "<td></td><td></td><td></td><td></td>";
        row.children[0].textContent = a.annotator;
        row.children[1].textContent = a.last_hour;
        row.children[2].textContent = a.per_hour_pace === null ? "–" : a.per_hour_pace + "/h";
        row.children[3].textContent = a.labels;
        row.dataset.annotator = a.annotator;
        rates.appendChild(row);
      }
      if (!c.annotators.length) rates.innerHTML = "<tr><td colspan='4'>no labels yet</td></tr>";
    }
    const audit = document.getElementById("audit-accuracy");
    if (audit) {
      const a = c.audit;
      audit.textContent = a.frames
        ? `${(100 * a.accuracy).toFixed(1)} % of ${a.frames} ` +
          `[${(100 * a.interval[0]).toFixed(1)}, ${(100 * a.interval[1]).toFixed(1)}] ` +
          `(${Math.round(100 * a.confidence_level)} % Wilson; target ${(100 * c.target_accuracy).toFixed(1)} %)`
        : "no audited labels yet";
    }
  }

  async function pollCounters() {
    try { renderCounters(await api("GET", "/api/counters")); } catch (e) { /* shown on the next action */ }
  }

  // ------------------------------------------------------------------ labeling view
  function labeler() {
    const img = document.getElementById("frame");
    const empty = document.getElementById("empty");
    let current = null;        // the leased item
    let history = [];          // my answers, newest first
    let cursor = -1;           // -1: the current item; i >= 0: history[i]
    let shownAt = performance.now();
    let busy = false;

    img.addEventListener("load", () => { shownAt = performance.now(); img.dataset.loaded = img.src; });

    function tierLine(t) {
      return `${t.tier} ${t.version}: ` + t.top.map(c => `${c.name} ${(100 * c.prob).toFixed(0)}%`).join(" · ");
    }

    function show(item, mode) {
      const mark = document.getElementById("mode");
      const meta = document.getElementById("meta");
      const suggestion = document.getElementById("suggestion");
      const tiers = document.getElementById("tiers");
      if (!item) {
        img.hidden = true;
        empty.hidden = false;
        img.removeAttribute("data-task");
        text(meta, ""); suggestion.innerHTML = ""; tiers.innerHTML = ""; text(mark, "");
        document.body.dataset.task = "";
        return;
      }
      img.hidden = false;
      empty.hidden = true;
      if (img.getAttribute("src") !== item.image_url) img.src = item.image_url;
      img.dataset.task = item.task_id;
      document.body.dataset.task = item.task_id;
      document.body.dataset.mode = mode;
      const f = item.frame || {};
      text(meta, `task ${item.task_id} · ${item.purpose} · round ${item.round} · ${f.robot || "?"} @ ${f.site || "?"}` +
        (f.track ? ` · track ${f.track}` : ""));
      suggestion.innerHTML = "";
      if (item.suggestion) {
        const s = item.suggestion;
        const conf = s.confidence === null ? "uncalibrated" : `calibrated ${(100 * s.confidence).toFixed(1)} %`;
        const agree = s.agree === undefined ? "" : (s.agree ? ", tiers agree" : ", tiers DISAGREE");
        suggestion.innerHTML = "<kbd>Enter</kbd> <b></b> <span></span>";
        suggestion.querySelector("b").textContent = s.name;
        suggestion.querySelector("span").textContent = s.source === "track"
          ? `(from its track: a person labeled another frame of this track so; the teachers give it ${conf})`
          : `(${conf}${agree})`;
        suggestion.dataset.label = s.index;
        if (s.alternative) {
          const alt = document.createElement("p");
          alt.className = "alternative";
          alt.innerHTML = "<kbd>A</kbd> or <b></b>";
          alt.querySelector("b").textContent = s.alternative.name;
          suggestion.appendChild(alt);
        }
      } else {
        suggestion.textContent = "No suggestion shown: pick the class yourself.";
        suggestion.dataset.label = "";
      }
      tiers.innerHTML = "";
      for (const t of item.tiers || []) {
        const p = document.createElement("p"); p.textContent = tierLine(t); tiers.appendChild(p);
      }
      if (item.robot) {
        const p = document.createElement("p");
        p.textContent = `robot ${item.robot.tier}: ${item.robot.name} ${(100 * item.robot.confidence).toFixed(0)}%`;
        tiers.appendChild(p);
      }
      for (const b of document.querySelectorAll("#classes button")) {
        b.classList.toggle("suggested", item.suggestion !== null && Number(b.dataset.label) === item.suggestion.index);
        const alt = item.suggestion && item.suggestion.alternative;
        b.classList.toggle("alternative", Boolean(alt) && Number(b.dataset.label) === alt.index);
        b.classList.toggle("answered", mode === "history" && item.answer !== null && Number(b.dataset.label) === item.answer);
      }
      if (mode === "history") {
        text(mark, `Your answer (${cursor + 1} back): ${item.answer_name || (item.status === "failed" ? "unusable" : "?")}. ` +
          "U: undo and relabel · →: forward");
      } else {
        text(mark, "");
      }
    }

    function render() {
      if (cursor >= 0 && history[cursor]) show(history[cursor], "history"); else { cursor = -1; show(current, "current"); }
    }

    async function run(action) {
      if (busy) return;
      busy = true;
      try { await action(); } catch (e) { setStatus(e.message, true); } finally { busy = false; }
    }

    async function answer(action, label) {
      if (!current || cursor !== -1) return;
      const seconds = Math.max(0, (performance.now() - shownAt) / 1000);
      const body = { task_id: current.task_id, action, seconds: Number(seconds.toFixed(3)) };
      if (action === "label") body.label = label;
      let data;
      try {
        data = await api("POST", "/api/answer", body);
      } catch (e) {
        if (e.status !== 409) throw e;
        // the lease ran out and someone else has the frame (or it was answered elsewhere): move on
        const next = await api("POST", "/api/next");
        current = next.item;
        renderCounters(next.counters);
        render();
        setStatus(e.message + " — showing the next frame", true);
        return;
      }
      history.unshift(data.done);
      const what = data.done.answer_name || "unusable";
      setStatus(`saved task ${data.done.task_id}: ${what} (${seconds.toFixed(1)} s)`);
      current = data.item;
      renderCounters(data.counters);
      render();
    }

    async function undo() {
      const target = cursor >= 0 ? history[cursor] : null;
      const data = await api("POST", "/api/undo", target ? { task_id: target.task_id } : {});
      const reopened = data.reopened[0];
      history = history.filter(h => h.task_id !== reopened.task_id);
      if (current && current.task_id !== reopened.task_id) {
        // the frame in hand stays leased to this session and comes back after the undone one
      }
      current = reopened;
      cursor = -1;
      setStatus(`undone: task ${reopened.task_id} is back in your hands`);
      renderCounters(data.counters);
      render();
    }

    async function skip() {
      if (!current) return;
      const data = await api("POST", "/api/skip", { task_id: current.task_id });
      setStatus(`skipped task ${current.task_id}: it goes back to the queue`);
      current = data.item;
      renderCounters(data.counters);
      render();
    }

    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.target && ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName)) return;
      const key = event.key.toLowerCase();
      const index = KEYS.indexOf(key);
      if (index >= 0) {
        event.preventDefault();
        if (cursor >= 0) { setStatus("this is a previous answer: press U to undo it and relabel", true); return; }
        run(() => answer("label", index));
      } else if (key === "enter") {
        event.preventDefault();
        if (cursor >= 0) return;
        if (!current || !current.suggestion) { setStatus("no suggestion to accept: pick a class", true); return; }
        run(() => answer("accept"));
      } else if (key === "a") {
        event.preventDefault();
        if (cursor >= 0) return;
        const alt = current && current.suggestion && current.suggestion.alternative;
        if (!alt) { setStatus("no class shown beside the suggestion: pick a class", true); return; }
        run(() => answer("label", alt.index));
      } else if (key === "x") {
        event.preventDefault();
        if (cursor < 0) run(() => answer("unusable"));
      } else if (key === "u") {
        event.preventDefault();
        run(undo);
      } else if (key === "arrowleft") {
        event.preventDefault();
        if (cursor + 1 < history.length) { cursor += 1; render(); }
      } else if (key === "arrowright") {
        event.preventDefault();
        if (cursor >= 0) { cursor -= 1; render(); } else { run(skip); }
      }
    });

    for (const b of document.querySelectorAll("#classes button")) {
      b.addEventListener("click", () => { if (cursor < 0) run(() => answer("label", Number(b.dataset.label))); });
    }

    run(async () => {
      const past = await api("GET", "/api/history?limit=50");
      history = past.history;
      const data = await api("POST", "/api/next");
      current = data.item;
      renderCounters(data.counters);
      render();
      document.body.dataset.ready = "1";
    });
  }

  // ------------------------------------------------------------------ audit and confirm grids
  function auditGrid() {
    const grid = document.getElementById("grid");
    const API = grid.dataset.api;      // /api/audit or /api/confirm
    const NOUN = grid.dataset.noun;    // what a cell is, in the status line
    const empty = document.getElementById("empty");
    const COLUMNS = 6;
    let cells = [];            // {item, label (null: unusable), changed}
    let focus = 0;
    let shownAt = performance.now();
    let busy = false;

    function paint() {
      grid.innerHTML = "";
      empty.hidden = cells.length > 0;
      cells.forEach((cell, i) => {
        const div = document.createElement("div");
        div.className = "cell" + (i === focus ? " focus" : "") + (cell.changed ? " changed" : "") +
          (cell.label === null ? " unusable" : "");
        div.dataset.task = cell.item.task_id;
        div.dataset.label = cell.label === null ? "x" : cell.label;
        const img = document.createElement("img");
        img.src = cell.item.image_url; img.alt = "frame"; img.width = 160; img.height = 160;
        const caption = document.createElement("p");
        const s = cell.item.suggestion;
        const auto = s ? s.name + (s.source === "track" ? " (its track)" : "") : "?";
        caption.textContent = cell.label === null ? "unusable" :
          (cell.changed ? `${auto} → ${labelName(cell.label)}` : `${auto}`);
        div.appendChild(img); div.appendChild(caption);
        div.addEventListener("click", () => { focus = i; paint(); });
        grid.appendChild(div);
      });
      document.body.dataset.cells = cells.length;
    }

    const NAMES = JSON.parse(grid.dataset.labels);
    function labelName(i) { return NAMES[i]; }

    async function load() {
      const data = await api("POST", `${API}/batch`);
      const heading = document.getElementById("grid-class");
      if (heading) heading.textContent = data.class || (data.items.length ? "several classes" : "nothing waiting");
      cells = data.items.map(item => ({ item, label: item.suggestion ? item.suggestion.index : null, changed: false }));
      focus = 0;
      shownAt = performance.now();
      renderCounters(data.counters);
      paint();
      document.body.dataset.ready = "1";
    }

    async function submit() {
      if (!cells.length) return;
      const seconds = (performance.now() - shownAt) / 1000;
      const body = { seconds: Number(seconds.toFixed(3)), answers: cells.map(c => ({ task_id: c.item.task_id, label: c.label })) };
      const data = await api("POST", `${API}/submit`, body);
      const corrected = cells.filter(c => c.changed).length;
      setStatus(`submitted ${data.submitted.length} ${NOUN} (${corrected} corrected) in ${seconds.toFixed(1)} s`);
      await load();
    }

    async function undoPage() {
      const data = await api("POST", `${API}/undo`);
      setStatus(`undone: ${data.reopened.length} ${NOUN} are back in your grid`);
      await load();
    }

    async function run(action) {
      if (busy) return;
      busy = true;
      try { await action(); } catch (e) { setStatus(e.message, true); } finally { busy = false; }
    }

    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const key = event.key.toLowerCase();
      const index = KEYS.indexOf(key);
      const cell = cells[focus];
      if (index >= 0 && cell) {
        event.preventDefault();
        cell.label = index;
        cell.changed = !cell.item.suggestion || index !== cell.item.suggestion.index;
        focus = Math.min(cells.length - 1, focus + 1);
        paint();
      } else if (key === "x" && cell) {
        event.preventDefault();
        cell.label = null; cell.changed = true; paint();
      } else if (key === "u") {
        event.preventDefault();
        if (cell && cell.changed) {
          cell.label = cell.item.suggestion ? cell.item.suggestion.index : null; cell.changed = false; paint();
        } else {
          run(undoPage);
        }
      } else if (key === "enter") {
        event.preventDefault();
        run(submit);
      } else if (key.startsWith("arrow") && cells.length) {
        event.preventDefault();
        const step = { arrowleft: -1, arrowright: 1, arrowup: -COLUMNS, arrowdown: COLUMNS }[key];
        focus = Math.max(0, Math.min(cells.length - 1, focus + step));
        paint();
      }
    });
    document.getElementById("submit-grid").addEventListener("click", () => run(submit));
    run(load);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "label") labeler();
    if (page === "audit" || page === "confirm") auditGrid();
    if (document.getElementById("counters")) {
      if (page !== "label" && page !== "audit" && page !== "confirm") pollCounters();
      setInterval(pollCounters, 5000);
    }
  });
})();
