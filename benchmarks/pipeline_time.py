"""Where a `dvc repro` spends its time, from the MLflow runs it made.

    python benchmarks/pipeline_time.py [--tracking-uri sqlite:///mlflow.db] [--experiment dgnet]
                                       [--since UNIX_SECONDS] [--write]

Every training stage is one MLflow run (the teacher stage: one per seed, under an umbrella run)
whose iteration logs carry `time/iteration` (the step: reading the batch, forward, backward,
optimisers) and `time/data` (the part of it spent waiting for the batch), means over each window of
`log_every` iterations. A run's wall time minus its iterations is the rest of the run: evaluations,
swap-grid pictures, checkpoints, logging the model. Between one run's end and the next one's start
lie the stage's start-up (imports, reading the data, building the networks), the end of the
previous stage, and DVC's own work. The evaluate stage makes no run: its time is what follows the
last run, when `--end` (the `dvc repro`'s end) is given. Prints the table; `--write` puts it in
benchmarks/RESULTS.md and RESULTS.json. Needs mlflow (the `pipeline` extra).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module
import common


def step_seconds(client: Any, run_id: str, name: str) -> tuple[float, int]:
    """Sum over a run's windows of (mean seconds of `name`) x (iterations in the window); iterations."""
    history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
    if not history:
        return 0.0, 0
    steps = [m.step for m in history]
    first = statistics.median(numpy.diff(steps)) if len(steps) > 1 else steps[0]  # the first: typical
    windows = numpy.diff(steps, prepend=steps[0] - first)
    return float(numpy.dot([m.value for m in history], windows)), int(steps[-1] - (steps[0] - first))


def runs_of(client: Any, experiment: str, since: float) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        sys.exit(f"pipeline_time: no MLflow experiment {experiment!r} in this store")
    runs = client.search_runs([found.experiment_id], f"attributes.start_time >= {int(since * 1000)}",
                              max_results=1000)
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}  # a stage's umbrella run (teacher)
    return sorted((r for r in runs if r.info.end_time and r.info.run_id not in parents),
                  key=lambda r: r.info.start_time)


def table(client: Any, runs: list[Any], end: float | None) -> tuple[list[list[str]], dict[str, float]]:
    """One row of cells per run, then the totals; the totals by kind."""
    rows, totals, previous_end = [], dict.fromkeys(("wall", "steps", "data", "rest", "between"), 0.0), None
    for run in runs:
        wall = (run.info.end_time - run.info.start_time) / 1000
        steps, iterations = step_seconds(client, run.info.run_id, "time/iteration")
        data, _ = step_seconds(client, run.info.run_id, "time/data")
        before = (run.info.start_time - previous_end) / 1000 if previous_end else 0.0
        previous_end = run.info.end_time
        per = f"{steps / iterations:.3f}" if iterations else ""
        rows.append([run.info.run_name, f"{wall:.0f}", iterations, f"{steps:.0f}", per, f"{data:.1f}",
                     f"{wall - steps:.0f}", f"{before:.0f}"])
        for key, value in zip(totals, (wall, steps, data, wall - steps, before), strict=True):
            totals[key] += value
    rows.append(["**all runs**", f"{totals['wall']:.0f}", "", f"{totals['steps']:.0f}", "",
                 f"{totals['data']:.1f}", f"{totals['rest']:.0f}", f"{totals['between']:.0f}"])
    if end and previous_end:
        totals["after"] = end - previous_end / 1000
        rows.append(["after the last run (evaluate stage)", f"{totals['after']:.0f}", *[""] * 6])
    return rows, totals


def main(argv: list[str] | None = None) -> int:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="dgnet")
    parser.add_argument("--since", type=float, default=0.0, help="only runs started after (Unix seconds)")
    parser.add_argument("--start", type=float, help="the dvc repro's start (Unix seconds): its total")
    parser.add_argument("--end", type=float, help="the dvc repro's end (Unix seconds)")
    parser.add_argument("--note", default="", help="a sentence on the machine's load, put in the section")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    client = mlflow.MlflowClient(args.tracking_uri)
    runs = runs_of(client, args.experiment, args.since or args.start or 0.0)
    if not runs:
        sys.exit("pipeline_time: no finished runs in that window")
    rows, totals = table(client, runs, args.end)
    summary = []
    if args.start and args.end:
        first, total = runs[0].info.start_time / 1000, args.end - args.start
        summary.append(f"`dvc repro` wall time {total:.0f} s ({total / 60:.1f} min): "
                       f"{first - args.start:.0f} s before the first run (data, validate, the first stage's "
                       "start-up), "
                       f"{totals['wall']:.0f} s inside the runs, {totals['between']:.0f} s between them, "
                       f"{totals.get('after', 0):.0f} s after the last (evaluate).")
    summary.append(f"Inside the runs: {totals['steps']:.0f} s of training iterations (of which "
                   f"{totals['data']:.1f} s waiting for data), {totals['rest']:.0f} s for evaluations, "
                   "pictures, checkpoints and model logging.")
    columns = ["run", "wall (s)", "iterations", "iterations (s)", "s / iteration", "of which data (s)",
               "rest of the run (s)", "before the run (s)"]
    print("\n".join([" | ".join(map(str, row)) for row in [columns, *rows]] + summary))
    if args.write:
        name = "pipeline_time-dvc-repro"
        given = argv if argv is not None else sys.argv[1:]
        common.write_results(args.results, name, {
            "title": "Where a `dvc repro` spends its time (`benchmarks/pipeline_time.py`)",
            "command": "python benchmarks/pipeline_time.py " + shlex.join(given),
            "machine": common.machine(), "totals": totals, "columns": columns, "table": rows,
            "text": [f"From the MLflow runs of one `dvc repro`. {args.note}".strip(),
                     "Steps = `time/iteration` summed over the iterations (forward, backward, "
                     "optimisers); the rest of a run = evaluations, pictures, checkpoints, model logging; "
                     "before the run = the stage's start-up and DVC's work since the previous run ended.",
                     *summary]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
