"""Draw a run's report: plotly figures from ``search.report_data``, written as one HTML page.

The page inlines plotly.js, so it opens without a network. A figure whose data carries a
``note`` and nothing to draw is shown as that note.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from search import report_data

logger = logging.getLogger(__name__)

__all__ = ["build_figures", "format_status", "write_comparison", "write_report"]

REPORT_FILE = "report.html"
STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#2ca02c",
    "WAITING": "#7f7f7f",
}


def _go():
    import plotly.graph_objects as go

    return go


def _layout(fig, title: str, height: int = 420):
    fig.update_layout(title=title, height=height, template="plotly_white", margin={"t": 60, "l": 60, "r": 30, "b": 50})
    return fig


def history_figure(data: dict[str, Any]):
    go = _go()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=data["trials"], y=data["values"], mode="markers", name=data["objective"]))
    fig.add_trace(go.Scatter(x=data["trials"], y=data["best"], mode="lines", name="best so far", line={"shape": "hv"}))
    fig.update_xaxes(title="trial", tick0=0, dtick=max(1, math.ceil(len(data["trials"]) / 10)))
    fig.update_yaxes(title=data["objective"])
    return _layout(fig, f"Optimization history ({data['direction']})")


def importance_figure(data: dict[str, Any]):
    go = _go()
    fig = go.Figure(go.Bar(x=data["importances"][::-1], y=data["params"][::-1], orientation="h"))
    fig.update_xaxes(title="fANOVA importance")
    return _layout(fig, "Parameter importances", height=max(250, 80 + 40 * len(data["params"])))


def parallel_figure(data: dict[str, Any]):
    go = _go()
    dimensions = [{"label": data["objective"], "values": data["values"]}]
    for dim in data["dimensions"]:
        # Parcoords cannot show gaps, so a missing conditional parameter sits below the axis.
        if dim["categorical"]:
            values = [-1 if v is None else v for v in dim["values"]]
            ticks = list(range(len(dim["labels"])))
            labels = list(dim["labels"])
            if -1 in values:
                ticks, labels = [-1, *ticks], ["(unset)", *labels]
            dimensions.append({"label": dim["name"], "values": values, "tickvals": ticks, "ticktext": labels})
        else:
            present = [v for v in dim["values"] if v is not None]
            low = min(present)
            values = [low if v is None else v for v in dim["values"]]
            dimensions.append(_parallel_numeric(dim["name"], values, dim["log"]))
    line = {"color": data["values"], "colorscale": "Viridis", "showscale": True}
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    _layout(fig, "Parallel coordinates (completed trials)", height=460)
    fig.update_layout(margin={"t": 110})
    return fig


def _parallel_numeric(name: str, values: list[float], log: bool) -> dict[str, Any]:
    """Return a parcoords dimension; a log-scaled parameter is placed by log10 with real-value ticks."""
    if not log:
        return {"label": name, "values": values}
    exponents = [math.log10(v) for v in values]
    ticks = list(range(math.floor(min(exponents)), math.ceil(max(exponents)) + 1))
    return {
        "label": name, "values": exponents, "range": [min(exponents), max(exponents)],
        "tickvals": ticks, "ticktext": [f"{10.0 ** tick:g}" for tick in ticks],
    }


def slice_figure(data: dict[str, Any]):
    from plotly.subplots import make_subplots

    go = _go()
    params = data["params"]
    fig = make_subplots(rows=1, cols=len(params), subplot_titles=[p["name"] for p in params], shared_yaxes=True)
    for column, param in enumerate(params, start=1):
        hover = [f"trial {n}" for n in param["trials"]]
        fig.add_trace(go.Scatter(x=param["x"], y=param["y"], mode="markers", text=hover, showlegend=False), 1, column)
        if param["categorical"]:
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=param["labels"], row=1, col=column)
        elif param["log"]:
            fig.update_xaxes(type="log", row=1, col=column)
    fig.update_yaxes(title=data["objective"], row=1, col=1)
    return _layout(fig, "Slice plots", height=380)


def contour_figure(data: dict[str, Any]):
    go = _go()
    x, y = data["x"], data["y"]
    fig = go.Figure()
    fig.add_trace(
        go.Contour(
            x=x["values"], y=y["values"], z=data["z"], connectgaps=True, colorscale="Viridis",
            colorbar={"title": data["objective"]}, contours={"coloring": "heatmap"},
        )
    )
    hover = [f"trial {n}" for n in data["trials"]]
    fig.add_trace(go.Scatter(x=x["values"], y=y["values"], mode="markers", text=hover, marker={"color": "black"}, showlegend=False))
    for axis, update in ((x, fig.update_xaxes), (y, fig.update_yaxes)):
        if axis["categorical"]:
            update(type="category", categoryorder="array", categoryarray=axis["labels"], title=axis["name"])
        else:
            update(type="log" if axis["log"] else "linear", title=axis["name"])
    return _layout(fig, f"Contour of {x['name']} and {y['name']}")


def learning_curves_figure(data: dict[str, Any]):
    go = _go()
    fig = go.Figure()
    for curve in data["curves"]:
        color = STATE_COLORS.get(curve["state"], "#7f7f7f")
        style = {"color": color, "dash": "dot" if curve["cut"] else "solid"}
        # A cut trial ends in an x marker, so its stop is visible.
        symbols = ["circle"] * (len(curve["steps"]) - 1) + ["x" if curve["cut"] else "circle"]
        fig.add_trace(
            go.Scatter(
                x=curve["steps"], y=curve["values"], mode="lines+markers", line=style,
                marker={"symbol": symbols, "size": [6] * (len(symbols) - 1) + [11 if curve["cut"] else 6]},
                name=f"trial {curve['trial']} ({curve['state']})",
            )
        )
    fig.update_xaxes(title="epoch", dtick=1)
    fig.update_yaxes(title=data["objective"])
    return _layout(fig, "Learning curves (dotted lines ending in x: stopped early or failed)")


def timeline_figure(data: dict[str, Any]):
    go = _go()
    fig = go.Figure()
    for state, color in STATE_COLORS.items():
        rows = [row for row in data["trials"] if row["state"] == state]
        if not rows:
            continue
        fig.add_trace(
            go.Bar(
                base=[row["start"].isoformat() for row in rows],
                x=[(row["end"] - row["start"]).total_seconds() * 1000 for row in rows],
                y=[row["worker"] for row in rows],
                orientation="h", name=state, marker={"color": color},
                text=[f"trial {row['trial']}" for row in rows], textposition="inside",
            )
        )
    fig.update_xaxes(type="date", title="time")
    fig.update_yaxes(title="worker", type="category")
    fig.update_layout(barmode="overlay")
    workers = len({row["worker"] for row in data["trials"]})
    title = f"Timeline of trials (up to {data['max_concurrent']} at once)"
    return _layout(fig, title, height=max(250, 120 + 45 * workers))


def pareto_figure(data: dict[str, Any]):
    go = _go()
    names = data["objectives"]
    hover = [f"trial {n}" for n in data["trials"]]
    colors = ["#d62728" if on_front else "#9aa9c2" for on_front in data["front"]]
    labels = [f"{name} ({direction})" for name, direction in zip(names, data["directions"])]
    if len(names) == 2:
        fig = go.Figure(
            go.Scatter(
                x=[v[0] for v in data["values"]], y=[v[1] for v in data["values"]], mode="markers",
                text=hover, marker={"color": colors, "size": 9},
            )
        )
        fig.update_xaxes(title=labels[0])
        fig.update_yaxes(title=labels[1])
    else:
        dimensions = [{"label": label, "values": [v[i] for v in data["values"]]} for i, label in enumerate(labels)]
        fig = go.Figure(go.Splom(dimensions=dimensions, text=hover, marker={"color": colors, "size": 7}))
    return _layout(fig, "Pareto front (red: on the front)", height=480)


def confusion_figure(data: dict[str, Any]):
    go = _go()
    classes = data["classes"]
    fig = go.Figure(
        go.Heatmap(
            z=data["matrix"], x=classes, y=classes, colorscale="Blues", text=data["matrix"],
            texttemplate="%{text}", hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_xaxes(title="predicted", type="category")
    fig.update_yaxes(title="true", type="category", autorange="reversed")
    title = f"Confusion matrix of trial {data['trial']} on the validation split (accuracy {data['accuracy']:.4f})"
    return _layout(fig, title, height=520)


FIGURES = {
    "history": history_figure,
    "importance": importance_figure,
    "parallel": parallel_figure,
    "slice": slice_figure,
    "contour": contour_figure,
    "learning_curves": learning_curves_figure,
    "timeline": timeline_figure,
    "pareto": pareto_figure,
    "confusion": confusion_figure,
}


def _drawable(name: str, data: dict[str, Any]) -> bool:
    """Return whether ``data`` has something to draw for the figure ``name``."""
    checks = {
        "history": lambda d: d["trials"],
        "importance": lambda d: d["params"],
        "parallel": lambda d: d["dimensions"],
        "slice": lambda d: d["params"],
        "contour": lambda d: d.get("z"),
        "learning_curves": lambda d: d["curves"],
        "timeline": lambda d: d["trials"],
        "pareto": lambda d: d["trials"],
        "confusion": lambda d: d.get("matrix"),
    }
    return bool(checks[name](data))


def collect_data(optuna_study, run_dir: Path | None = None, study=None) -> dict[str, dict[str, Any]]:
    """Compute the data of every figure; checkpoint figures need ``run_dir`` and ``study``."""
    data: dict[str, dict[str, Any]] = {}
    data["history"] = report_data.history_data(optuna_study)
    data["importance"] = report_data.importance_data(optuna_study)
    data["parallel"] = report_data.parallel_data(optuna_study)
    data["slice"] = report_data.slice_data(optuna_study)
    data["contour"] = report_data.contour_data(optuna_study, data["importance"])
    data["learning_curves"] = report_data.learning_curves(optuna_study)
    data["timeline"] = report_data.timeline_data(optuna_study, run_dir)
    data["pareto"] = report_data.pareto_data(optuna_study)
    data["confusion"] = _prediction_or_note(optuna_study, run_dir, study)
    return data


def _prediction_or_note(optuna_study, run_dir, study) -> dict[str, Any]:
    best = report_data.best_configuration(optuna_study)["trials"]
    if run_dir is None or study is None:
        return {"note": "no run directory, so no checkpoint to evaluate"}
    if not best:
        return {"note": "no trial completed, so there is no best checkpoint to evaluate"}
    trial = optuna_study.trials[best[0]["trial"]]
    try:
        return report_data.prediction_data(run_dir, study, trial)
    except FileNotFoundError as error:
        logger.warning("Report: no confusion matrix: %s", error)
        return {"note": str(error)}


def build_figures(data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Return a plotly figure per figure name, or None where its data has nothing to draw."""
    figures = {}
    for name, draw in FIGURES.items():
        if name in data and _drawable(name, data[name]):
            figures[name] = draw(data[name])
        else:
            figures[name] = None
    return figures


