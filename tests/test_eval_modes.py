"""``benchmarks/eval_modes.py``: a saved model replayed with fixed and with step-seeded planner samples."""

import os
import sys

import pandas as pd
import pytest

from sb3_m3po import M3PO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import eval_modes  # noqa: E402  (a script of benchmarks/)


def test_both_modes_play_the_same_episodes_and_rows_accumulate(tiny, tmp_path):
    M3PO("MlpPolicy", "Pendulum-v1", seed=0, **tiny).learn(64).save(tmp_path / "model.zip")
    argv = ["Pendulum-v1", str(tmp_path / "model.zip"), "--episodes", "2", "--out", str(tmp_path / "out")]
    eval_modes.main(argv)
    eval_modes.main(argv)
    table = pd.read_csv(tmp_path / "out" / "eval_modes.csv")
    assert table["mode"].tolist() == ["fixed", "step", "fixed", "step"], "each call appends one row per mode"
    assert (table.episodes == 2).all() and table.model.eq("model.zip").all()
    first, second = table.iloc[:2], table.iloc[2:]
    assert first.returns.tolist() == second.returns.tolist(), "the same episodes and seeds give the same returns"
    per_episode = [[float(r) for r in row.split()] for row in table.returns]
    assert table.mean_return.tolist() == pytest.approx([sum(r) / 2 for r in per_episode], abs=1)
    assert "| fixed" in (tmp_path / "out" / "summary.md").read_text()


def test_a_run_folder_without_a_final_model_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no final model under"):
        eval_modes.main(["Pendulum-v1", str(tmp_path)])
