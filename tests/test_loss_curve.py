"""The loss-curve hook: the CSV `dvc plots show` draws, whole after every window, resumable."""

from __future__ import annotations

import pandas as pd

from dgnet.training.hooks import HookList, LossCurve, TrainingHooks, mean_loss_curves


def feed(hook: TrainingHooks, start: int, stop: int, step: int = 10) -> None:
    hook.on_start("dgnet", {}, start)
    for iteration in range(start + step, stop + 1, step):
        hook.on_iteration(iteration, {"loss/total": iteration / 10, "loss/id": 1.0, "lr/generator": 1e-4,
                                      "speed/it_per_s": 3.0})


def test_keeps_the_loss_terms_of_every_window(tmp_path):
    path = tmp_path / "losses.csv"
    feed(HookList([LossCurve(path)]), 0, 30)
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["iteration", "loss/total", "loss/id"]
    assert frame["iteration"].tolist() == [10, 20, 30]
    assert frame["loss/total"].tolist() == [1.0, 2.0, 3.0]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fork_starts_from_its_warm_up_and_a_resumed_run_from_its_own_rows(tmp_path):
    warmup, fork = tmp_path / "warmup.csv", tmp_path / "fork.csv"
    feed(LossCurve(warmup), 0, 40)  # the warm-up ran to 40; the fork starts at 20 (rows > 20 dropped)
    feed(LossCurve(fork, history=warmup), 20, 50)
    assert pd.read_csv(fork)["iteration"].tolist() == [10, 20, 30, 40, 50]
    feed(LossCurve(fork, history=warmup), 30, 40)  # resumed at 30: its own rows, not the warm-up's
    assert pd.read_csv(fork)["iteration"].tolist() == [10, 20, 30, 40]
    fresh = tmp_path / "fresh.csv"
    feed(LossCurve(fresh, history=tmp_path / "missing.csv"), 0, 20)
    assert pd.read_csv(fresh)["iteration"].tolist() == [10, 20]


def test_mean_loss_curves_average_the_seeds_of_each_model(tmp_path):
    seeds = []
    for seed, scale in ((0, 1.0), (1, 3.0)):
        path = tmp_path / f"dgnet_seed{seed}.csv"
        pd.DataFrame({"iteration": [10, 20], "loss/total": [scale, 2 * scale]}).to_csv(path, index=False)
        seeds.append(path)
    teacher = tmp_path / "teacher.csv"
    pd.DataFrame({"iteration": [10], "loss/id": [0.5]}).to_csv(teacher, index=False)
    table = mean_loss_curves({"dgnet": seeds, "teacher": [teacher]})
    assert table.to_dict("records") == [
        {"iteration": 10, "model": "dgnet", "loss": "loss/total", "value": 2.0},
        {"iteration": 20, "model": "dgnet", "loss": "loss/total", "value": 4.0},
        {"iteration": 10, "model": "teacher", "loss": "loss/id", "value": 0.5}]
