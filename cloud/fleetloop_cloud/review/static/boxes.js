// FleetLoop review page, box view: check, adjust, draw and delete boxes on a canvas. Vanilla JS, no build.
"use strict";

(function () {
  const HANDLE = 7;            // canvas pixels around a corner that grab it
  const MIN_SIZE = 2;          // frame pixels: smaller drags are clicks, not boxes
  const COLOURS = ["#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
                   "#bcf60c", "#fabebe"];

  function csrf() { return document.querySelector('meta[name="csrf-token"]').content; }

  async function api(path, body) {
    const response = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf(), "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (!response.ok) {
      if (response.status === 401) { window.location = "/login?next=/boxes"; }
      const error = new Error(data.error || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function boxer() {
    const canvas = document.getElementById("box-canvas");
    const ctx = canvas.getContext("2d");
    const status = document.getElementById("status");
    const meta = document.getElementById("box-meta");
    const selectedText = document.getElementById("box-selected");
    const classButtons = Array.from(document.querySelectorAll("#box-classes button"));
    let item = null, boxes = [], selected = -1, changed = false, shownAt = 0, scale = 1, busy = false;
    let currentClass = 0, drag = null;
    const image = new Image();

    function setStatus(message, isError) {
      status.textContent = message;
      status.classList.toggle("error", !!isError);
    }

    function publish() {
      // what the page shows, for people reading the DOM (and the browser tests)
      canvas.dataset.boxes = JSON.stringify(boxes.map(b => [b.x0, b.y0, b.x1, b.y1, b.cls].map(v => Math.round(v * 100) / 100)));
      canvas.dataset.selected = String(selected);
      canvas.dataset.changed = changed ? "1" : "0";
      const b = boxes[selected];
      const names = item ? item.classes : [];
      selectedText.textContent = b ? `box ${selected + 1} of ${boxes.length}: ${names[b.cls] || b.cls}`
        : `${boxes.length} box(es); no box selected`;
      classButtons.forEach(button => button.classList.toggle("current", Number(button.dataset.class) === currentClass));
    }

    function paint() {
      ctx.imageSmoothingEnabled = false;
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      if (item && image.complete && image.naturalWidth) {
        ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
      }
      boxes.forEach((b, i) => {
        const colour = COLOURS[b.cls % COLOURS.length];
        ctx.strokeStyle = colour;
        ctx.lineWidth = i === selected ? 3 : 1.5;
        ctx.strokeRect(b.x0 * scale, b.y0 * scale, (b.x1 - b.x0) * scale, (b.y1 - b.y0) * scale);
        ctx.fillStyle = colour;
        ctx.font = "12px system-ui, sans-serif";
        ctx.fillText(String(b.cls), b.x0 * scale + 3, b.y0 * scale + 13);
        if (i === selected) {
          for (const [x, y] of corners(b)) ctx.fillRect(x * scale - 3, y * scale - 3, 6, 6);
        }
      });
      if (drag && drag.mode === "draw") {
        ctx.strokeStyle = "#ffffff";
        ctx.setLineDash([4, 3]);
        const r = normalised(drag.start, drag.now);
        ctx.strokeRect(r.x0 * scale, r.y0 * scale, (r.x1 - r.x0) * scale, (r.y1 - r.y0) * scale);
        ctx.setLineDash([]);
      }
      publish();
    }

    function corners(b) { return [[b.x0, b.y0], [b.x1, b.y0], [b.x0, b.y1], [b.x1, b.y1]]; }

    function normalised(a, b) {
      return { x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y), x1: Math.max(a.x, b.x), y1: Math.max(a.y, b.y) };
    }

    function clamp(p) {
      return { x: Math.min(Math.max(p.x, 0), item.width), y: Math.min(Math.max(p.y, 0), item.height) };
    }

    function point(event) {
      const rect = canvas.getBoundingClientRect();
      return clamp({ x: (event.clientX - rect.left) * (canvas.width / rect.width) / scale,
                     y: (event.clientY - rect.top) * (canvas.height / rect.height) / scale });
    }

    function show(next) {
      item = next;
      drag = null;
      const empty = document.getElementById("box-empty");
      if (!item) {
        boxes = []; selected = -1;
        empty.hidden = false;
        canvas.hidden = true;
        document.body.dataset.task = "";
        meta.textContent = "";
        publish();
        return;
      }
      empty.hidden = true;
      canvas.hidden = false;
      scale = 512 / Math.max(item.width, item.height);
      canvas.width = Math.round(item.width * scale);
      canvas.height = Math.round(item.height * scale);
      boxes = (item.suggestion || []).map(r => ({ x0: r[0], y0: r[1], x1: r[2], y1: r[3], cls: r[4] }));
      selected = boxes.length ? 0 : -1;
      changed = false;
      meta.textContent = `${item.purpose} · ${item.robot_id} · ${item.site} · ${item.width}x${item.height} · ` +
        (item.suggestion ? `${boxes.length} suggested box(es)` : "no suggestion: draw every box");
      image.onload = () => {
        shownAt = performance.now();
        paint();
        document.body.dataset.task = String(item.task_id);
        canvas.focus();
      };
      const url = new URL(item.frame_url, window.location.href).href;
      if (image.src === url && image.complete) image.onload();    // the same frame again (a skip came back)
      else image.src = url;
    }

    async function run(action) {
      if (busy) return;
      busy = true;
      try { await action(); } catch (error) {
        setStatus(error.message, true);
        if (error.status === 409) { show((await api("/api/boxes/next")).item); }
      } finally { busy = false; }
    }

    async function submit() {
      if (!item) return;
      const seconds = (performance.now() - shownAt) / 1000;
      const accept = !changed && item.suggestion !== null;
      const body = { task_id: item.task_id, action: accept ? "accept" : "submit", seconds,
                     boxes: accept ? [] : boxes.map(b => [b.x0, b.y0, b.x1, b.y1, b.cls]) };
      const data = await api("/api/boxes/answer", body);
      const done = data.done;
      setStatus(`task ${done.task_id}: ${done.answer.length} box(es) saved` +
        (done.edits ? ` (kept ${done.edits.kept}, adjusted ${done.edits.adjusted}, drawn ${done.edits.drawn}, ` +
          `deleted ${done.edits.deleted}, class changed ${done.edits.reclassed})` : ""));
      show(data.item);
    }

    async function skip() {
      if (!item) return;
      const data = await api("/api/boxes/skip", { task_id: item.task_id });
      setStatus(`task ${item.task_id} skipped`);
      show(data.item);
    }

    function hit(p) {
      // a corner of the selected box first, then the smallest box under the pointer
      const b = boxes[selected];
      if (b) {
        const names = ["x0y0", "x1y0", "x0y1", "x1y1"];
        const found = corners(b).findIndex(([x, y]) => Math.abs(x - p.x) * scale <= HANDLE && Math.abs(y - p.y) * scale <= HANDLE);
        if (found >= 0) return { mode: "resize", index: selected, corner: names[found] };
      }
      let best = -1, area = Infinity;
      boxes.forEach((c, i) => {
        if (p.x >= c.x0 && p.x <= c.x1 && p.y >= c.y0 && p.y <= c.y1) {
          const a = (c.x1 - c.x0) * (c.y1 - c.y0);
          if (a < area) { area = a; best = i; }
        }
      });
      return best >= 0 ? { mode: "move", index: best } : { mode: "draw" };
    }

    canvas.addEventListener("mousedown", event => {
      if (!item) return;
      event.preventDefault();
      canvas.focus();
      const p = point(event);
      const target = hit(p);
      drag = { ...target, start: p, now: p, origin: target.index !== undefined ? { ...boxes[target.index] } : null };
      if (target.index !== undefined) selected = target.index;
      paint();
    });

    window.addEventListener("mousemove", event => {
      if (!drag) return;
      drag.now = point(event);
      const dx = drag.now.x - drag.start.x, dy = drag.now.y - drag.start.y;
      if (drag.mode === "move") {
        const o = drag.origin, w = o.x1 - o.x0, h = o.y1 - o.y0;
        const x0 = Math.min(Math.max(o.x0 + dx, 0), item.width - w), y0 = Math.min(Math.max(o.y0 + dy, 0), item.height - h);
        Object.assign(boxes[drag.index], { x0, y0, x1: x0 + w, y1: y0 + h });
        if (dx || dy) changed = true;
      } else if (drag.mode === "resize") {
        const b = boxes[drag.index];
        if (drag.corner.includes("x0")) b.x0 = drag.now.x; else b.x1 = drag.now.x;
        if (drag.corner.includes("y0")) b.y0 = drag.now.y; else b.y1 = drag.now.y;
        changed = true;
      }
      paint();
    });

    window.addEventListener("mouseup", () => {
      if (!drag) return;
      if (drag.mode === "draw") {
        const r = normalised(drag.start, drag.now);
        if (r.x1 - r.x0 >= MIN_SIZE && r.y1 - r.y0 >= MIN_SIZE) {
          boxes.push({ ...r, cls: currentClass });
          selected = boxes.length - 1;
          changed = true;
        } else {
          selected = -1;
        }
      } else if (drag.mode === "resize") {
        const b = boxes[drag.index];
        Object.assign(b, normalised({ x: b.x0, y: b.y0 }, { x: b.x1, y: b.y1 }));
        if (b.x1 - b.x0 < MIN_SIZE || b.y1 - b.y0 < MIN_SIZE) { boxes.splice(drag.index, 1); selected = -1; }
      }
      drag = null;
      paint();
    });

    classButtons.forEach(button => button.addEventListener("click", () => {
      currentClass = Number(button.dataset.class);
      if (boxes[selected]) { boxes[selected].cls = currentClass; changed = true; }
      paint();
    }));

    document.addEventListener("keydown", event => {
      if (!item || event.target.tagName === "INPUT") return;
      const key = event.key.toLowerCase();
      if (key === "enter") {
        event.preventDefault();
        run(submit);
      } else if (key === "delete" || key === "backspace") {
        event.preventDefault();
        if (boxes[selected]) { boxes.splice(selected, 1); selected = -1; changed = true; paint(); }
      } else if (/^[0-9]$/.test(key) && Number(key) < item.classes.length) {
        event.preventDefault();
        currentClass = Number(key);
        if (boxes[selected]) { boxes[selected].cls = currentClass; changed = true; }
        paint();
      } else if (key === "tab") {
        event.preventDefault();
        if (boxes.length) { selected = (selected + 1) % boxes.length; paint(); }
      } else if (key === "s") {
        event.preventDefault();
        run(skip);
      } else if (key === "escape") {
        selected = -1; paint();
      }
    });

    run(async () => {
      const data = await api("/api/boxes/next");
      document.body.dataset.ready = "1";
      show(data.item);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.page === "boxes" && document.getElementById("boxer").dataset.detectors === "1") boxer();
  });
})();
