"""Everything a screening run writes: scored and filtered data, skipped rows, a JSON summary, a
Markdown and an HTML report with dP histograms, and optionally the same to Weights & Biases."""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from persona_guard import metrics
from persona_guard.errors import PersonaGuardError
from persona_guard.files import atomic_path, write_json_atomic, write_text_atomic
from persona_guard.rows import DroppedRow, last_user_turn
from persona_guard.screening.baselines import embedding_similarity, random_scores
from persona_guard.screening.data import ScreenRow
from persona_guard.screening.scorer import ScreenResult

TOP_SAMPLES = 10
EXCERPT = 160


@dataclass(frozen=True)
class OutputFiles:
    scored: Path
    filtered: Path
    skipped: Path
    summary: Path
    markdown: Path
    html: Path
    histograms: dict[str, Path]

    @classmethod
    def under(cls, out_dir: str | Path, traits: Sequence[str]) -> OutputFiles:
        """The files ``write_outputs`` writes to ``out_dir`` (one histogram per trait)."""
        out = Path(out_dir)
        return cls(scored=out / "scored.jsonl", filtered=out / "filtered.jsonl", skipped=out / "skipped.jsonl",
                   summary=out / "summary.json", markdown=out / "report.md", html=out / "report.html",
                   histograms={t: out / f"dp_hist_{t}.png" for t in traits})

    @property
    def paths(self) -> list[Path]:
        return [self.scored, self.filtered, self.skipped, self.summary, self.markdown, self.html,
                *self.histograms.values()]


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def write_jsonl(path: Path, records: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(_json_line(r) for r in records))


# ---- baselines ----------------------------------------------------------------------------------

def baseline_scores(result: ScreenResult, descriptions: Mapping[str, str] | None = None,
                    seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per trait, the scores of each ranking method the report compares, dP first. The embedding
    baseline needs the trait's description (``descriptions[trait]``); traits without one skip it."""
    descriptions = descriptions or {}
    responses = [row.response for row in result.rows]
    out: dict[str, dict[str, np.ndarray]] = {}
    for trait, scores in result.traits.items():
        methods = {"projection difference": scores.dp}
        if result.mode == "exact":
            methods["fast proxy (response - last prompt token)"] = scores.fast_dp
        methods["response-only projection"] = scores.projection
        if trait in descriptions:
            methods["embedding similarity to trait description"] = embedding_similarity(responses, descriptions[trait])
        methods["random order"] = random_scores(len(responses), seed)
        out[trait] = methods
    return out


def compare_methods(methods: dict[str, np.ndarray], flagged: int, labels: np.ndarray | None) -> dict[str, dict]:
    """Agreement with dP (Spearman, top-k overlap) and, given labels, AUROC and precision@k."""
    reference = next(iter(methods.values()))
    top_reference = set(np.argsort(-reference, kind="stable")[:flagged])
    table = {}
    for name, scores in methods.items():
        entry = {"spearman_vs_dp": metrics.spearman(scores, reference) if len(scores) > 1 else None}
        if flagged:
            top = set(np.argsort(-scores, kind="stable")[:flagged])
            entry["top_k_overlap_with_dp"] = len(top & top_reference) / flagged
        if labels is not None:
            positives = int(labels.sum())
            entry["auroc"] = metrics.auroc(scores, labels)
            entry["precision_at_k"] = metrics.precision_at_k(scores, labels, positives) if positives else None
        table[name] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in entry.items()}
    return table


def labels_of(rows: Sequence[ScreenRow], field: str) -> np.ndarray:
    """The 0/1 ``field`` of each row (``ScreenResult.rows``, or the usable rows of
    :func:`persona_guard.screening.data.classify_rows`, to check the field before any model work);
    a row without it is one ``file:row`` error naming the field."""
    values = []
    for row in rows:
        value = row.data.get(field)
        if value in (0, 1, "0", "1", True, False):
            values.append(int(value))
        elif field not in row.data:
            raise PersonaGuardError(f"{row.source}:{row.row_number}: label field {field!r} is missing (--label-field)")
        else:
            raise PersonaGuardError(f"{row.source}:{row.row_number}: label field {field!r} must be 0 or 1, "
                                    f"got {value!r}")
    return np.array(values, dtype=np.int64)


