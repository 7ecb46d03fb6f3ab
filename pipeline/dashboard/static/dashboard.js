// The launcher page: forms posted as JSON, the run list polled every 2 s, loss curves drawn as inline SVG.
"use strict";

(function () {
  const POLL_MS = 2000;
  const cfg = window.DASHBOARD || {};
  const $ = (selector, root) => (root || document).querySelector(selector);
  const runsBox = $("#runs");
  const cards = new Map();    // run id -> {el, detailKey, detail}
  const picked = new Set();   // run ids ticked for the compare view
  let experiments = [];

  // Links to the MLflow UI: when the page is reached by another name than 127.0.0.1, use that name.
  function mlflowBase() {
    const base = (cfg.mlflowUrl || "http://127.0.0.1:5000").replace(/\/$/, "");
    try {
      const url = new URL(base);
      const local = ["127.0.0.1", "localhost", "[::1]"];
      if (local.includes(url.hostname) && !local.includes(location.hostname)) url.hostname = location.hostname;
      return url.origin;
    } catch (e) {
      return base;
    }
  }
  // MLflow 3's UI shows its GenAI views unless the URL asks for model training
  const VIEW = "workflowType=machine_learning";
  const runUrl = (run) => `${mlflowBase()}/#/experiments/${run.experiment_id}/runs/${run.run_id}?${VIEW}`;
  function compareUrl(runs) {
    const ids = encodeURIComponent(JSON.stringify(runs.map((r) => r.run_id)));
    const exps = encodeURIComponent(JSON.stringify([...new Set(runs.map((r) => r.experiment_id))].sort()));
    return `${mlflowBase()}/#/compare-runs?runs=${ids}&experiments=${exps}&${VIEW}`;
  }
  $("#mlflow-link").href = `${mlflowBase()}/#/experiments?${VIEW}`;

  // ---- forms ------------------------------------------------------------------------------------------------

  function formSettings(form) {
    const values = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.value.trim() === "") continue;
      const kind = el.dataset.kind;
      if (!kind) continue;
      const raw = el.value.trim();
      if (kind === "int" || kind === "float") {
        const n = Number(raw);
        values[el.name] = Number.isFinite(n) ? n : raw;  // the server names what does not parse
      } else if (kind === "bool") {
        values[el.name] = raw === "true";
      } else {
        values[el.name] = raw;
      }
    }
    if (values.corpus === cfg.pathChoice) {
      values.corpus = values.corpus_path || "";
    }
    delete values.corpus_path;
    return values;
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {error: `HTTP ${response.status}`}; }
    return {ok: response.ok, status: response.status, data};
  }

  function bindForm(form, url, body, errorBox, okBox, done) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      errorBox.textContent = "";
      okBox.textContent = "";
      try {
        const result = await postJson(url, body(form));
        if (result.ok) {
          okBox.textContent = done(result.data);
          poll(true);
        } else {
          errorBox.textContent = result.data.error || `HTTP ${result.status}`;
        }
      } catch (e) {
        errorBox.textContent = `the dashboard did not answer: ${e.message}`;
      } finally {
        button.disabled = false;
      }
    });
  }

  const trainForm = $("#train-form");
  const corpusSelect = $("#corpus-select");
  corpusSelect.addEventListener("change", () => {
    $("#corpus-path-label").classList.toggle("hidden", corpusSelect.value !== cfg.pathChoice);
  });
  bindForm(trainForm, "/api/runs", formSettings, $("#train-error"), $("#train-ok"),
    (data) => `started ${data.name} (pid ${data.pid})`);

  const sweepForm = $("#sweep-form");
  if (sweepForm) {
    const select = $("#sweep-select");
    const describe = () => {
      const option = select.selectedOptions[0];
      $("#sweep-description").textContent = option ? option.dataset.description : "";
    };
    select.addEventListener("change", describe);
    describe();
    bindForm(sweepForm, "/api/sweeps",
      (form) => ({name: form.elements.name.value, workers: Number(form.elements.workers.value || 1)}),
      $("#sweep-error"), $("#sweep-ok"), (data) => `started sweep ${data.sweep} (pid ${data.pid})`);
  }

  // ---- the chart --------------------------------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  function svgEl(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }
  // tick labels with as many decimals as the spacing between ticks needs (10.62, 10.71, ... not 10.6, 10.7)
  const fmt = (v, spacing) => v.toFixed(Math.min(4, Math.max(0, Math.ceil(-Math.log10(spacing)) + 1)));

  function drawChart(svg, curves) {
    const W = 360, H = 170, left = 38, right = 10, top = 10, bottom = 24;
    const train = (curves && curves.train_loss) || [];
    const val = (curves && curves.val_loss) || [];
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.dataset.points = String(train.length);
    svg.dataset.valPoints = String(val.length);
    const all = train.concat(val).filter((p) => Number.isFinite(p[1]));
    if (all.length === 0) {
      svg.append(svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"},
        "waiting for the first loss points…"));
      return;
    }
    let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05;
    y0 -= pad; y1 += pad;
    const sx = (x) => left + ((x - x0) / (x1 - x0)) * (W - left - right);
    const sy = (y) => top + (1 - (y - y0) / (y1 - y0)) * (H - top - bottom);
    for (let i = 0; i <= 3; i++) {  // horizontal grid with loss labels
      const y = y0 + ((y1 - y0) * i) / 3;
      svg.append(svgEl("line", {x1: left, x2: W - right, y1: sy(y), y2: sy(y), class: "grid"}));
      svg.append(svgEl("text", {x: left - 4, y: sy(y) + 3, "text-anchor": "end", class: "tick"}, fmt(y, (y1 - y0) / 3)));
    }
    svg.append(svgEl("text", {x: left, y: H - 6, class: "tick"}, `step ${Math.round(x0)}`));
    svg.append(svgEl("text", {x: W - right, y: H - 6, "text-anchor": "end", class: "tick"}, `${Math.round(x1)}`));
    const line = (points, cls) => {
      const pts = points.filter((p) => Number.isFinite(p[1])).map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
      if (pts.length) svg.append(svgEl("polyline", {points: pts.join(" "), class: cls}));
    };
    line(train, "train");
    line(val, "val");
    if (val.length <= 40) {
      for (const p of val) {
        if (Number.isFinite(p[1])) svg.append(svgEl("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.2, class: "val"}));
      }
    }
  }

  // ---- run cards --------------------------------------------------------------------------------------------

  function cardTemplate() {
    const el = document.createElement("article");
    el.className = "card";
    el.innerHTML = `
      <header>
        <input type="checkbox" class="pick" title="tick to compare in MLflow">
        <h3 class="run-name"></h3>
        <span class="status"></span>
        <span class="diagnosis"></span>
      </header>
      <div class="meta"></div>
      <div class="numbers"></div>
      <svg class="chart" role="img" aria-label="loss curve"></svg>
      <div class="legend"><span class="key train"></span>train_loss <span class="key val"></span>val_loss</div>
      <div class="sample-box"><span class="sample-step"></span><pre class="sample"></pre></div>
      <p class="run-error"></p>
      <p class="run-note"></p>
      <section class="inspect-box" hidden></section>
      <footer>
        <button type="button" class="stop">Stop</button>
        <button type="button" class="resume" title="continue from its last checkpoint">Resume</button>
        <span class="longer-box"><input class="longer-steps" type="number" min="1" placeholder="max steps"
            aria-label="new budget in steps">
          <button type="button" class="longer" title="resume with a larger --max-steps: the learning rate is re-planned for it">Train longer</button></span>
        <span class="register-box"><input class="register-name" placeholder="model name" aria-label="model name">
          <button type="button" class="register" title="register the run's model in the MLflow Model Registry">Register</button></span>
        <button type="button" class="inspect" title="attention of every head, head scores and the logit lens">Inspect</button>
        <a class="run-link" target="_blank" rel="noopener">MLflow run ↗</a>
        <a class="compare-link" target="_blank" rel="noopener">Compare ↗</a>
        <span class="action-result"></span>
      </footer>`;
    return el;
  }

  function number(v, digits) {
    if (v === null || v === undefined || !Number.isFinite(v)) return "–";
    return v.toLocaleString(undefined, {maximumFractionDigits: digits});
  }

  function updateCard(card, run, allRuns) {
    const el = card.el;
    el.dataset.runId = run.run_id;
    el.dataset.status = run.status;
    el.className = `card status-${run.status}`;
    $(".run-name", el).textContent = run.name;
    $(".status", el).textContent = run.process && run.process.stopping ? "STOPPING" : run.status;
    const diag = $(".diagnosis", el);
    diag.textContent = run.diagnosis || "";
    diag.title = run.diagnosis_detail || "";
    diag.hidden = !run.diagnosis;
    const bits = [run.experiment, run.config, run.corpus, run.lr ? `lr ${run.lr}` : ""];
    if (run.sweep) bits.push(run.role === "sweep" ? `sweep ${run.sweep} (parent)` : `sweep ${run.sweep}`);
    if (run.init_from) bits.push(`from ${run.init_from}`);
    $(".meta", el).textContent = bits.filter(Boolean).join(" · ");
    const source = allRuns.find((r) => r.run_id === run.init_from_run);
    if (source) {  // the run it started from, when listed here: a link to it in MLflow
      const link = document.createElement("a");
      link.href = runUrl(source); link.target = "_blank"; link.rel = "noopener";
      link.textContent = ` ↗ ${source.name}`;
      $(".meta", el).append(link);
    }
    const m = run.metrics || {};
    const step = card.detail && card.detail.last_step;
    $(".numbers", el).textContent = [
      step !== null && step !== undefined ? `step ${step}${run.total_steps ? " / " + run.total_steps : ""}` : "",
      `train ${number(m.train_loss, 3)}`, `val ${number(m.val_loss, 3)}`,
      `${number(m.tokens_per_sec, 0)} tokens/s`,
    ].filter(Boolean).join("  ·  ");
    const pick = $(".pick", el);
    pick.checked = picked.has(run.run_id);
    pick.onchange = () => { pick.checked ? picked.add(run.run_id) : picked.delete(run.run_id); updateCompare(allRuns); };
    $(".run-link", el).href = runUrl(run);
    // compare with the ticked runs, else with the other runs of its experiment shown here (up to 10)
    const ticked = allRuns.filter((r) => picked.has(r.run_id) && r.run_id !== run.run_id);
    const others = ticked.length ? ticked
      : allRuns.filter((r) => r.experiment_id === run.experiment_id && r.run_id !== run.run_id && r.role !== "sweep").slice(0, 9);
    $(".compare-link", el).href = compareUrl([run, ...others]);
    const stop = $(".stop", el);
    stop.hidden = !run.stoppable;
    stop.onclick = () => act(el, `/api/runs/${run.run_id}/stop`, "stopping: it finishes its step and saves a checkpoint");
    const resume = $(".resume", el);
    resume.hidden = !(run.status === "KILLED" && !(run.process && run.process.running) && run.role !== "sweep");
    resume.onclick = () => act(el, `/api/runs/${run.run_id}/resume`, "resuming");
    $(".longer-box", el).hidden = !(["KILLED", "FINISHED"].includes(run.status)
      && !(run.process && run.process.running) && run.role !== "sweep");
    $(".longer", el).onclick = () => act(el, `/api/runs/${run.run_id}/resume`, "training longer",
      {max_steps: Number($(".longer-steps", el).value)});
    const inspect = $(".inspect", el);
    inspect.hidden = !["FINISHED", "KILLED"].includes(run.status) || run.role === "sweep";
    inspect.onclick = () => window.LabInspect.toggle($(".inspect-box", el), run.run_id, postJson);
    $(".register-box", el).hidden = !run.model_id;
    $(".register", el).onclick = () => {
      const name = $(".register-name", el).value.trim();
      act(el, `/api/runs/${run.run_id}/register`, (data) => `registered as ${data.name} version ${data.version}`,
        {name});
    };
    const problem = run.error || (run.process && run.process.error) || "";
    $(".run-error", el).textContent = problem ? `error: ${problem}` : "";
    const live = run.status === "RUNNING" && run.process && run.process.running ? run.process.last_line : "";
    $(".run-note", el).textContent = live || (run.process && run.process.note) || "";
    if (card.shownStatus !== run.status) {  // a new state: the answer to the last button no longer applies
      if (card.shownStatus !== undefined) $(".action-result", el).textContent = "";
      card.shownStatus = run.status;
    }
    const parent = run.role === "sweep";  // a sweep's parent run logs no curve: its runs have their own cards
    el.classList.toggle("sweep-parent", parent);
    if (parent) {
      $(".numbers", el).textContent = "the sweep's parent run: its runs are listed on their own";
    }
    if (card.detail && !parent) {
      drawChart($(".chart", el), card.detail.curves);
      const sample = card.detail.sample;
      $(".sample", el).textContent = sample ? sample.text : "";
      $(".sample-step", el).textContent = sample ? `sample at step ${sample.step}` : "no sample yet";
    }
  }

  async function act(el, url, message, body) {
    const out = $(".action-result", el);
    for (const b of el.querySelectorAll("footer button")) b.disabled = true;
    const result = await postJson(url, body || {});
    const done = typeof message === "function" ? message(result.data) : message;
    out.textContent = result.ok ? done : result.data.error || `HTTP ${result.status}`;
    out.classList.toggle("bad", !result.ok);
    for (const b of el.querySelectorAll("footer button")) b.disabled = false;
    poll(true);
  }

  function updateCompare(allRuns) {
    const link = $("#compare-selected");
    const runs = allRuns.filter((r) => picked.has(r.run_id));
    link.classList.toggle("disabled", runs.length < 2);
    link.textContent = `Compare selected in MLflow (${runs.length}) ↗`;
    if (runs.length >= 2) link.href = compareUrl(runs); else link.removeAttribute("href");
  }

  function renderSweeps(sweeps) {
    const box = $("#sweeps");
    box.replaceChildren();
    if (!sweeps.length) return;
    const title = document.createElement("h3");
    title.textContent = "Sweeps started here";
    box.append(title);
    for (const s of sweeps) {
      const item = document.createElement("div");
      item.className = "sweep-item";
      item.dataset.id = s.id;
      const state = s.running ? (s.stopping ? "stopping" : "running")
        : s.stop_requested ? "stopped" : s.exit_code === 0 ? "finished"
        : s.exit_code === null ? "ended" : `ended (exit ${s.exit_code})`;
      const head = document.createElement("div");
      head.innerHTML = `<strong></strong> <span class="state"></span> <span class="hint"></span>`;
      head.querySelector("strong").textContent = s.sweep;
      head.querySelector(".state").textContent = state;
      head.querySelector(".hint").textContent = `${s.points} run(s), ${s.workers} worker(s), pid ${s.pid}`;
      item.append(head);
      const tail = document.createElement("pre");
      tail.className = "log-tail";
      tail.textContent = (s.log_tail || []).join("\n");
      item.append(tail);
      if (s.stoppable) {
        const stop = document.createElement("button");
        stop.type = "button";
        stop.className = "stop";
        stop.textContent = "Stop sweep";
        stop.onclick = async () => { stop.disabled = true; await postJson(`/api/sweeps/${s.id}/stop`, {}); poll(true); };
        item.append(stop);
      }
      box.append(item);
    }
  }

  function renderExperiments(list) {
    const select = $("#experiment-filter");
    const key = JSON.stringify(list);
    if (key === JSON.stringify(experiments)) return;
    experiments = list;
    const current = select.value;
    select.replaceChildren(new Option("all", ""));
    for (const e of list) select.append(new Option(e.name, e.id));
    select.value = list.some((e) => e.id === current) ? current : "";
  }
  $("#experiment-filter").addEventListener("change", () => poll(true));

  // ---- polling ----------------------------------------------------------------------------------------------

  let timer = null, busy = false, again = false;

  async function fetchJson(url) {
    const response = await fetch(url, {headers: {Accept: "application/json"}});
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  async function poll(now) {
    if (busy) { again = again || now; return; }
    busy = true;
    clearTimeout(timer);
    try {
      const experiment = $("#experiment-filter").value;
      const data = await fetchJson(`/api/runs?limit=30${experiment ? "&experiment=" + encodeURIComponent(experiment) : ""}`);
      renderExperiments(data.experiments || []);
      renderSweeps(data.sweeps || []);
      const seen = new Set();
      let previous = null;
      for (const run of data.runs) {
        seen.add(run.run_id);
        let card = cards.get(run.run_id);
        if (!card) {
          card = {el: cardTemplate(), detailKey: null, detail: null};
          cards.set(run.run_id, card);
        }
        // keep the cards in the order of the list (newest first)
        const anchor = previous ? previous.nextSibling : runsBox.firstChild;
        if (card.el !== anchor) runsBox.insertBefore(card.el, anchor);
        previous = card.el;
        const key = `${run.status}|${run.end_time}|${run.diagnosis}`;
        if (run.status === "RUNNING" || card.detailKey !== key) {
          try {
            card.detail = await fetchJson(`/api/runs/${run.run_id}`);
            card.detailKey = key;
          } catch (e) { /* next poll */ }
        }
        updateCard(card, run, data.runs);
      }
      for (const [id, card] of cards) {
        if (!seen.has(id)) { card.el.remove(); cards.delete(id); }
      }
      if (!data.runs.length) {
        runsBox.innerHTML = '<p class="hint empty-list">No runs yet: start one with the form.</p>';
      } else {
        const empty = $(".empty-list", runsBox);
        if (empty) empty.remove();
      }
      updateCompare(data.runs);
      $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      $("#updated").classList.remove("bad");
    } catch (e) {
      $("#updated").textContent = `cannot reach the dashboard (${e.message})`;
      $("#updated").classList.add("bad");
    } finally {
      busy = false;
      if (again) { again = false; setTimeout(() => poll(true), 0); }
      else timer = setTimeout(poll, POLL_MS);
    }
  }

  poll(true);
})();