# ---- HTML ---------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 8px 12px; margin: 8px 0; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f2f4f7; cursor: pointer; user-select: none; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
.state-PRUNED { color: #b35900; } .state-FAIL { color: #b00020; } .state-RUNNING { color: #1b7a1b; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.grid figure { margin: 0; text-align: center; font-size: 0.8em; }
.grid img { width: 72px; height: 72px; image-rendering: pixelated; border: 1px solid #ccc; }
td.reason { min-width: 22em; font-size: 0.9em; }
.scroll { overflow-x: auto; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; }
"""

# Sorts a table by the clicked column; cells with data-sort hold the numeric key.
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = !th.classList.contains("sorted-asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(ascending ? "sorted-asc" : "sorted-desc");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[column];
        var sort = cell.getAttribute("data-sort");
        return sort === null ? cell.textContent : parseFloat(sort);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (typeof x === "number" && typeof y === "number") {
          if (isNaN(x)) return 1; if (isNaN(y)) return -1;
          return ascending ? x - y : y - x;
        }
        return ascending ? String(x).localeCompare(String(y)) : String(y).localeCompare(String(x));
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""

SECTIONS = (
    ("history", "Optimization history"),
    ("importance", "Parameter importances"),
    ("parallel", "Parallel coordinates"),
    ("slice", "Slice plots"),
    ("contour", "Contour of the two most important parameters"),
    ("learning_curves", "Learning curves"),
    ("timeline", "Timeline"),
    ("pareto", "Pareto front"),
    ("confusion", "Best trial on the validation split"),
)


def _figure_html(figure) -> str:
    import plotly.io as pio

    config = {"displaylogo": False, "responsive": True}
    return pio.to_html(figure, include_plotlyjs=False, full_html=False, config=config)


def _note_html(note: str | None) -> str:
    return f'<p class="note">{html.escape(note)}</p>' if note else ""


def _page(title: str, body: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{SORT_SCRIPT}</script></body></html>\n"
    )


def _number_cell(value: float | None, digits: str = ".4f") -> str:
    if value is None:
        return '<td data-sort="NaN">-</td>'
    return f'<td data-sort="{value!r}">{format(value, digits)}</td>'


def _trials_table_html(table: dict[str, Any]) -> str:
    objectives = table["objectives"]
    header = ["trial", "state", *objectives, "epochs", "seconds", *table["params"], "reason"]
    lines = ['<table class="sortable"><thead><tr>']
    lines += [f"<th>{html.escape(name)}</th>" for name in header]
    lines.append("</tr></thead><tbody>")
    for row in table["rows"]:
        cells = [f'<td data-sort="{row["trial"]}">{row["trial"]}</td>']
        cells.append(f'<td class="state-{row["state"]}">{row["state"]}</td>')
        values = row["values"] or [None] * len(objectives)
        cells += [_number_cell(value) for value in values]
        cells.append(f'<td data-sort="{row["epochs"]}">{row["epochs"]}</td>')
        cells.append(_number_cell(row["seconds"], ".1f"))
        cells += [f"<td>{html.escape(label)}</td>" for label in row["params"]]
        cells.append(f'<td class="reason">{html.escape(row["reason"])}</td>')
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _best_html(best: dict[str, Any]) -> str:
    if not best["trials"]:
        return _note_html(best["note"])
    parts = []
    for entry in best["trials"]:
        values = ", ".join(f"{name} {value:.4f}" for name, value in zip(best["objectives"], entry["values"]))
        parts.append(f"<p><b>Trial {entry['trial']}</b>: {html.escape(values)} after {entry['epochs']} epochs</p>")
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(label)}</td></tr>" for name, label in entry["params"].items()
        )
        parts.append(f"<table><thead><tr><th>parameter</th><th>value</th></tr></thead><tbody>{rows}</tbody></table>")
        if entry["config"]:
            parts.append(f"<p>Configuration the trial trained with:</p><pre>{html.escape(json.dumps(entry['config'], indent=2, sort_keys=True))}</pre>")
    if len(best["trials"]) > 1:
        parts.insert(0, f"<p>{len(best['trials'])} trials are on the Pareto front.</p>")
    return "\n".join(parts)


def _image_uri(image) -> str:
    from PIL import Image

    array = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _misclassified_html(data: dict[str, Any]) -> str:
    images = data.get("misclassified") or []
    if not images:
        return ""
    shown = f"{len(images)} of {data['misclassified_total']}"
    parts = [f"<p>Misclassified validation images ({shown}), true and predicted class:</p><div class=\"grid\">"]
    for item in images:
        caption = f"true {html.escape(item['true'])}<br>predicted {html.escape(item['predicted'])}"
        parts.append(f'<figure><img alt="validation image {item["index"]}" src="{_image_uri(item["image"])}"><figcaption>{caption}</figcaption></figure>')
    parts.append("</div>")
    return "\n".join(parts)


def render_report(title: str, optuna_study, data: dict[str, dict[str, Any]], figures: dict[str, Any]) -> str:
    """Return the report page: every figure or its note, the best configuration and the trials."""
    status = report_data.status_data(optuna_study)
    counts = ", ".join(f"{count} {state}" for state, count in status["counts"].items() if count)
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{status['total']} trials: {html.escape(counts or 'none')}</p>"]
    body.append("<h2>Best configuration</h2>")
    body.append(_best_html(report_data.best_configuration(optuna_study)))
    multi = len(optuna_study.directions) > 1
    for name, heading in SECTIONS:
        if name == "pareto" and not multi:
            continue
        body.append(f'<h2 id="{name}">{heading}</h2>')
        body.append(_note_html(data[name].get("note")))
        if figures.get(name) is not None:
            body.append(_figure_html(figures[name]))
        if name == "confusion":
            body.append(_misclassified_html(data[name]))
    table = report_data.trials_table(optuna_study)
    body.append("<h2 id=\"trials\">All trials (click a column to sort)</h2>")
    body.append(_note_html(table["note"]))
    body.append(f'<div class="scroll">{_trials_table_html(table)}</div>')
    return _page(title, body)


def write_report(run_dir: str | Path, output: str | Path | None = None, png: bool = False) -> Path:
    """Write the report of the run in ``run_dir`` to ``output`` (``RUN/report.html`` by default).

    With ``png`` each figure is also written as ``RUN/figures/NAME.png`` (see ``search.export``).
    """
    from search.storage import open_run

    run_dir = Path(run_dir)
    study, optuna_study = open_run(run_dir)
    data = collect_data(optuna_study, run_dir, study)
    figures = build_figures(data)
    output = Path(output) if output else run_dir / REPORT_FILE
    output.write_text(render_report(f"ftsearch report: {study.name}", optuna_study, data, figures), encoding="utf-8")
    logger.info("Wrote the report of %s to %s", study.name, output)
    if png:
        from search.export import export_png

        export_png(figures, run_dir / "figures")
    return output


def comparison_figure(data: dict[str, Any]):
    go = _go()
    fig = go.Figure()
    for entry in data["runs"]:
        fig.add_trace(go.Scatter(x=entry["trials"], y=entry["best_so_far"], mode="lines", line={"shape": "hv"}, name=entry["run"]))
    fig.update_xaxes(title="trial")
    fig.update_yaxes(title="best so far")
    return _layout(fig, "Best value so far, per run")


def render_comparison(data: dict[str, Any]) -> str:
    """Return a page with every run's best value, best-so-far history and best configuration."""
    body = ["<h1>ftsearch comparison</h1>", "<h2>Best values</h2>"]
    header = ["run", "objective", "direction", "best value", "best trial", "trials", *data["params"]]
    rows = []
    for entry in data["runs"]:
        cells = [f"<td>{html.escape(entry['run'])}</td>", f"<td>{html.escape(entry['objective'])}</td>"]
        cells.append(f"<td>{entry['direction']}</td>")
        cells.append(_number_cell(entry["best_value"]))
        cells.append(f"<td>{'-' if entry['best_trial'] is None else entry['best_trial']}</td>")
        cells.append(f'<td data-sort="{entry["total"]}">{entry["total"]}</td>')
        cells += [f"<td>{html.escape(entry['best_params'].get(name, ''))}</td>" for name in data["params"]]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body.append(
        '<table class="sortable"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    body.append("<h2>Histories</h2>")
    if any(entry["trials"] for entry in data["runs"]):
        body.append(_figure_html(comparison_figure(data)))
    else:
        body.append(_note_html("no run has a completed trial yet"))
    return _page("ftsearch comparison", body)


def write_comparison(run_dirs: list[str | Path], output: str | Path) -> Path:
    """Write a page comparing the runs in ``run_dirs`` to ``output``."""
    from search.storage import open_run

    runs = []
    for run_dir in run_dirs:
        study, optuna_study = open_run(run_dir)
        runs.append((f"{study.name} ({run_dir})", optuna_study))
    output = Path(output)
    output.write_text(render_comparison(report_data.comparison_data(runs)), encoding="utf-8")
    logger.info("Wrote the comparison of %d runs to %s", len(runs), output)
    return output


def format_status(status: dict[str, Any]) -> str:
    """Return ``report_data.status_data`` as text for the terminal."""
    counts = ", ".join(f"{count} {state}" for state, count in status["counts"].items() if count)
    lines = [f"Study {status['study']}: {status['total']} trials ({counts or 'none yet'})"]
    if status["best"]:
        for entry in status["best"]:
            values = ", ".join(f"{name} {value:.4f}" for name, value in zip(status["objectives"], entry["values"]))
            params = ", ".join(f"{name}={label}" for name, label in entry["params"].items())
            lines.append(f"Best: trial {entry['trial']}: {values}; {params}")
    else:
        lines.append("Best: no trial completed yet")
    if not status["running"]:
        lines.append("Running: none")
    for trial in status["running"]:
        seconds = "-" if trial["seconds"] is None else f"{trial['seconds']:.0f} s"
        last = "none yet" if trial["last_value"] is None else f"{trial['last_value']:.4f}"
        params = ", ".join(f"{name}={label}" for name, label in trial["params"].items())
        lines.append(f"Running: trial {trial['trial']} for {seconds}, {trial['epochs']} epochs, last value {last}; {params}")
    return "\n".join(lines)