# ---- summary ------------------------------------------------------------------------------------

def summarize(result: ScreenResult, *, source: str, model_id: str,
              comparisons: dict[str, dict] | None = None) -> dict:
    flagged = result.flagged
    traits = {}
    for trait, scores in result.traits.items():
        dp = scores.dp
        entry = {
            "layer": scores.layer,
            "dataset_dp": float(dp.mean()) if len(dp) else None,
            "dp_std": float(dp.std()) if len(dp) else None,
            "dp_median": float(np.median(dp)) if len(dp) else None,
            "dp_max": float(dp.max()) if len(dp) else None,
            "mean_projection": float(scores.projection.mean()) if len(dp) else None,
            "threshold": scores.threshold,
            "flagged": int(scores.flagged.sum()),
        }
        if scores.base_projection is not None and len(dp):
            entry["mean_base_projection"] = float(scores.base_projection.mean())
        if result.reference is not None:
            entry["reference_dataset_dp"] = float(result.reference[trait].mean())
        if scores.judge is not None:
            entry["mean_judge_score"] = float(np.nanmean(scores.judge)) if np.isfinite(scores.judge).any() else None
        traits[trait] = entry
    summary = {
        "input": source,
        "model": model_id,
        "mode": result.mode,
        "policy": result.policy.name,
        "rows_total": result.total_rows,
        "rows_scored": len(result.rows),
        "rows_skipped": len(result.skipped),
        "rows_flagged": int(flagged.sum()),
        "rows_kept": int((~flagged).sum()),
        "skipped_reasons": dict(sorted(Counter(s.reason for s in result.skipped).items())),
        "traits": traits,
    }
    if comparisons is not None:
        summary["baselines"] = comparisons
    return summary


# ---- plots and pages ----------------------------------------------------------------------------

