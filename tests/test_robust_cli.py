"""``clarke train`` / ``clarke evaluate``: the run directory is complete, an existing run is never touched without
--resume / --overwrite, a resumed run ends with the weights of an uninterrupted one, bad options and files give
one error line (exit 2), and evaluate reports (and refuses) as documented."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_model
from verify.cli.main import main

# Tiny but real: 150 digits, 3 steps per epoch, 2-step PGD; one epoch takes well under a second on a CPU.
TINY = ["--data", "digits", "--model", "mlp-small", "--method", "pgd-at", "--eps", "0.1", "--subset", "150",
        "--test-subset", "40", "--batch-size", "50", "--pgd-steps", "2", "--val-points", "30",
        "--val-pgd-steps", "2", "--device", "cpu", "--no-progress"]
# Evaluation of a few points with cheap attacks (the defaults run 100-step APGD on 1000 points).
QUICK_EVAL = ["--points", "30", "--attacks", "pgd20", "--apgd-steps", "5", "--no-progress"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clarke: error: "), err
    assert "internal error" not in lines[0], lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its mtime and contents: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch run, shared by the tests that only read it (copy it before changing anything)."""
    out = tmp_path_factory.mktemp("robust") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


def test_train_writes_the_run_directory(trained, capsys):
    for name in ("config.json", "metrics.csv", "model.onnx", "training_curves.png", "model/model.json",
                 "model/weights.safetensors", "checkpoints/epoch-0001.pt", "checkpoints/epoch-0002.pt"):
        assert (trained / name).is_file(), name
    cfg = json.loads((trained / "config.json").read_text())
    assert (cfg["method"], cfg["epochs"], cfg["subset"], cfg["eps"]) == ("pgd-at", 2, 150, 0.1)
    rows = (trained / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (trained / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_lists_every_field_with_its_default(capsys):
    from dataclasses import fields

    from robust_train.cli import FIELD_HELP
    from robust_train.config import TrainConfig

    assert {f.name for f in fields(TrainConfig)} == set(FIELD_HELP)  # a new field needs its help line
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for needle in ("--eps X l_inf radius", "(default: 0.1)", "--epochs N training epochs (default: 10)",
                   "--batch-size N", "(default: 128)", "--method {standard,pgd-at,", "--resume", "--overwrite",
                   "--config FILE", "--lr-schedule {constant,cosine,step}", "(default: cosine)", "--no-plots"):
        assert needle in flat, needle
    code, out, _ = run(capsys, "evaluate", "--help")
    flat = " ".join(out.split())
    assert code == 0 and "(default: pgd20,pgd50,apgd-ce,apgd-t)" in flat and "(default: crown)" in flat
    assert "(default: 1000)" in flat and "RUN" in flat


def test_existing_run_is_refused_and_left_untouched(trained, capsys):
    before = snapshot(trained)
    one_line(*run(capsys, "train", *TINY, "--epochs", "2", "--out", trained)[::2], "exists", str(trained))
    # a different config with --resume is refused by name, also before anything is written
    one_line(*run(capsys, "train", *TINY, "--epochs", "3", "--out", trained, "--resume")[::2],
             "config differs in epochs")
    assert snapshot(trained) == before


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(trained, tmp_path, capsys):
    # A run stopped after epoch 1: its epoch-2 checkpoint, final weights and curves were never written.
    stopped = tmp_path / "stopped"
    shutil.copytree(trained, stopped)
    for name in ("checkpoints/epoch-0002.pt", "model.onnx", "training_curves.png"):
        (stopped / name).unlink()
    shutil.rmtree(stopped / "model")
    epoch1 = snapshot(stopped / "checkpoints")["epoch-0001.pt"]
    first_row = (stopped / "metrics.csv").read_text().splitlines()[1]
    # --resume alone: the run's own config.json is the starting point
    code, out, err = run(capsys, "train", "--out", stopped, "--resume", "--no-progress", "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["epoch"] == 2 and metrics["run"] == str(stopped)
    rows = (stopped / "metrics.csv").read_text().splitlines()
    # continued, not restarted: epoch 1's checkpoint and metrics row (its timings) are the stopped run's
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"] and rows[1] == first_row
    assert snapshot(stopped / "checkpoints")["epoch-0001.pt"] == epoch1
    a, _ = load_model(trained / "model")
    b, _ = load_model(stopped / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (stopped / "model.onnx").is_file() and (stopped / "training_curves.png").is_file()


def test_corrupt_checkpoint_on_resume_is_named(trained, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "checkpoints/epoch-0002.pt").write_bytes(b"not a checkpoint")
    before = snapshot(broken)
    one_line(*run(capsys, "train", "--out", broken, "--resume", "--no-progress")[::2], "epoch-0002.pt", "corrupt")
    assert snapshot(broken) == before


@pytest.mark.parametrize("argv, needle", [
    (["--eps", "nan"], "--eps"), (["--eps", "-1"], "--eps"), (["--eps", "inf"], "--eps"),
    (["--method", "nope"], "--method"), (["--epochs", "0"], "--epochs"), (["--model", "resnet"], "--model"),
    (["--r", "nan"], "--r"), (["--lr", "0"], "--lr"), (["--subset", "0"], "--subset"),
    (["--tau", "1.5"], "--tau"), (["--resume", "--overwrite"], "not allowed with"),
])
def test_bad_options_give_one_line(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    one_line(*run(capsys, "train", *TINY, "--out", out, *argv)[::2], needle)
    assert not out.exists()


def test_inf_radius_and_none_are_accepted(tmp_path):
    from robust_train.cli import build_config
    from verify.cli.main import build_parser

    args = build_parser("train").parse_args(["train", "--method", "done", "--r", "inf", "--subset", "none",
                                             "--out", str(tmp_path / "x")])
    cfg = build_config(args)
    assert cfg.r == float("inf") and cfg.subset is None and cfg.method == "done"


def test_missing_dataset_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    one_line(*run(capsys, "train", *TINY, "--data", "fashion-mnist", "--data-dir", tmp_path / "nothing",
                  "--out", out)[::2], "fashion-mnist", "not found")
    assert not out.exists()


def test_config_file_with_overrides_and_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "from-config"
    code, stdout, err = run(capsys, "train", "--config", trained / "config.json", "--epochs", "1", "--out", out,
                            "--no-progress", "--json")
    assert code == 0, err
    line = stdout.strip()
    assert "\n" not in line and json.loads(line)["epoch"] == 1
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["epochs"], cfg["subset"], cfg["method"], cfg["out"]) == (1, 150, "pgd-at", str(out))
    assert (out / "training_curves.png").is_file()
    # --overwrite replaces the run (and --no-plots leaves no stale curves behind)
    code, stdout, err = run(capsys, "train", "--config", out, "--lr", "0.01", "--overwrite", "--no-plots")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["lr"] == 0.01
    assert not (out / "training_curves.png").exists() and str(out) in stdout
    # a malformed --config is one line naming it
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    one_line(*run(capsys, "train", "--config", bad, "--out", tmp_path / "never")[::2], "bad.json")
    bad.write_text('{"epochs": 1, "colour": "red"}')
    one_line(*run(capsys, "train", "--config", bad, "--out", tmp_path / "never")[::2], "colour")
    assert not (tmp_path / "never").exists()


def test_evaluate_json_report_and_files(trained, tmp_path, capsys):
    run_dir = tmp_path / "ev"
    shutil.copytree(trained, run_dir)
    code, out, err = run(capsys, "evaluate", run_dir, *QUICK_EVAL, "--attacks", "pgd20,apgd", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["attacks"] == ["pgd20", "apgd-ce", "apgd-t"] and report["certify"] == ["crown"]
    assert report["n"] == 30 and report["eps"] == 0.1  # the run's eps by default
    for key in ("clean_accuracy", "robust_accuracy", "certified_accuracy", "ra_tail_30", "certified_tail_30"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["certified_accuracy"] <= report["robust_accuracy"] <= report["clean_accuracy"]
    assert json.loads((run_dir / "eval.json").read_text()) == report
    assert (run_dir / "per_class.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_table_and_options(trained, tmp_path, capsys):
    report = tmp_path / "sub" / "report.json"
    report.parent.mkdir()
    code, out, err = run(capsys, "evaluate", trained, *QUICK_EVAL, "--eps", "0", "--certify", "ibp,crown",
                         "--split", "val", "--out", report, "--no-plots", "--device", "cpu")
    assert code == 0, err
    for needle in ("clean", "attack pgd20", "certified ibp", "RA-Tail-30", "certified tail-30", str(report)):
        assert needle in out, needle
    data = json.loads(report.read_text())
    assert data["eps"] == 0 and data["split"] == "val" and data["certified_accuracy"] == data["clean_accuracy"]
    code, out, err = run(capsys, "evaluate", trained, "--points", "5", "--attacks", "none", "--certify", "none",
                         "--out", report, "--no-plots", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["attacks"] == [] and data["certify"] == [] and data["robust_accuracy"] is None


def test_evaluate_refusals(trained, tmp_path, capsys):
    one_line(*run(capsys, "evaluate", tmp_path)[::2], "not a training run directory")
    one_line(*run(capsys, "evaluate", tmp_path / "missing")[::2], "no such run directory")
    one_line(*run(capsys, "evaluate", trained, "--attacks", "fgsm")[::2], "--attacks", "fgsm")
    one_line(*run(capsys, "evaluate", trained, "--eps", "nan")[::2], "--eps")
    one_line(*run(capsys, "evaluate", trained, "--device", "tpu")[::2], "--device", "tpu")
    if not torch.cuda.is_available():
        one_line(*run(capsys, "evaluate", trained, *QUICK_EVAL, "--device", "cuda")[::2], "no CUDA GPU")
    broken = tmp_path / "broken"
    shutil.copytree(trained, broken, ignore=shutil.ignore_patterns("checkpoints"))
    (broken / "model" / "weights.safetensors").write_bytes(b"\0garbage")
    one_line(*run(capsys, "evaluate", broken, *QUICK_EVAL)[::2], "weights.safetensors")
    (broken / "config.json").write_text("[1, 2]")
    one_line(*run(capsys, "evaluate", broken, *QUICK_EVAL)[::2], "config.json", "malformed")
    assert not (broken / "eval.json").exists()


def test_soundness_error_is_an_error_not_an_answer(trained, tmp_path, capsys, monkeypatch):
    import robust_train.evaluate as ev

    def unsound(*args, **kwargs):
        raise ev.SoundnessError("point 3: certified but attacked")

    monkeypatch.setattr(ev, "evaluate", unsound)
    report = tmp_path / "eval.json"
    one_line(*run(capsys, "evaluate", trained, *QUICK_EVAL, "--out", report)[::2],
             "soundness check failed: point 3")
    assert not report.exists()


def test_standalone_module_entry_point(tmp_path, capsys):
    from robust_train.cli import main as standalone

    assert standalone(["evaluate", str(tmp_path)]) == 2
    one_line(2, capsys.readouterr().err, "not a training run directory")
    assert standalone(["train", "--eps", "nan"]) == 2
    one_line(2, capsys.readouterr().err, "--eps")


def test_clarke_console_script(trained, tmp_path):
    exe = Path(sys.executable).parent / "clarke"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "verify.cli.main"]
    report = tmp_path / "e.json"
    proc = subprocess.run([*cmd, "evaluate", str(trained), "--points", "10", "--attacks", "pgd20",
                           "--certify", "ibp", "--json", "--no-progress", "--no-plots", "--out", str(report)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 10 and report.is_file()
    proc = subprocess.run([*cmd, "train", "--epochs", "0"], capture_output=True, text=True, timeout=120)
    one_line(proc.returncode, proc.stderr, "--epochs")


def test_exported_properties_get_the_same_verdicts_from_clarke_verify(trained, tmp_path, capsys):
    """Every point the evaluation certified is `unsat` for `clarke verify`, every attacked one `sat`."""
    folder = tmp_path / "props"
    code, out, err = run(capsys, "evaluate", trained, *QUICK_EVAL, "--points", "12", "--eps", "0.02",
                         "--export-vnnlib", folder, "--out", tmp_path / "eval.json", "--no-plots")
    assert code == 0, err
    rows = (folder / "expected.csv").read_text().splitlines()[1:]
    assert len(rows) == 12 and (folder / "model.onnx").is_file()
    verdicts = [r.split(",")[3] for r in rows]
    assert "unsat" in verdicts  # a certified point exists at this small radius
    report = json.loads((tmp_path / "eval.json").read_text())
    assert verdicts.count("unsat") == round(report["certified_accuracy"] * 12)
    code, out, err = run(capsys, "verify", "--instances", folder / "instances.csv", "--report", tmp_path / "r.csv")
    assert code == 0, err
    with open(tmp_path / "r.csv", newline="") as f:
        got = {r["vnnlib"]: r for r in csv.DictReader(f)}
    for row, want in zip(rows, verdicts, strict=True):
        status = got[row.split(",")[1]]["status"]
        if want:
            assert status == want, row
        assert status != "error", row


def test_config_file_schedules_follow_a_new_method_or_epoch_count(trained, tmp_path):
    """--config from a pgd-at run with --method ibp --epochs 10: warm-up and ramp are IBP's defaults for 10 epochs
    (1 and 5), not the saved pgd-at zeros; an explicit --ramp-epochs still wins."""
    from robust_train.cli import add_parser, build_config
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--config", str(trained / "config.json"), "--method", "ibp", "--epochs", "10"])
    cfg = build_config(args)
    assert (cfg.method, cfg.epochs, cfg.warmup_epochs, cfg.ramp_epochs) == ("ibp", 10, 1.0, 5.0)
    args = parser.parse_args(["train", "--config", str(trained / "config.json"), "--method", "ibp",
                              "--ramp-epochs", "3"])
    assert build_config(args).ramp_epochs == 3.0
