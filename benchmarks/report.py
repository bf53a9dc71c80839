"""Per-run statistics tables of the benchmark scripts: one CSV and one markdown file with the same rows."""

import csv
import glob
import json
import os
from collections.abc import Sequence
from typing import Any


def format_cell(value: Any) -> str:
    """Three significant digits for floats, ``n/a`` for missing values."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def record_names(results_dir: str) -> dict[str, str]:
    """
    Algorithm name of each run folder, from the suite's records (``raw/<task>/<algorithm>_seed<S>.json``).

    A run keeps its folder when ``suite.py --relabel`` renames its record, so reports label a folder by its record.

    :param results_dir: the suite's results folder
    :return: real path of a run's ``seed<S>`` folder -> its algorithm name
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = {}
    for path in glob.glob(os.path.join(results_dir, "raw", "*", "*.json")):
        with open(path) as handle:
            record = json.load(handle)
        seed_dir = os.path.dirname(os.path.dirname(record.get("run_folder", "")))
        if os.path.basename(seed_dir).startswith("seed"):
            names[os.path.realpath(os.path.join(repo, seed_dir))] = record["algorithm"]
    return names


def merge_previous(path: str, rows: list[dict], key: Sequence[str]) -> list[dict]:
    """
    ``rows`` plus the rows of an earlier CSV at ``path`` whose key is not among them, sorted by key.

    Run folders are not committed, so a later session sees only its own runs: the table keeps the
    committed rows of runs it cannot read any more (values as strings; a run read again replaces its row).

    :param path: the earlier CSV (may be missing)
    :param rows: the rows read now
    :param key: the columns that name a run
    """
    fresh = {tuple(str(row[c]) for c in key) for row in rows}
    kept = []
    if os.path.exists(path):
        with open(path, newline="") as handle:
            kept = [row for row in csv.DictReader(handle) if tuple(row[c] for c in key) not in fresh]
    for row in kept:
        for column, value in row.items():
            try:
                row[column] = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                pass  # a name stays a string
    return sorted([*rows, *kept], key=lambda row: tuple(str(row[c]) for c in key))


def write_report(out_dir: str, stem: str, columns: Sequence[str], rows: list[dict], intro: list[str], outro: list[str]) -> str:
    """
    Write ``<stem>.csv`` (the rows) and ``<stem>.md`` (intro, the rows as a table, outro) into ``out_dir``.

    :param out_dir: output folder (created if missing)
    :param stem: file name without extension
    :param columns: the columns, in order
    :param rows: one dict per row (missing keys are written as ``n/a`` in the table)
    :param intro: markdown lines before the table
    :param outro: markdown lines after the table
    :return: the markdown text
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{stem}.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    lines = [*intro, "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    text = "\n".join([*lines, *outro]) + "\n"
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as handle:
        handle.write(text)
    return text