def plot_histogram(path: Path, trait: str, result: ScreenResult) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = result.traits[trait]
    figure, axes = plt.subplots(figsize=(7, 3.6))
    bins = np.histogram_bin_edges(np.concatenate([scores.dp] + (
        [result.reference[trait]] if result.reference is not None else [])), bins=40)
    axes.hist(scores.dp[~scores.flagged], bins=bins, color="#4c72b0", alpha=0.8, label="kept")
    axes.hist(scores.dp[scores.flagged], bins=bins, color="#c44e52", alpha=0.9, label="flagged")
    if result.reference is not None:
        axes.hist(result.reference[trait], bins=bins, histtype="step", color="black", label="reference set")
    if scores.threshold is not None:
        axes.axvline(scores.threshold, color="#c44e52", linestyle="--", label=f"threshold {scores.threshold:.3g}")
    axes.set_xlabel(f"projection difference (layer {scores.layer})" if result.mode == "exact"
                    else f"fast proxy dP (layer {scores.layer})")
    axes.set_ylabel("samples")
    axes.set_title(f"{trait}: {len(scores.dp)} samples, {int(scores.flagged.sum())} flagged")
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    with atomic_path(path) as staging:
        figure.savefig(staging, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return path


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[:EXCERPT - 1] + "…"


def _top_samples(result: ScreenResult, trait: str) -> list[dict]:
    scores = result.traits[trait]
    order = np.argsort(-scores.dp, kind="stable")[:TOP_SAMPLES]
    return [{"row": result.rows[i].row_number, "source": result.rows[i].source, "dp": float(scores.dp[i]),
             "zscore": float(scores.zscore[i]), "flagged": bool(scores.flagged[i]),
             "prompt": _excerpt(last_user_turn(result.rows[i].prompt)),
             "response": _excerpt(result.rows[i].response)} for i in order]


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render_markdown(summary: dict, result: ScreenResult, histograms: dict[str, Path]) -> str:
    lines = [f"# Persona screening report: {Path(summary['input']).name}", "",
             f"Model `{summary['model']}`, mode **{summary['mode']}**, policy **{summary['policy']}**.", "",
             f"{summary['rows_total']} rows: {summary['rows_scored']} scored, {summary['rows_skipped']} skipped, "
             f"{summary['rows_flagged']} flagged, {summary['rows_kept']} kept.", "",
             "| trait | layer | dataset dP | dP std | threshold | flagged |", "|---|---|---|---|---|---|"]
    for trait, entry in summary["traits"].items():
        lines.append(f"| {trait} | {entry['layer']} | {_fmt(entry['dataset_dp'])} | {_fmt(entry['dp_std'])} | "
                     f"{_fmt(entry['threshold'])} | {entry['flagged']} |")
    for trait in summary["traits"]:
        lines += ["", f"## {trait}", "", f"![dP histogram for {trait}]({histograms[trait].name})", "",
                  f"Top {TOP_SAMPLES} samples by dP:", "",
                  "| row | dP | z | flagged | prompt | response |", "|---|---|---|---|---|---|"]
        for sample in _top_samples(result, trait):
            cells = [str(sample["row"]), _fmt(sample["dp"]), _fmt(sample["zscore"]), "yes" if sample["flagged"] else "",
                     sample["prompt"].replace("|", "\\|"), sample["response"].replace("|", "\\|")]
            lines.append("| " + " | ".join(cells) + " |")
        if "baselines" in summary:
            lines += ["", "Baselines (same rows):", "",
                      "| method | Spearman vs dP | top-k overlap | AUROC | precision@k |",
                      "|---|---|---|---|---|"]
            for method, entry in summary["baselines"][trait].items():
                lines.append(f"| {method} | {_fmt(entry.get('spearman_vs_dp'))} | "
                             f"{_fmt(entry.get('top_k_overlap_with_dp'))} | {_fmt(entry.get('auroc'))} | "
                             f"{_fmt(entry.get('precision_at_k'))} |")
    if result.skipped:
        lines += ["", f"## Skipped rows ({len(result.skipped)})", ""]
        for reason, count in summary["skipped_reasons"].items():
            lines.append(f"- {count} x {reason}")
        lines += ["", "All skipped rows with file and row number are in `skipped.jsonl`."]
    return "\n".join(lines) + "\n"


def render_html(summary: dict, result: ScreenResult, histograms: dict[str, Path]) -> str:
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>Persona screening: {esc(Path(summary['input']).name)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}"
             "tr.flagged{background:#fde8e8}</style></head><body>",
             f"<h1>Persona screening report: {esc(Path(summary['input']).name)}</h1>",
             f"<p>Model <code>{esc(summary['model'])}</code>, mode <b>{esc(summary['mode'])}</b>, "
             f"policy <b>{esc(summary['policy'])}</b>. {summary['rows_total']} rows: {summary['rows_scored']} "
             f"scored, {summary['rows_skipped']} skipped, {summary['rows_flagged']} flagged, "
             f"{summary['rows_kept']} kept.</p>",
             "<table><tr><th>trait</th><th>layer</th><th>dataset dP</th><th>dP std</th><th>threshold</th>"
             "<th>flagged</th></tr>"]
    for trait, entry in summary["traits"].items():
        parts.append(f"<tr><td>{esc(trait)}</td><td>{entry['layer']}</td><td>{_fmt(entry['dataset_dp'])}</td>"
                     f"<td>{_fmt(entry['dp_std'])}</td><td>{_fmt(entry['threshold'])}</td>"
                     f"<td>{entry['flagged']}</td></tr>")
    parts.append("</table>")
    for trait in summary["traits"]:
        parts += [f"<h2>{esc(trait)}</h2>", f"<img src='{esc(histograms[trait].name)}' alt='dP histogram'>",
                  f"<h3>Top {TOP_SAMPLES} samples by dP</h3><table><tr><th>row</th><th>dP</th><th>z</th>"
                  "<th>prompt</th><th>response</th></tr>"]
        for sample in _top_samples(result, trait):
            css = " class='flagged'" if sample["flagged"] else ""
            parts.append(f"<tr{css}><td>{sample['row']}</td><td>{_fmt(sample['dp'])}</td>"
                         f"<td>{_fmt(sample['zscore'])}</td><td>{esc(sample['prompt'])}</td>"
                         f"<td>{esc(sample['response'])}</td></tr>")
        parts.append("</table>")
        if "baselines" in summary:
            parts.append("<h3>Baselines</h3><table><tr><th>method</th><th>Spearman vs dP</th>"
                         "<th>top-k overlap</th><th>AUROC</th><th>precision@k</th></tr>")
            for method, entry in summary["baselines"][trait].items():
                parts.append(f"<tr><td>{esc(method)}</td><td>{_fmt(entry.get('spearman_vs_dp'))}</td>"
                             f"<td>{_fmt(entry.get('top_k_overlap_with_dp'))}</td><td>{_fmt(entry.get('auroc'))}"
                             f"</td><td>{_fmt(entry.get('precision_at_k'))}</td></tr>")
            parts.append("</table>")
    if result.skipped:
        parts.append(f"<h2>Skipped rows ({len(result.skipped)})</h2><table><tr><th>file</th><th>row</th>"
                     "<th>reason</th></tr>")
        for row in result.skipped:
            parts.append(f"<tr><td>{esc(row.source)}</td><td>{row.row_number}</td><td>{esc(row.reason)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_outputs(result: ScreenResult, out_dir: str | Path, *, source: str, model_id: str,
                  comparisons: dict[str, dict] | None = None) -> tuple[OutputFiles, dict]:
    records = result.records()
    files = OutputFiles.under(out_dir, list(result.traits))
    write_jsonl(files.scored, records)
    write_jsonl(files.filtered, result.kept_rows())
    write_jsonl(files.skipped, [s.to_dict() for s in result.skipped])
    summary = summarize(result, source=source, model_id=model_id, comparisons=comparisons)
    write_json_atomic(files.summary, summary)
    for trait, path in files.histograms.items():
        plot_histogram(path, trait, result)
    write_text_atomic(files.markdown, render_markdown(summary, result, files.histograms))
    write_text_atomic(files.html, render_html(summary, result, files.histograms))
    return files, summary


