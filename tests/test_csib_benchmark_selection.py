"""``benchmarks/csib.py``'s model selection reads validation RMSE only: per seed, or pooled over the seeds."""

from __future__ import annotations

from benchmarks.csib import acceptance_row, select


def _runs():
    """Two CS-IB settings over 3 seeds: setting A wins seed 0's validation by a hair, B wins on average."""
    val = {("a", 0): 0.50, ("a", 1): 0.70, ("a", 2): 0.70, ("b", 0): 0.51, ("b", 1): 0.60, ("b", 2): 0.61}
    jobs, trained = [], {}
    for (tag, seed), v in val.items():
        hp = {"ib_beta": 0.1 if tag == "a" else 1.0}
        out = f"runs/diabetes/seed{seed}/csib-{tag}"
        job = {"data": "diabetes", "method": "csib", "seed": seed, "hp": hp, "out": out}
        jobs.append(job)
        trained[out] = {**job, "val_rmse": v}
    for seed in range(3):
        out = f"runs/diabetes/seed{seed}/mse"
        job = {"data": "diabetes", "method": "mse", "seed": seed, "hp": {}, "out": out}
        jobs.append(job)
        trained[out] = {**job, "val_rmse": 0.6}
    return jobs, trained


def test_per_seed_and_pooled_selection_use_validation_rmse_only():
    jobs, trained = _runs()
    per_seed = select(jobs, trained, "per-seed")
    pooled = select(jobs, trained, "pooled")
    assert [per_seed[("diabetes", "csib", s)]["out"][-1] for s in range(3)] == ["a", "b", "b"]
    assert [pooled[("diabetes", "csib", s)]["out"][-1] for s in range(3)] == ["b", "b", "b"]
    assert all(pooled[("diabetes", "mse", s)]["seed"] == s for s in range(3))


def test_acceptance_rows_compare_the_chosen_runs_test_results():
    jobs, trained = _runs()
    rows = [{"rmse_pgd": 0.0}] * 10
    reports = {out: {"report": {"rmse_clean": 0.7 if "csib-a" in out else 0.5 if "csib-b" in out else 0.55,
                                "rows": [*rows, {"rmse_pgd": 1.0 if "csib" in out else 1.2}]}}
               for out in trained}
    pooled = acceptance_row("diabetes", "pooled", select(jobs, trained, "pooled"), reports, 3)
    assert pooled["csib_rmse"] == 0.5 and pooled["mse_rmse"] == 0.55 and pooled["csib_rmse_le_mse"]
    assert pooled["csib_pgd_lt_mse_at_max_eps"] and pooled["max_eps"] == 0.5
    per_seed = acceptance_row("diabetes", "per-seed", select(jobs, trained, "per-seed"), reports, 3)
    assert abs(per_seed["csib_rmse"] - (0.7 + 0.5 + 0.5) / 3) < 1e-12 and not per_seed["csib_rmse_le_mse"]
    # paired CS-IB - MSE per seed: +0.15, -0.05, -0.05 (mean 1/60, s.e. sqrt(0.04 / 3) / sqrt(3))
    assert abs(per_seed["rmse_diff"] - 0.05 / 3) < 1e-12
    assert abs(per_seed["rmse_diff_se"] - (0.04 / 3) ** 0.5 / 3 ** 0.5) < 1e-12
    assert abs(pooled["rmse_diff"] + 0.05) < 1e-12 and pooled["rmse_diff_se"] < 1e-12
    assert abs(pooled["pgd_diff"] + 0.2) < 1e-12
