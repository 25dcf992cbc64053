"""``benchmarks/soundness_campaign.py`` passes on the engine and finds planted bugs: bounds narrowed below the truth,
and ``unsat`` answered where a counterexample is known."""

from __future__ import annotations

import types

import pytest

from benchmarks import soundness_campaign as campaign


def test_the_engine_passes_a_short_campaign(capsys):
    assert campaign.main(["--bounds", "4", "--pipeline", "0"]) == 0
    out = capsys.readouterr().out
    assert "findings: 0" in out and "attention/crown/ok" in out


def test_narrowed_bounds_are_found(monkeypatch, capsys):
    import verify

    real = verify.bound

    def narrowed(*args, **kwargs):
        lo, hi = real(*args, **kwargs)
        mid = (lo + hi) / 2
        return mid - 1e-9, mid + 1e-9  # far inside the true range on any box of radius >= 1e-3

    monkeypatch.setattr(verify, "bound", narrowed)
    assert campaign.main(["--bounds", "2", "--pipeline", "0", "--first-seed", "1"]) == 1
    captured = capsys.readouterr()
    assert "FINDING bounds seed 1" in captured.out
    # also on stderr as soon as found, with the progress lines
    assert "FINDING bounds seed 1" in captured.err and "networks bounded 2/2, findings" in captured.err


def test_unsat_on_a_witnessed_property_is_found(monkeypatch, capsys):
    import verify.pipeline

    monkeypatch.setattr(verify.pipeline, "verify_instance", lambda *a, **k: types.SimpleNamespace(status="unsat"))
    code = campaign.main(["--bounds", "0", "--pipeline", "6", "--first-seed", "3"])
    out = capsys.readouterr().out
    # some instances are witnessed (unsat is wrong there), the open ones are attacked again
    assert code == 1 and "FINDING pipeline" in out and "BUG unsat" in out


@pytest.mark.parametrize("argv", [["--bounds", "-1"], ["--timeout", "nan"], ["--timeout", "0"]])
def test_bad_options_exit_2(argv):
    with pytest.raises(SystemExit) as e:
        campaign.main(argv)
    assert e.value.code == 2


@pytest.mark.slow
def test_a_longer_campaign_finds_nothing(capsys):
    """``pytest -m slow``: 300 networks and 60 instances from seeds the default suite does not draw (~4 min)."""
    assert campaign.main(["--bounds", "300", "--pipeline", "60", "--first-seed", "50000"]) == 0
    assert "findings: 0" in capsys.readouterr().out