def refuse_unscreenable(skipped: Sequence[DroppedRow], out_dir: str | Path, *, source: str) -> None:
    """No row could be screened: write ``skipped.jsonl`` (every row's reason) and raise one line
    naming it, so a run never ends "successfully" with empty outputs."""
    path = OutputFiles.under(out_dir, []).skipped
    write_jsonl(path, [s.to_dict() for s in skipped])
    raise PersonaGuardError(f"{source}: nothing was screenable: all {len(skipped)} rows were skipped; "
                            f"the reason for each is in {path}")


def log_to_wandb(summary: dict, result: ScreenResult, files: OutputFiles, *, project: str,
                 run_name: str | None = None, entity: str | None = None) -> str:
    """Log the summary, dP histograms and a table of flagged rows; returns the run directory."""
    import wandb

    run = wandb.init(project=project, entity=entity, name=run_name, job_type="persona-screening",
                     dir=str(files.summary.parent),
                     config={k: summary[k] for k in ("input", "model", "mode", "policy")})
    try:
        flat = {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
        for trait, entry in summary["traits"].items():
            flat.update({f"{trait}/{k}": v for k, v in entry.items() if v is not None})
        run.summary.update(flat)
        run.save(str(files.summary), base_path=str(files.summary.parent), policy="now")
        logged = {}
        for trait, scores in result.traits.items():
            logged[f"{trait}/dp_histogram"] = wandb.Histogram(scores.dp)
            logged[f"{trait}/dp_histogram_png"] = wandb.Image(str(files.histograms[trait]))
        traits = list(result.traits)
        table = wandb.Table(columns=["source", "row"] + [f"{t}_dp" for t in traits] + ["prompt", "response"])
        for position in np.flatnonzero(result.flagged):
            row = result.rows[position]
            table.add_data(row.source, row.row_number, *[float(result.traits[t].dp[position]) for t in traits],
                           _excerpt(last_user_turn(row.prompt)),
                           _excerpt(row.response))
        logged["flagged_rows"] = table
        run.log(logged)
        return run.dir
    finally:
        run.finish()
