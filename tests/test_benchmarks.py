"""The benchmark harness's own logic (benchmarks/), without timing anything: compare_torch's
ratios, steal summary, breakdown and tables, and timing_worker's helpers. Standard library
only, as those scripts are (they also run in PyTorch's virtualenv)."""
import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import compare_torch  # noqa: E402
import timing_worker  # noqa: E402


def test_committed_run_renders_its_table():
    """--render of the committed vid-jax / PyTorch run gives the figures of its table."""
    with open(os.path.join(BENCHMARKS, "results", "jax_vs_torch_x86_64_cpu.json")) as f:
        payload = json.load(f)
    for row in payload["results"]:
        compare_torch.add_steal_summary(row)
    table = compare_torch.markdown(payload["results"], payload["vid_i_breakdown"], payload)
    assert "| vid-jax images/s | PyTorch images/s |" in table
    assert ("| vid_i | WRN-16-1 <- WRN-40-2 | 128 | 119.1 | 152.7 | 0.77 | 0.71-0.84 | "
            "0.77 (5) | 6.7 | 0.9 | 0% |") in table
    assert "| vid-jax | 128 | 1.075 | 0.439 | 0.403 | 0.234 | 27.8% |" in table


def _row(step, first, second, steal_first=0.0, steal_second=0.0):
    """A row of the setting-vs-default kind, two rounds of one step each."""
    row = {"step": step, "batch_size": 8, "model": "m", "setting_compile_seconds": 1.0,
           "default_compile_seconds": 2.0, "round_ratios": [second / first, 1.0],
           "ratio": second / first, "ratio_min": 1.0, "ratio_max": second / first,
           "steal_share": {"setting": [steal_first, 0.0], "default": [steal_second, 0.0]}}
    for side, seconds in (("setting", first), ("default", second)):
        row.update({f"{side}_median_step_seconds": seconds,
                    f"{side}_median_images_per_sec": 8 / seconds})
    compare_torch.add_steal_summary(row)
    return row


def test_steal_summary_keeps_quiet_rounds_only():
    row = _row("student", 0.5, 1.0, steal_second=0.2)
    assert row["max_steal_share"] == 0.2
    assert row["quiet_rounds"] == 1 and row["ratio_quiet"] == 1.0


def test_setting_against_default_table_and_breakdown():
    rows = [_row("vid_i", 1.0, 1.2), _row("teacher_forward", 0.4, 0.5),
            _row("student", 0.3, 0.3)]
    parts = [p for side in compare_torch.SETTING_SIDES
             for p in compare_torch.breakdown(rows, side)]
    assert [(p["framework"], p["distillation_seconds"]) for p in parts] == [
        ("setting", 0.3), ("default", 0.4)]
    about = {"jax_version": "0", "devices": 2}
    meta = {"machine": "x", "cpu_count": 2, "rounds": 2, "block": 1, "warmup": 0,
            "date": "d", "sides": compare_torch.SETTING_SIDES, "env": {"PJRT_NPROC": "1"},
            "setting": about, "default": about}
    table = compare_torch.markdown(rows, parts, meta)
    assert "# setting vs default" in table
    assert "| setting images/s | default images/s |" in table
    assert "| setting compile (s) | default compile (s) |" in table
    assert "PJRT_NPROC='1' added" in table
    assert "| side | batch |" in table


def test_parse_env():
    assert compare_torch.parse_env(["A=1", "XLA_FLAGS=--x=2 --y"]) == {
        "A": "1", "XLA_FLAGS": "--x=2 --y"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        compare_torch.parse_env(["A"])


def test_write_json_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "out.json"
    timing_worker.write_json(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["out.json"]


def test_steal_and_percent():
    with timing_worker.Steal() as steal:
        pass
    assert steal.share is None or steal.share >= 0.0
    assert timing_worker.percent(None) == "-"
    assert timing_worker.percent(0.123) == "12%"
