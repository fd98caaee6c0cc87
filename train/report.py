"""report.html: one self-contained page per run folder, with the curves, the data, the labels and the checks.

    python -m train.report RUN_DIR [RUN_DIR ...] [--out FILE]        (./run.sh report ...)

The loop writes it at the end of every run (and when a run stops on a signal or an abort). The page is
built from the folder's files alone, so a later call rebuilds it with whatever is there by then
(eval_report.json, post_training_report.json), and several folders (DAPT and SFT, or two seeds) can be
overlaid on the same axes. Everything is inline (SVG charts, CSS, no script) and a Content-Security-Policy
forbids any fetch, so the page shows the same offline, from a mail attachment or an artifact store.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import sys
import time
from pathlib import Path

from contract.errors import UserError
from contract.tokens import IGNORE_INDEX
from train.batching import Row, read_jsonl

REPORT_FILE = "report.html"
PREVIEW_FILE = "masking_preview.json"   # the masking preview, kept so a rebuild can show it without the tokenizer
RESULT_FILES = {"eval_report.json": "Evaluation", "post_training_report.json": "Post-training checks"}
PREVIEW_EXAMPLES = 3
WARNINGS_SHOWN = 60   # newest train.log warnings on the page; thousands of NaN skips stay in the log alone
# (metrics key, record kind, chart title, scale for display, unit)
CURVES = (("loss", "train", "Training loss (per step) and validation loss", 1.0, "nats/token"),
          ("lr", "train", "Learning rate", 1.0, ""),
          ("grad_norm", "train", "Gradient norm (before clipping)", 1.0, ""),
          ("tokens_per_s", "train", "Trained tokens per second", 1.0, "supervised tokens/s"),
          ("mfu", "train", "Model FLOPs utilisation", 100.0, "% of the peak (datasheet bf16 on a known GPU, else measured)"))
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 640, 250, 70, 16, 14, 34


class ReportError(UserError):
    """A folder that is not a run folder (no metrics.jsonl)."""


# ------------------------------------------------------------------------------------------ writing

def masking_preview(rows: list[Row], tokenizer, n: int = PREVIEW_EXAMPLES) -> list[dict]:
    """The first n training rows as decoded stretches, each marked supervised (a label) or not."""
    out = []
    for row in rows[:n]:
        supervised = [label != IGNORE_INDEX for label in row.labels]
        segments, start = [], 0
        for i in range(1, len(row.input_ids) + 1):
            if i == len(row.input_ids) or supervised[i] != supervised[start]:
                text = tokenizer.decode(row.input_ids[start:i], skip_special_tokens=False)
                segments.append({"text": text, "supervised": supervised[start]})
                start = i
        out.append({"id": row.row_id, "n_tokens": len(row.input_ids), "n_supervised": sum(supervised),
                    "segments": segments})
    return out


def write_run_report(run_dir: Path, rows: list[Row], tokenizer) -> Path:
    """What the loop calls: keep the masking preview in the folder, then write the page."""
    (run_dir / PREVIEW_FILE).write_text(json.dumps(masking_preview(rows, tokenizer), indent=1), encoding="utf-8")
    return write_report([run_dir])


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    out = out or run_dirs[0] / REPORT_FILE
    page = build_page([load_run(d) for d in run_dirs])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a page
    return out


# ------------------------------------------------------------------------------------------ reading

def load_run(run_dir: Path) -> dict:
    metrics_file = run_dir / "metrics.jsonl"
    if not metrics_file.is_file():
        raise ReportError(f"{metrics_file}: not found; {run_dir} is not a run folder (train.main writes "
                          "metrics.jsonl into its --output-dir)")
    args = _read_json(run_dir / "training_args.json") or {}
    records = read_jsonl(metrics_file)
    # After a --resume the steps between the checkpoint and the interruption are logged twice; the later
    # record is the one that counts.
    by_kind: dict[str, dict[int, dict]] = {"train": {}, "eval": {}}
    for r in records:
        if r.get("kind") in by_kind:
            by_kind[r["kind"]][r["step"]] = r
    log = run_dir / "train.log"
    warnings = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                if " WARN" in line[:30] or " ERROR" in line[:30]] if log.is_file() else []
    return {"dir": run_dir, "args": args,
            "train": [by_kind["train"][s] for s in sorted(by_kind["train"])],
            "eval": [by_kind["eval"][s] for s in sorted(by_kind["eval"])],
            "preview": _read_json(run_dir / PREVIEW_FILE),
            "results": {name: _read_json(run_dir / name) for name in RESULT_FILES},
            "warnings": warnings}


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from e


def run_labels(runs: list[dict]) -> list[str]:
    """Short names for the legend: phase and folder name, the whole path where two would read the same."""
    labels = [f"{r['args'].get('phase', '?')} · {r['dir'].name}" for r in runs]
    return [f"{r['args'].get('phase', '?')} · {r['dir']}" if labels.count(lab) > 1 else lab
            for r, lab in zip(runs, labels)]


# ------------------------------------------------------------------------------------------- charts

def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
    # Whole multiples of the step, so that 0 is exactly 0 and not 1e-17.
    return [k * step for k in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def svg_chart(metric: str, series: list[dict], unit: str) -> str:
    """One chart: every series on the same axes. A series is {label, colour, points: [(x, y)], dashed}."""
    points = [p for s in series for p in s["points"]]
    if not points:
        return '<p class="none">no finite values logged</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - (abs(y_lo) * 0.1 or 1), y_hi + (abs(y_hi) * 0.1 or 1)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = _ticks(y_lo, y_hi)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_ticks = [t for t in _ticks(x_lo, x_hi) if x_lo <= t <= x_hi]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return TOP + (y_hi - y) / (y_hi - y_lo) * plot_h

    parts = [f'<svg class="chart" data-metric="{metric}" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg" role="img">']
    for t in y_ticks:
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        parts.append(f'<line class="grid" y1="{TOP}" y2="{HEIGHT - BOTTOM}" x1="{px(t):.1f}" x2="{px(t):.1f}"/>'
                     f'<text class="tick" x="{px(t):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                     f'{_fmt(t)}</text>')
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>'
                 f'<text class="axis" x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">optimizer step'
                 f'</text><text class="axis" transform="translate(14 {TOP + plot_h / 2}) rotate(-90)" '
                 f'text-anchor="middle">{html.escape(unit)}</text>')
    for s in series:
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s["points"])
        dash = ' stroke-dasharray="6 4"' if s["dashed"] else ""
        parts.append(f'<g class="series" data-run="{html.escape(s["label"])}" data-metric="{s["metric"]}" '
                     f'data-points="{len(s["points"])}"><title>{html.escape(s["label"])}: {s["metric"]}</title>'
                     f'<polyline points="{coords}" fill="none" stroke="{s["colour"]}" stroke-width="1.8"{dash}/>')
        if s["dashed"] or len(s["points"]) <= 2:  # evaluations are few: mark each; a lone point needs a dot
            parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{s["colour"]}"/>'
                         for x, y in s["points"])
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _series(run: dict, kind: str, key: str, scale: float) -> tuple[list[tuple[int, float]], int]:
    """(step, value) points of one metric, and how many non-finite values were left out."""
    values = [(r["step"], r[key]) for r in run[kind] if isinstance(r.get(key), (int, float))]
    finite = [(s, v * scale) for s, v in values if math.isfinite(v)]
    return finite, len(values) - len(finite)


def charts(runs: list[dict], labels: list[str]) -> str:
    out = []
    for key, kind, title, scale, unit in CURVES:
        series, notes = [], []
        for run, label, colour in zip(runs, labels, COLOURS * len(runs)):
            points, dropped = _series(run, kind, key, scale)
            series.append({"label": label, "colour": colour, "points": points, "metric": key, "dashed": False})
            if dropped:
                notes.append(f"{label}: {dropped} non-finite value(s) not drawn (steps the NaN guard skipped)")
            if key == "loss":
                eval_points, _ = _series(run, "eval", "eval_loss", 1.0)
                series.append({"label": label, "colour": colour, "points": eval_points, "metric": "eval_loss",
                               "dashed": True})
        legend = ("solid: training loss of each optimizer step; dashed with dots: validation loss"
                  if key == "loss" else "")
        out.append(f'<section class="curve"><h3>{html.escape(title)}</h3>{svg_chart(key, series, unit)}'
                   + "".join(f'<p class="note">{html.escape(n)}</p>' for n in ([legend] if legend else []) + notes)
                   + "</section>")
    return "".join(out)


# ------------------------------------------------------------------------------------------- tables

def _compact(value, limit: int = 400) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " …"


def key_value_table(obj: dict, depth: int = 0) -> str:
    rows = []
    for k, v in obj.items():
        cell = (key_value_table(v, depth + 1) if isinstance(v, dict) and v and depth < 1
                else html.escape(_compact(v)))
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{cell}</td></tr>")
    return f'<table class="kv">{"".join(rows)}</table>'


def _fmt4(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def summary_table(run: dict) -> str:
    a, result = run["args"], run["args"].get("result") or {}
    resolved = a.get("resolved") or {}
    last = run["train"][-1] if run["train"] else {}
    facts = {"run folder": str(run["dir"]), "phase": a.get("phase"), "model": a.get("model_path"),
             "base adapter": (a.get("lineage") or {}).get("base_adapter"), "finished": a.get("finished"),
             "steps logged": f"{last.get('step', 0)} of {resolved.get('total_steps', '?')}",
             "validation loss before → after": f"{_fmt4(result.get('eval_loss_before'))} → "
                                              f"{_fmt4(result.get('eval_loss_after'))}" if result else None,
             "skipped (non-finite) steps": last.get("skipped_steps"), "wall time (s)": result.get("wall_s"),
             "precision / device / processes": f"{a.get('precision')} / {resolved.get('device')} / "
                                               f"{resolved.get('world_size')}",
             "global batch rows / max length": f"{resolved.get('global_batch_rows')} / {a.get('max_length')}",
             "lr / warm-up / LoRA r, alpha": f"{a.get('lr')} / {a.get('warmup_ratio')} / {a.get('lora_r')}, "
                                             f"{a.get('lora_alpha')}",
             "seed": a.get("seed")}
    return key_value_table({k: v for k, v in facts.items() if v is not None})


def data_table(stats: dict) -> str:
    """training_args.json's data_stats: one column per split, one row per statistic."""
    if not stats:
        return '<p class="none">no data statistics recorded (training_args.json missing)</p>'
    splits = list(stats)
    keys = list(dict.fromkeys(k for s in splits for k in stats[s]))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
    body = "".join(f"<tr><th>{html.escape(k)}</th>"
                   + "".join(f"<td>{html.escape(_compact(stats[s].get(k, '')))}</td>" for s in splits) + "</tr>"
                   for k in keys)
    return f'<table class="grid"><tr><th></th>{head}</tr>{body}</table>'


