"""``clarke pde``: --out is checked before training, a run is never overwritten silently, malformed run files give
one line, metric keys carry their units, --help shows defaults; the Python API refuses invalid numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from physics.errors import PhysicsError
from physics.train import TrainConfig, load
from verify.cli.main import main

TINY = ["--problem", "heat", "--constraint", "hard", "--backbone", "mlp", "--width", "4", "--layers", "1",
        "--basis", "2", "--nt", "5", "--nx", "8", "--n-test", "1", "--batch", "1", "--max-iter", "3", "--steps", "1",
        "--points", "10", "--device", "cpu"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clarke: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pde") / "run"
    assert main(["pde", "train", *TINY, "--out", str(out)]) == 0
    return out


def test_metrics_and_history_keys_say_their_units(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert {"test_rel_l2_pct", "test_rel_l2_std_pct", "infer_seconds", "nonconverged"} <= set(metrics)
    assert not {"test_rel_l2", "infer_time"} & set(metrics)
    assert math.isfinite(metrics["test_rel_l2_pct"]) and metrics["infer_seconds"] >= 0
    assert "step_seconds" in json.loads((trained / "history.json").read_text())


def test_existing_run_is_refused_unless_overwrite(capsys, trained):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    one_line(*run(capsys, "pde", "train", *TINY, "--out", trained)[::2], "--overwrite", str(trained))
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before  # untouched
    code, out, _ = run(capsys, "pde", "train", *TINY, "--out", trained, "--overwrite")
    assert code == 0 and "test_rel_l2_pct" in json.loads(out.strip().splitlines()[-1])


def test_out_is_checked_before_training(capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line(*run(capsys, "pde", "train", *TINY, "--out", a_file)[::2], "not a directory")
    one_line(*run(capsys, "pde", "train", *TINY, "--out", a_file / "run")[::2], "not a directory")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    one_line(*run(capsys, "pde", "train", *TINY, "--out", other)[::2], "already holds files")
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    code, _, _ = run(capsys, "pde", "train", *TINY, "--out", tmp_path / "new" / "deeper")
    assert code == 0 and (tmp_path / "new" / "deeper" / "metrics.json").is_file()


@pytest.mark.parametrize("config", ["{", "[]", '{"frobnicate": 1}', '{"lr": NaN}', '{"steps": -1}', ""])
def test_malformed_config_is_one_line(capsys, tmp_path, trained, config):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for p in trained.iterdir():
        (run_dir / p.name).write_bytes(p.read_bytes())
    (run_dir / "config.json").write_text(config)
    one_line(*run(capsys, "pde", "eval", run_dir, "--no-plots")[::2], "config.json", "malformed")


def test_broken_weights_and_missing_run_are_one_line(capsys, tmp_path, trained):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text((trained / "config.json").read_text())
    one_line(*run(capsys, "pde", "eval", run_dir)[::2], "backbone.pt")
    (run_dir / "backbone.pt").write_bytes(b"not a torch file")
    one_line(*run(capsys, "pde", "eval", run_dir)[::2], "backbone.pt")
    one_line(*run(capsys, "pde", "eval", tmp_path / "none")[::2], "none")
    one_line(*run(capsys, "pde", "eval", trained / "metrics.json")[::2], "metrics.json")


def test_help_of_every_pde_command_shows_defaults(capsys):
    for cmd in (["pde"], ["pde", "train"], ["pde", "eval"]):
        code, out, _ = run(capsys, *cmd, "--help")
        assert code == 0 and "Exit status" in out
    _, out, _ = run(capsys, "pde", "train", "--help")
    text = " ".join(out.split())
    for default in ("(default: 1000)", "(default: 16)", "(default: fno)", "(default: 0.001)", "(default: local)",
                    "(default: auto)", "(default: 1.0)"):
        assert default in text, default


@pytest.mark.parametrize("kw", [{"lr": math.nan}, {"lr": 0.0}, {"lr": math.inf}, {"clip": -1.0}, {"steps": -1},
                                {"points": 0}, {"experts": 0}, {"experts": (1, 0)}, {"batch": 2.5}, {"seed": -1},
                                {"interface_weight": math.nan}, {"train_time_fraction": math.nan}, {"nt": 2},
                                {"gtol": math.inf}, {"dtype": "float16"}])
def test_python_api_raises_value_error_for_invalid_numbers(kw):
    with pytest.raises(ValueError):
        TrainConfig(**kw)
    with pytest.raises(PhysicsError):  # and the CLI's one-line error type
        TrainConfig(**kw)


def test_load_of_a_missing_run_is_a_physics_error(tmp_path):
    with pytest.raises(PhysicsError, match="no config.json"):
        load(tmp_path)
