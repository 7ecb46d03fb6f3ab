"""One inspection as a single HTML file: the attention pictures inside it as data, the head scores and the logit
lens as tables, and no script at all. MLflow shows HTML artifacts in a sandboxed frame that runs none, and a
learner may be offline: nothing is fetched from anywhere."""

from __future__ import annotations

import base64
from html import escape

from pipeline.interpret.heads import HeadScores
from pipeline.interpret.probe import ProbeReading

STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:75em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
img{max-width:100%;display:block;margin:.5em 0 1.5em}caption{text-align:left;font-weight:bold}"""


def _score_table(caption: str, grid: list[list[float]]) -> str:
    heads = len(grid[0])
    header = "<tr><th>layer</th>" + "".join(f"<th>head {h}</th>" for h in range(heads)) + "</tr>"
    rows = "".join(
        f"<tr><th>{layer}</th>" + "".join(
            f'<td style="background:rgba(68,1,84,{min(max(score, 0.0), 1.0):.2f});'
            f'color:{"#fff" if score > 0.5 else "#000"}">{score:.3f}</td>' for score in row) + "</tr>"
        for layer, row in enumerate(grid))
    return f"<table><caption>{escape(caption)}</caption>{header}{rows}</table>"


def inspection_html(title: str, prompt: str, layer_pngs: list[bytes], scores: HeadScores,
                    lens: dict[str, float] | None = None, probe: ProbeReading | None = None) -> str:
    """The page: the prompt, one picture per layer, both head scores per head, the lens and the probe when
    measured."""
    pictures = "".join(
        f"<h3>layer {layer}</h3><img alt=\"attention of layer {layer}\" "
        f"src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"
        for layer, png in enumerate(layer_pngs))
    lens_table = ""
    if lens:
        rows = "".join(f"<tr><th>{escape(name)}</th><td>{value:.4f}</td></tr>" for name, value in lens.items())
        lens_table = f"<table><caption>logit lens: val loss read after each block</caption>{rows}</table>"
    if probe:
        rows = "".join(f"<tr><th>{escape(name)}</th><td>{accuracy:.3f}</td><td>{probe.control[name]:.3f}</td>"
                       f"<td>{accuracy - probe.control[name]:+.3f}</td></tr>" for name, accuracy in probe.accuracy.items())
        lens_table += ("<table><caption>linear probe: which frequent token came just before (held-out accuracy)"
                       "</caption><tr><th>stream</th><th>probe</th><th>control (shuffled labels)</th>"
                       f"<th>what the stream adds</th></tr>{rows}</table>")
    chance = f"<p>A head attending evenly to every earlier position scores {scores.chance:.3f} at induction.</p>"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>Prompt: <code>{escape(prompt)}</code>. Row: the token reading; column: the token read; "
            f"brighter: more attention.</p>{pictures}<h2>Heads by role</h2>{chance}"
            f"{_score_table('induction score (repeated random tokens)', scores.induction)}"
            f"{_score_table('previous-token score', scores.prev_token)}{lens_table}</body></html>")
