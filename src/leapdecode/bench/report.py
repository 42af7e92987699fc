"""Writing a run: results.json, report.md (a table like Spec-Bench's leaderboard), speedup.png.

    results = {"methods": {NAME: {"overall": {...}, "subtasks": {SUBTASK: {...}}}},
               "settings": {...}, "machine": {...}, "versions": {...}, "questions": [...]}
    write_all(results, out_dir)   # -> results.json, report.md, speedup.png
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from .questions import ordered_subtasks

TITLES = {
    "mt_bench": "Multi-turn Conversation",
    "translation": "Translation",
    "summarization": "Summarization",
    "qa": "Question Answering",
    "math_reasoning": "Mathematical Reasoning",
    "rag": "Retrieval-aug. Generation",
    "overall": "Overall",
}


def _num(value: float | None, fmt: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{suffix}"


def _subtasks(results: Mapping[str, Any]) -> list[str]:
    names = {s for m in results["methods"].values() for s in m["subtasks"]}
    return ordered_subtasks(names)


def markdown_table(results: Mapping[str, Any]) -> str:
    """Speedup per subtask and overall, then tau, tokens/s and identical, one row per method."""
    subtasks = _subtasks(results)
    head = ["Method", *(TITLES.get(s, s) for s in subtasks), "Overall", "tau", "tokens/s",
            "identical", "identical to own greedy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for name, m in results["methods"].items():
        cells = [f"`{name}`"]
        cells += [_num(m["subtasks"].get(s, {}).get("speedup"), ".2f", "x") for s in subtasks]
        o = m["overall"]
        cells += [
            f"**{_num(o['speedup'], '.2f', 'x')}**", _num(o["tau"], ".2f"), _num(o["tokens_per_s"], ".1f"),
            _num(o["identical"], ".0%"), _num(o["identical_to_own_greedy"], ".0%"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(results: Mapping[str, Any]) -> str:
    """Every method x subtask with all metrics."""
    head = ["Method", "Subtask", "questions", "outputs", "speedup", "tau", "tokens/s", "new tokens",
            "wall s", "identical", "identical to own greedy"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "|".join(["---:"] * (len(head) - 2)) + "|"]
    for name, m in results["methods"].items():
        for subtask, s in [*m["subtasks"].items(), ("overall", m["overall"])]:
            lines.append("| " + " | ".join([
                f"`{name}`", subtask, str(s["questions"]), str(s["outputs"]), _num(s["speedup"], ".2f", "x"),
                _num(s["tau"], ".2f"), _num(s["tokens_per_s"], ".1f"), str(s["new_tokens"]),
                _num(s["wall_s"], ".1f"), _num(s["identical"], ".0%"), _num(s["identical_to_own_greedy"], ".0%"),
            ]) + " |")
    return "\n".join(lines)


def report_markdown(results: Mapping[str, Any]) -> str:
    st, machine = results["settings"], results["machine"]
    baseline = st["baseline"]
    partial = [] if st.get("complete", True) else [
        f"**Stopped early ({st.get('stopped')}): {st['questions']} of {st.get('questions_planned', '?')} "
        "questions finished.**", ""]
    return "\n".join([
        f"# leapdecode bench: {st['model']}, {st['dtype']}",
        "",
        *partial,
        f"Speedup = mean per-question tokens/s of the method / that of `{baseline}` (Spec-Bench's "
        "definition, Xia et al. 2024, arXiv 2401.07851); tau = tokens emitted per target forward pass; "
        f"identical = share of outputs (question, turn) whose token ids equal `{baseline}`'s; identical to "
        "own greedy = the same against the greedy run of the method's own family (`none`, `hf-greedy`, "
        "`llamacpp-greedy`).",
        "",
        markdown_table(results),
        "",
        "## Per subtask",
        "",
        detail_table(results),
        "",
        "## Settings",
        "",
        f"- command: `{st.get('command', '')}`",
        f"- questions: {st['questions_file']} ({st['questions']} questions, {st['outputs_per_method']} "
        f"outputs per method), max_new_tokens {st['max_new_tokens']}, greedy",
        f"- repeat {st['repeat']} (median wall time per output), warmup {st['warmup']}, threads {st['threads']}",
        f"- machine: {machine.get('cpu', '?')}, {machine.get('logical_cpus', '?')} logical CPUs, "
        f"load average {machine.get('loadavg_start', '?')} at the start, {machine.get('loadavg_end', '?')} at the end",
        f"- versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        "",
    ])


def plot_speedups(results: Mapping[str, Any], path: Path) -> None:
    """A grouped bar chart: one group per subtask (and overall), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [*_subtasks(results), "overall"]
    methods = list(results["methods"])
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(min(14.0, 4.0 + len(groups) * (0.6 + 0.2 * len(methods))), 4.8))
    for i, name in enumerate(methods):
        m = results["methods"][name]
        values = [(m["overall"] if g == "overall" else m["subtasks"].get(g, {})).get("speedup") or 0.0
                  for g in groups]
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), [TITLES.get(g, g).replace(" ", "\n", 1) for g in groups], fontsize=8)
    st = results["settings"]
    ax.set_ylabel(f"speedup over {st['baseline']}")
    ax.set_title(f"{st['model']} ({st['dtype']}), max_new_tokens {st['max_new_tokens']}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dumps(results: Mapping[str, Any]) -> str:
    """JSON text with one line per question record (token ids included), indented elsewhere."""
    head = json.dumps({k: v for k, v in results.items() if k != "questions"}, indent=1, ensure_ascii=False)
    rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in results.get("questions", []))
    return head[:-2] + ',\n "questions": [\n  ' + rows + "\n ]\n}\n"


def write_all(results: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write results.json, report.md and (with matplotlib installed) speedup.png into `out_dir`;
    returns the paths written."""
    import importlib.util

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "report": out / "report.md", "plot": out / "speedup.png"}
    paths["json"].write_text(dumps(results))
    paths["report"].write_text(report_markdown(results))
    if importlib.util.find_spec("matplotlib") is None:
        del paths["plot"]
    else:
        plot_speedups(results, paths["plot"])
    return paths
