"""
Resuming benchmark runs that were cut off: the segments of a run and the joining of their curves.

A run started by ``benchmarks/suite.py`` saves a resumable checkpoint at every evaluation
(``sb3-m3po train --checkpoint-freq``; model, replay buffer, VecNormalize statistics). When the runner
finds a run folder without a record, it continues from the latest checkpoint (``-i``) instead of
restarting, so a run longer than one sitting still finishes. Each start of the training process is a
*segment*; ``segments.json`` in the run folder lists them (the step each resumed from, its wall-clock,
commit, machine and peak memory) and is rewritten while a segment runs, so the wall-clock of a segment
that was killed is kept (up to its last update) and counted in the run's total. Each segment is a new
rl-zoo3 log folder (``seg1``, ``seg2``, ...) with its own ``evaluations.npz``; the run's curve takes
every segment's evaluations up to the step a later one resumed from.
"""

import dataclasses
import glob
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_m3po.zoo.checkpoints import latest_checkpoint

SEGMENTS_FILE = "segments.json"


@dataclass
class Segment:
    """
    One start of a run's training process.

    :param resumed_from: agent decisions of the checkpoint it started from (0: the first segment)
    :param wall_seconds: its wall-clock so far
    :param commit: code version it ran
    :param machine: machine description
    :param peak_rss_mib: its peak resident memory (None: not measured)
    """

    resumed_from: int
    wall_seconds: float
    commit: str
    machine: str
    peak_rss_mib: float | None = None


def read_segments(folder: str, spec: dict[str, Any]) -> list[Segment] | None:
    """
    Segments of the run in ``folder``, None when there are none to continue (no file, or it was written
    for another configuration).
    """
    path = os.path.join(folder, SEGMENTS_FILE)
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or raw.get("spec") != spec:
        return None
    return [Segment(**segment) for segment in raw.get("segments", [])]


def write_segments(folder: str, spec: dict[str, Any], segments: Sequence[Segment]) -> None:
    """Rewrite ``segments.json`` atomically (a killed runner leaves the previous version, not half a file)."""
    path = os.path.join(folder, SEGMENTS_FILE)
    text = json.dumps({"spec": spec, "segments": [dataclasses.asdict(s) for s in segments]}, indent=1) + "\n"
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def resume_point(folder: str, budget: int) -> tuple[int, str] | None:
    """
    Latest complete checkpoint of any segment under ``folder`` that is short of ``budget`` decisions.

    :return: ``(decisions, model.zip path)``, or None (start from scratch)
    """
    found = [latest_checkpoint(path) for path in glob.glob(os.path.join(folder, "**", "checkpoints"), recursive=True)]
    found = [point for point in found if point is not None and 0 < point[0] < budget]
    return max(found) if found else None


def drop_checkpoints(folder: str) -> None:
    """Delete the checkpoints of every segment under ``folder`` (the run then starts from scratch next time)."""
    for checkpoints in glob.glob(os.path.join(folder, "**", "checkpoints"), recursive=True):
        shutil.rmtree(checkpoints, ignore_errors=True)


def segment_folder(folder: str, index: int) -> str:
    """rl-zoo3 log folder (``-f``) of the ``index``-th segment (from 0) of the run in ``folder``."""
    return os.path.join(folder, f"seg{index + 1}")


def segment_evaluations(folder: str, count: int) -> list[str | None]:
    """``evaluations.npz`` of each of the ``count`` segments (None for one cut off before its first evaluation)."""
    paths: list[str | None] = []
    for index in range(count):
        found = glob.glob(os.path.join(segment_folder(folder, index), "**", "evaluations.npz"), recursive=True)
        if len(found) > 1:
            raise ValueError(f"segment {index + 1} of {folder} holds {len(found)} evaluations.npz")
        paths.append(found[0] if found else None)
    return paths


def join_segments(decisions: Sequence[np.ndarray | None], resumed_from: Sequence[int]) -> list[np.ndarray | None]:
    """
    Which evaluations of each segment make up the run: those after the step it resumed from and up to
    the earliest step a later segment resumed from (evaluations after that were made again).

    :param decisions: evaluation steps of each segment in segment order (None: it made none)
    :param resumed_from: the step each segment started from (0 for the first)
    :return: a boolean mask per segment (None where it made none)
    """
    if len(decisions) != len(resumed_from):
        raise ValueError(f"{len(decisions)} segments' evaluations for {len(resumed_from)} segments")
    masks: list[np.ndarray | None] = []
    for i, steps in enumerate(decisions):
        if steps is None:
            masks.append(None)
            continue
        later = resumed_from[i + 1 :]
        end = min(later) if later else np.inf
        steps = np.asarray(steps)
        masks.append((steps > resumed_from[i]) & (steps <= end))
    return masks
