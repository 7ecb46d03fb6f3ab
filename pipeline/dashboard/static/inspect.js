// The inspect view of a finished or stopped run: a prompt and a checkpoint in; every head's attention drawn on
// canvases from the JSON the dashboard answers (no outside script), then the head scores and the logit lens.
"use strict";

window.LabInspect = (function () {
  const CELL_MAX = 28;   // pixels a token, for short prompts
  const SIDE = 220;      // a head's picture is at most this wide

  function build(box) {
    box.innerHTML = `
      <div class="inspect-form">
        <input class="inspect-prompt" placeholder="prompt (empty: the run's own)" aria-label="prompt to look at">
        <select class="inspect-step" aria-label="checkpoint"><option value="">newest checkpoint</option></select>
        <button type="button" class="inspect-go">Look</button>
      </div>
      <p class="inspect-note"></p>
      <div class="inspect-layers"></div>
      <div class="inspect-scores"></div>`;
  }

  // dark purple (0) to yellow (1), as matplotlib's viridis runs
  function colour(w) {
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    const x = Math.max(0, Math.min(1, w)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const t = x - i;
    const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * t));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function heatmap(weights, tokens, label) {
    const T = tokens.length;
    const cell = Math.max(2, Math.min(CELL_MAX, Math.floor(SIDE / T)));
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = cell * T;
    canvas.className = "inspect-head";
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", label);
    const ctx = canvas.getContext("2d");
    for (let i = 0; i < T; i++) {
      for (let j = 0; j < T; j++) {
        ctx.fillStyle = j > i ? "#f4f5f8" : colour(weights[i][j]);
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    canvas.onmousemove = (event) => {  // which token reads which, under the pointer
      const box = canvas.getBoundingClientRect();
      const i = Math.floor((event.clientY - box.top) / cell), j = Math.floor((event.clientX - box.left) / cell);
      if (i >= 0 && i < T && j >= 0 && j <= i) canvas.title = `${tokens[i]} reads ${tokens[j]}: ${weights[i][j].toFixed(3)}`;
    };
    return canvas;
  }

  function scoreTable(caption, grid) {
    const table = document.createElement("table");
    table.className = "inspect-table";
    const head = `<tr><th>layer</th>${grid[0].map((_, h) => `<th>head ${h}</th>`).join("")}</tr>`;
    const rows = grid.map((row, layer) => `<tr><th>${layer}</th>${row.map((s) =>
      `<td style="background:${colour(s)};color:${s > 0.6 ? "#000" : "#fff"}">${s.toFixed(3)}</td>`).join("")}</tr>`);
    table.innerHTML = `<caption></caption>${head}${rows.join("")}`;
    table.querySelector("caption").textContent = caption;
    return table;
  }

  function render(box, data) {
    const layers = box.querySelector(".inspect-layers");
    layers.replaceChildren();
    data.attention.forEach((heads, layer) => {
      const row = document.createElement("div");
      row.className = "inspect-layer";
      const title = document.createElement("h4");
      title.textContent = `layer ${layer}`;
      row.append(title);
      heads.forEach((weights, head) => {
        const figure = document.createElement("figure");
        const caption = document.createElement("figcaption");
        caption.textContent = `head ${head}`;
        figure.append(heatmap(weights, data.tokens, `layer ${layer} head ${head}`), caption);
        row.append(figure);
      });
      layers.append(row);
    });
    const scores = box.querySelector(".inspect-scores");
    scores.replaceChildren(
      scoreTable(`induction score (chance ${data.chance.toFixed(3)})`, data.induction),
      scoreTable("previous-token score", data.prev_token));
    if (data.lens.length) {
      const lens = document.createElement("p");
      lens.className = "inspect-lens";
      lens.textContent = "logit lens, the prompt's loss read after each block: " +
        data.lens.map((loss, layer) => `${layer}: ${loss.toFixed(3)}`).join(" · ");
      scores.append(lens);
    }
    const select = box.querySelector(".inspect-step");
    const chosen = String(data.step);
    select.replaceChildren(...data.steps.map((step) => new Option(`checkpoint of step ${step}`, String(step))));
    select.value = chosen;
    box.querySelector(".inspect-note").textContent =
      `step ${data.step}, ${data.tokens.length} tokens: row = the token reading, column = the token read; ` +
      "point at a square to see both";
  }

  async function look(box, runId, postJson) {
    const note = box.querySelector(".inspect-note");
    const body = {prompt: box.querySelector(".inspect-prompt").value};
    const step = box.querySelector(".inspect-step").value;
    if (step) body.step = Number(step);
    note.textContent = "looking…";
    note.classList.remove("bad");
    const result = await postJson(`/api/runs/${runId}/inspect`, body);
    if (!result.ok) {
      note.textContent = result.data.error || `HTTP ${result.status}`;
      note.classList.add("bad");
      return;
    }
    render(box, result.data);
  }

  // Open (the first time: build and look at the run's own prompt) or close the view in a card.
  function toggle(box, runId, postJson) {
    if (!box.dataset.built) {
      build(box);
      box.dataset.built = "1";
      box.querySelector(".inspect-go").onclick = () => look(box, runId, postJson);
      box.hidden = false;
      look(box, runId, postJson);
      return;
    }
    box.hidden = !box.hidden;
  }

  return {toggle};
})();