def preview_html(preview: list[dict] | None, phase: str | None) -> str:
    if preview is None:
        return f'<p class="none">no {PREVIEW_FILE} in the folder (written by the loop at the end of a run)</p>'
    parts = ['<p class="note">Supervised tokens (labels the loss trains on) are <span class="sup">highlighted'
             '</span>; the rest is context only.'
             + (" DAPT trains on every token." if phase == "dapt" else "") + "</p>"]
    for ex in preview:
        text = "".join(f'<span class="sup">{html.escape(s["text"])}</span>' if s["supervised"]
                       else html.escape(s["text"]) for s in ex["segments"])
        parts.append(f'<div class="example"><div class="head">{html.escape(str(ex["id"]))}: {ex["n_tokens"]} tokens, '
                     f'{ex["n_supervised"]} supervised</div><pre>{text}</pre></div>')
    return "".join(parts)


def results_html(name: str, result) -> str:
    if result is None:
        return f'<p class="none">no {name} in the folder yet; rebuild with ./run.sh report once it exists</p>'
    parts = []
    if isinstance(result, dict) and isinstance(result.get("checks"), list):
        rows = "".join(f'<tr class="{"pass" if c.get("passed") else "fail"}"><th>{html.escape(str(c.get("name")))}</th>'
                       f'<td>{"PASS" if c.get("passed") else "FAIL"}</td>'
                       f'<td>{html.escape(_compact(c.get("detail")))}</td></tr>' for c in result["checks"])
        parts.append(f'<table class="grid checks">{rows}</table>')
        result = {k: v for k, v in result.items() if k != "checks"}
    parts.append(key_value_table(result) if isinstance(result, dict) else f"<pre>{html.escape(_compact(result))}</pre>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------- page

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;margin-top:32px}h3{font-size:15px;margin:12px 0 4px}
.curves{display:flex;flex-wrap:wrap;gap:8px 24px}.legend span{display:inline-block;margin-right:18px}
.swatch{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}
svg.chart{background:#fff}line.grid{stroke:#e4e4e4}.frame{fill:none;stroke:#999}
.tick,.axis{font-size:11px;fill:#555}.note,.none{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}table.kv th{background:#f6f6f6;font-weight:600}tr.pass td:nth-child(2){color:#1a7f37}
tr.fail td:nth-child(2){color:#c62828;font-weight:700}
.example{margin:8px 0}.example .head{font-size:12px;color:#555}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;border:1px solid #e4e4e4;padding:8px;
max-height:360px;overflow:auto;font-size:12px}.sup{background:#c8f7c5;color:#0b4d0b}
pre.log{max-height:240px}
"""


def build_page(runs: list[dict]) -> str:
    labels = run_labels(runs)
    title = "Run report: " + ", ".join(labels)
    legend = "".join(f'<span><span class="swatch" style="background:{c}"></span>{html.escape(lab)}</span>'
                     for lab, c in zip(labels, COLOURS * len(runs)))
    sections = []
    for run, label in zip(runs, labels):
        a = run["args"]
        results = "".join(f"<h3>{html.escape(heading)} ({name})</h3>{results_html(name, run['results'][name])}"
                          for name, heading in RESULT_FILES.items())
        shown = run["warnings"][-WARNINGS_SHOWN:]
        warnings = ((f'<p class="note">the last {len(shown)} of {len(run["warnings"])}</p>'
                     if len(shown) < len(run["warnings"]) else "")
                    + f'<pre class="log">{html.escape(chr(10).join(shown))}</pre>' if shown
                    else '<p class="none">none</p>')
        sections.append(
            f"<h2>{html.escape(label)}</h2>{summary_table(run)}"
            f"<h3>Data statistics</h3>{data_table(a.get('data_stats') or {})}"
            f"<h3>Masking preview</h3>{preview_html(run['preview'], a.get('phase'))}"
            f"{results}<h3>Warnings and errors from train.log</h3>{warnings}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            # No fetch of any kind: the page must show the same offline as online.
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class=\"note\">Written {time.strftime('%Y-%m-%d %H:%M:%S')} from the "
            f"run folder(s) by train.report; rebuild with ./run.sh report RUN_DIR….</p>"
            f'<div class="legend">{legend}</div><div class="curves">{charts(runs, labels)}</div>'
            + "".join(sections) + "</body></html>\n")


# --------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="train.report", description="Rebuild report.html from run folders; with "
                                 "several folders, overlay their curves on the same axes.")
    ap.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folder(s) (train.main --output-dir)")
    ap.add_argument("--out", type=Path, default=None, help="where to write the page (default: the first "
                    "RUN_DIR's report.html)")
    args = ap.parse_args(argv)
    try:
        out = write_report(args.run_dirs, args.out)
    except UserError as e:
        print(f"report: {e}", file=sys.stderr)
        return 1
    print(f"report written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
