"""benchmarks.seeds: several benchmarks.feature_cache seeds read back into one mean ± spread table."""

import json

from benchmarks.seeds import _feature_cache_runs, table


def _folder(tmp_path, seed, top1, curve_top1):
    folder = tmp_path / f"seed{seed}"
    folder.mkdir()
    (folder / "environment.json").write_text(json.dumps({"config": {"seed": seed}}))
    curve = [{"epoch": i + 1, "train_seconds": 10.0 * (i + 1), "top1": t} for i, t in enumerate(curve_top1)]
    (folder / "fashion-SNOW_cached.json").write_text(json.dumps({"top1": top1, "curve": curve}))
    return folder


def test_feature_cache_folders_give_one_row_per_seed_and_time_to_accuracy(tmp_path):
    rows = _feature_cache_runs([_folder(tmp_path, 0, 90.0, [50.0, 86.0, 90.0]),
                                _folder(tmp_path, 1, 80.0, [40.0, 70.0, 80.0])])
    assert [(r["method"], r["dataset"], r["seed"]) for r in rows] == [("SNOW cached", "fashion", 0),
                                                                       ("SNOW cached", "fashion", 1)]
    line = table(rows, "fashion").splitlines()[-1]
    # 95 % of the best final top-1 (90) is 85.5: seed 0 reaches it at 20 s, seed 1 never does.
    assert line == "| SNOW cached | 2 | 85.00 (80.00 – 90.00) | 90.00 / 80.00 | 20 s (1/2) |"


def test_experiment_label_names_its_overrides(tmp_path):
    from benchmarks.seeds import _runs

    for name, overrides in (("baseline", []), ("pruned_copy", []), ("pruned_copy", ["snow_lr=0.03"])):
        stem = "-".join([name, *(o.replace("=", "") for o in overrides), "mnist", "seed0"])
        (tmp_path / f"{stem}.json").write_text(json.dumps({
            "experiment": name, "overrides": overrides, "dataset": {"name": "mnist"}, "seed": 0, "top1": 90.0,
            "loop": {"curve": []}}))
    assert sorted(r["method"] for r in _runs(tmp_path, [])) == ["SNOW", "SNOW pruned_copy",
                                                                "SNOW pruned_copy snow_lr=0.03"]
