"""dvc.yaml's deps cannot drift from the code: every first-party file a stage script imports is a dep.

`dvc status` marks a stage changed only when one of its deps changes, so a module a stage imports
but does not list would let `dvc repro` keep results of code that is no longer there. The import
closure is read statically (ast), including imports inside functions (the stages import lazily).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("dgnet", "dgnet_pipeline")


def module_file(name: str) -> Path | None:
    """The file of first-party module `name` (a package's __init__.py), or None if not ours."""
    if name.split(".")[0] not in FIRST_PARTY:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Modules `path` imports anywhere in its body (`from a.b import c` gives a.b and a.b.c), but
    for a module-level `__getattr__` (PEP 562): it loads only on attribute access, e.g.
    `dgnet.FeatureExtractor`, which first-party code never uses."""
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__")]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_closure(module: str) -> set[Path]:
    """Every first-party file that importing `module` can load, with the packages on the way."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_modules(path))
    return seen


def closure(command: str) -> set[Path]:
    """What a stage's command loads: a stage script (stages/<name>.py) with its imports' closures, or
    a module's closure (`-m dgnet_pipeline.tune`)."""
    if not command.endswith(".py"):
        return import_closure(command)
    script = ROOT / command
    return {script}.union(*(import_closure(name) for name in imported_modules(script)))


def stages() -> list[tuple[str, str, list[str]]]:
    """(stage, script or module its cmd runs, deps) for every stage of dvc.yaml and tuning/dvc.yaml
    (whose stage runs from the repository root, `wdir: ..`)."""
    found = []
    for file, prefix in (("dvc.yaml", ""), ("tuning/dvc.yaml", "tuning:")):
        for name, stage in yaml.safe_load((ROOT / file).read_text())["stages"].items():
            body = stage.get("do", stage)
            match = re.match(r"python (stages/\w+\.py|-m (dgnet_pipeline\.\w+))", body["cmd"])
            if match:
                found.append((prefix + name, match.group(2) or match.group(1),
                              [str(dep) for dep in body.get("deps", [])]))
    return found


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == dep or relative.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize(("stage", "module", "deps"), stages(), ids=[s[0] for s in stages()])
def test_every_imported_file_is_a_dep(stage: str, module: str, deps: list[str]) -> None:
    missing = sorted(p.relative_to(ROOT).as_posix() for p in closure(module) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage!r} ({module}) imports files that are not its deps: {missing}"


def test_the_closure_sees_lazy_imports() -> None:
    # dgnet_pipeline.train imports the trainer in a function: a closure of top-level imports would miss it.
    files = {p.relative_to(ROOT).as_posix() for p in closure("stages/train.py")}
    assert "dgnet/training/trainer.py" in files and "dgnet_pipeline/tracking.py" in files
    assert not any(f.startswith(("torch", "mlflow")) for f in files)


@pytest.mark.parametrize(("stage", "module", "deps"), stages(), ids=[s[0] for s in stages()])
def test_no_python_dep_is_stale(stage: str, module: str, deps: list[str]) -> None:
    """A .py file listed as a dep that the stage no longer imports re-runs it for nothing."""
    loaded = {p.relative_to(ROOT).as_posix() for p in closure(module)}
    stale = sorted(dep for dep in deps if dep.endswith(".py") and dep not in loaded)
    assert not stale, f"dvc.yaml stage {stage!r} ({module}) lists deps it does not import: {stale}"


def test_every_command_line_of_dvc_yaml_parses() -> None:
    """dvc.yaml passes each stage its paths: every resolved `cmd` must parse with its stage's own
    parser (an option renamed in a stage and not in dvc.yaml fails here, not an hour into a run)."""
    # In a child process: DVC's index, built in this one, changes what later in-process `dvc` prints.
    code = ("import json, sys; from dvc.repo import Repo; "
            "print(json.dumps([(s.name, s.cmd) for s in Repo(sys.argv[1]).index.stages]))")
    listed = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert listed.returncode == 0, listed.stderr
    commands = json.loads(listed.stdout.strip().splitlines()[-1])
    checked = 0
    for name, cmd in commands:
        python, script, *args = shlex.split(cmd)
        if script == "-m":  # tuning/dvc.yaml: `python -m dgnet_pipeline.tune`
            script, *args = args
        assert python == "python" and script.startswith(("stages/", "dgnet_pipeline.")), cmd
        build_parser = getattr(importlib.import_module(script.removesuffix(".py").replace("/", ".")),
                               "build_parser", None)
        if build_parser is None:
            assert not args, f"{name}: {script} takes no options, dvc.yaml passes {args}"
            continue
        build_parser().parse_args(args)  # SystemExit (exit 2) on an unknown or malformed option
        checked += 1
    assert checked >= 5  # teacher, warmup, train, ablation, evaluate


def test_the_pipeline_runs_with_no_ablations(tmp_path: Path) -> None:
    """`ablations: {}` (the README: delete an entry to skip it): every dep of every stage is still
    made by another stage or is in git, so `dvc repro` gets to evaluate, and evaluate takes no ablation."""
    from dgnet_pipeline.evaluate import Paths, models_to_evaluate

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ablations"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    code = ("import json, sys; from dvc.repo import Repo; repo = Repo.init(sys.argv[1], no_scm=True); "
            "print(json.dumps([(s.name, [d.def_path for d in s.deps], [o.def_path for o in s.outs]) "
            "for s in repo.index.stages]))")
    listed = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert listed.returncode == 0, listed.stderr
    resolved = json.loads(listed.stdout.strip().splitlines()[-1])
    assert not [name for name, _, _ in resolved if name.startswith("ablation")]
    outs = [out for _, _, stage_outs in resolved for out in stage_outs]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()

    def made_or_tracked(dep: str) -> bool:
        def under(a: str, b: str) -> bool:
            return a == b or a.startswith(b.rstrip("/") + "/")
        return any(under(dep, o) or under(o, dep) for o in outs) or any(under(f, dep) for f in tracked)

    missing = [(name, dep) for name, deps, _ in resolved for dep in deps if not made_or_tracked(dep)]
    assert not missing, f"deps neither made by a stage nor in git: {missing}"
    teachers = tmp_path / "outputs/teacher"
    (teachers / "seed0").mkdir(parents=True)
    (teachers / "seed0/model.pt").write_bytes(b"")
    (teachers / "teachers.json").write_text(json.dumps({"teachers": [{"path": "seed0/model.pt"}]}))
    for seed in params["train"]["seeds"]:
        (tmp_path / f"outputs/dgnet/seed{seed}").mkdir(parents=True)
        (tmp_path / f"outputs/dgnet/seed{seed}/model.pt").write_bytes(b"")
    models = models_to_evaluate(tmp_path, params, Paths.of_dvc(ROOT / "stages" / "evaluate.py"))
    assert not [name for name in models if name.startswith("ablation")] and "dgnet_seed0" in models
