"""``bogc tune``: what is tuned (one recipe, or every dataset x method cell of a sweep), the trial loop of
one process, worker processes for ``--jobs`` / ``--gpus``, and what a tune leaves behind.

Each target (a recipe, or a sweep cell) is one Optuna study named ``<dataset>/<method>``, maximising the
validation score (trial.py: accuracy, micro-F1 for multilabel, minus MAE for regression), with a TPE sampler and (unless ``--pruner none``) a median pruner, all in
one storage (study.py). Every target gets the same ``--trials``: the fair-tuning budget. When a target's
trials are done, ``<out>/<experiment>-tune/best/<dataset>/<method>.yaml`` is its recipe with the best
parameters (``bogc train`` it with the seeds to report) and ``<method>.trials.csv`` its trials; a sweep
also gets ``best/sweep.yaml``, the same sweep over the tuned recipes (``bogc reproduce`` it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.table import Table

from bogc_cli.atomic import write_text
from bogc_cli.engine.graceful_stop import signal_on_parent_death
from bogc_cli.engine.setup import run_dir_for, run_identity
from bogc_cli.errors import UserError
from bogc_cli.recipe import Recipe, apply_overrides, load_recipe, parse_overrides, read_yaml
from bogc_cli.tune.space import SearchSpace, load_space, space_file

INTERRUPT_GRACE_S = 10.0


#: What a trial's value is, in words (tune/trial.py: eval.json's best validation score, as tasks.record_score signs it).
OBJECTIVE = "the run's selection metric: accuracy, micro-F1 for multilabel, minus MAE for regression"


@dataclass
class Target:
    """One study: ``recipe_path`` with ``overrides`` (the user's ``--set``, or a sweep cell's), tuned at
    ``seed`` over ``space``; trials go below ``root`` = ``<out>/<experiment>-tune``."""

    recipe_path: Path
    overrides: list[str]
    base: Recipe
    space: SearchSpace
    seed: int
    root: Path

    @property
    def name(self) -> str:
        who = run_identity(self.base)
        return f"{who['dataset']}/{who['method']}"

    def _tag(self, slot: int) -> str:
        return f"{self.base.method.tag}-trial{slot}" if self.base.method.tag else f"trial{slot}"

    def trial_overrides(self, slot: int, values: dict[str, Any]) -> list[str]:
        return [*self.overrides, *SearchSpace.overrides(values), f"experiment={self.root.name}",
                f"output.dir={self.root.parent}", f"method.tag={self._tag(slot)}"]

    def trial_recipe(self, slot: int, values: dict[str, Any]) -> Recipe:
        """The single-seed recipe of trial slot ``slot`` with ``values``; ``UserError`` if the recipe refuses them."""
        return load_recipe(self.recipe_path, self.trial_overrides(slot, values)).for_seed(self.seed)

    def trial_folder(self, slot: int) -> Path:
        """``<root>/<dataset>/<method>-trial<slot>``: the folder above the trial's seed directory."""
        return run_dir_for(load_recipe(self.recipe_path, self.trial_overrides(slot, {})).for_seed(self.seed)).parent

    def best_recipe(self) -> Path:
        who = run_identity(self.base)
        return self.root / "best" / who["dataset"] / f"{who['method']}.yaml"


# ---------------------------------------------------------------------------------------------- targets


def targets_for(recipe: Path, space: Path, overrides: list[str], seed: int | None,
                out: Path | None) -> tuple[list[Target], dict | None]:
    """The studies of a tune: ``recipe`` alone, or each (dataset, method) cell of a sweep file (its first
    seed unless ``seed``). Every space file is read and checked against its recipe before anything runs.
    Returns the targets and, for a sweep, the sweep's fields (for best/sweep.yaml)."""
    data = read_yaml(recipe)
    if "methods" in data and "datasets" in data:
        return _sweep_targets(recipe, space, overrides, seed, out)
    if out is not None:
        overrides = [*overrides, f"output.dir={out}"]
    base = load_recipe(recipe, overrides)
    return [_target(recipe, overrides, base, space, None, seed)], None


def _target(recipe: Path, overrides: list[str], base: Recipe, space: Path, entry: str | None,
            seed: int | None) -> Target:
    from bogc_cli.fusion import METHODS

    method = base.method.name
    found = load_space(space_file(space, method, entry), recipe, overrides, method, METHODS[method].Options.model_fields)
    root = Path(base.output.dir) / f"{base.experiment}-tune"
    return Target(recipe, overrides, base, found, base.run_seeds()[0] if seed is None else seed, root)


def _sweep_targets(path: Path, space: Path, overrides: list[str], seed: int | None,
                   out: Path | None) -> tuple[list[Target], dict]:
    from bogc_cli.sweep.plan import make_plan

    if overrides:
        raise UserError("--set is for a recipe; a sweep's overrides go in its set: blocks")
    plan = make_plan(path, out)
    targets, seen = [], set()
    for cell in plan.cells:
        if (cell.dataset, cell.method) in seen:
            continue
        seen.add((cell.dataset, cell.method))
        base = load_recipe(cell.recipe, cell.overrides)
        # a folder of per-method recipes names the space file by the recipe; a base recipe, by the method
        entry = None if any(o.startswith("method.name=") for o in cell.overrides) else cell.recipe.stem
        targets.append(_target(cell.recipe, cell.overrides, base, space, entry,
                               plan.sweep.seeds[0] if seed is None else seed))
    return targets, plan.sweep.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------- one process


def tune_target(target: Target, storage_url: str, budget: int, *, timeout: float | None, pruner: str,
                console: Console, worker: int = 0) -> None:
    """Run trials of ``target`` in this process until the study has ``budget`` slots taken (by this or
    other processes), or ``timeout`` seconds have passed; a trial in progress then finishes."""
    import optuna

    from bogc_cli.tune.study import folder_lock, open_storage, recover, slots_taken
    from bogc_cli.tune.trial import Excess, TrialFailed, objective

    with folder_lock(target.root):  # one process at a time creates the study and recovers cut-short trials
        storage = open_storage(storage_url)
        study = _study(storage, target, pruner, worker, budget)
        for slot in recover(study, target.trial_folder):
            console.print(f"trial slot {slot} was cut short: retrying it (its run resumes from its checkpoint)")
    started = time.monotonic()
    while True:
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
        if len(slots_taken(trials)) >= budget and not waiting:
            return
        if timeout is not None and time.monotonic() - started >= timeout:
            console.print(f"--timeout {timeout:g} s reached: no new trial starts (rerun the same command to go on)")
            return
        held: list = []
        try:
            study.optimize(partial(objective, target=target, budget=budget, console=console, held=held),
                           n_trials=1, catch=(TrialFailed,), callbacks=[partial(_said, console=console)],
                           gc_after_trial=False)
        except Excess:
            return
        finally:
            for lock in held:
                lock.release()


def startup_trials(budget: int) -> int:
    """Finished trials before the median pruner acts: min(5, max(2, budget // 4))."""
    return min(5, max(2, budget // 4))


def _study(storage, target: Target, pruner: str, worker: int, budget: int):
    import optuna

    # median pruning from a trial's first epoch, once a few trials have finished (Optuna's default 5; fewer
    # for a small budget, so that pruning can act at all)
    chosen = optuna.pruners.MedianPruner(n_startup_trials=startup_trials(budget), n_warmup_steps=1) \
        if pruner == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=target.name, storage=storage, pruner=chosen, direction="maximize",
                                load_if_exists=True)
    # seeded for a repeatable single-process tune; apart per worker and per restart, so no two draw alike
    sampler = optuna.samplers.TPESampler(seed=target.seed + 7919 * worker + 104729 * len(study.trials))
    return optuna.load_study(study_name=target.name, storage=storage, sampler=sampler, pruner=chosen)


def _said(study, trial, console: Console) -> None:
    """One line per finished trial (Optuna's own log is off)."""
    from optuna.trial import TrialState

    from bogc_cli.tune.study import ERROR, EXCESS

    if trial.user_attrs.get(EXCESS):
        return
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    if trial.state == TrialState.COMPLETE:
        what = f"validation score {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        what = f"pruned after epoch {trial.last_step}"
    else:
        what = f"failed: {trial.user_attrs.get(ERROR, '?')}"
    console.print(f"trial {trial.number} of {study.study_name}: {what} ({seconds:.0f} s)", highlight=False)


# ---------------------------------------------------------------------------------------------- workers


def run_workers(argv: list[str], slots: list[str | None], log_dir: Path, say: Callable[[str], None]) -> int:
    """``--jobs`` / ``--gpus``: one ``bogc tune`` worker process per slot (a GPU id, or None for a CPU
    share), all on the same study; logs in ``log_dir/worker<k>.log``. Returns 0, 130 when interrupted, or
    the first worker's failing exit code. Ctrl-C reaches the workers too; each checkpoints its trial."""
    log_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // len(slots))
    procs = []
    for k, slot in enumerate(slots):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        log = open(log_dir / f"worker{k}.log", "a", encoding="utf-8")
        command = [sys.executable, "-m", "bogc_cli", *argv, "--worker", str(k)]
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=partial(signal_on_parent_death, signal.SIGTERM)))
        say(f"worker {k}{f' on GPU {slot}' if slot is not None else ''}: log {log_dir / f'worker{k}.log'}")
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    if any(c == 130 for c in codes):
        return 130
    return next((c for c in codes if c != 0), 0)


# ---------------------------------------------------------------------------------------------- results


def results(target: Target, storage_url: str, console: Console) -> dict | None:
    """Print the trial table and the best trial; write the best recipe and the trials' CSV. Returns the
    best trial's parameters and value, or None when no trial finished."""
    import optuna
    from optuna.trial import TrialState

    from bogc_cli.tune.study import EXCESS, RUN_DIR, latest_per_slot, open_storage

    study = optuna.load_study(study_name=target.name, storage=open_storage(storage_url))
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(EXCESS)]
    latest = latest_per_slot(trials)
    keys = list(target.space.params)
    table = Table(title=f"{target.name}: {len(latest)} trial(s), validation score ({OBJECTIVE}); runs in {target.root}")
    for col in ("trial", "state", "val score", "epochs", "time", *keys, "run"):
        table.add_column(col, justify="right" if col not in ("state", "run") else "left", overflow="fold")
    for slot, t in sorted(latest.items()):
        seconds = sum(u.duration.total_seconds() for u in trials if u.user_attrs.get("bogc.slot", u.number) == slot
                      and u.duration)
        table.add_row(str(slot), t.state.name.lower(), "-" if t.value is None else f"{t.value:.4f}",
                      str(t.last_step or "-"), f"{seconds:.0f}s",
                      *[_cell(t.params.get(k)) for k in keys], _below(t.user_attrs.get(RUN_DIR), target.root))
    console.print(table)
    done = [t for t in latest.values() if t.state == TrialState.COMPLETE]
    csv = target.best_recipe().with_suffix(".trials.csv")
    csv.parent.mkdir(parents=True, exist_ok=True)
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "datetime_start",
                                          "duration"))
    write_text(csv, frame.to_csv(index=False))
    if not done:
        console.print(f"[yellow]{target.name}: no trial finished yet[/yellow]: no best recipe written")
        return None
    best = max(done, key=lambda t: (t.value, -t.number))
    path = write_best_recipe(target, best.params, best.value, best.number, study.study_name)
    console.print(f"best of {target.name}: trial {slot_of_trial(best)}, validation score {best.value:.4f}, "
                  + ", ".join(f"{k}={_cell(v)}" for k, v in best.params.items()), highlight=False)
    console.print(f"best recipe: {path} (train it with the seeds to report: bogc train {path} --seeds 0,1,2); "
                  f"trials: {csv}", highlight=False)
    return {"params": best.params, "value": best.value, "recipe": path}


def slot_of_trial(trial) -> int:
    return int(trial.user_attrs.get("bogc.slot", trial.number))


def write_best_recipe(target: Target, params: dict[str, Any], value: float, number: int, study: str) -> Path:
    """The target's recipe (its file with the overrides of the tune) with ``params`` set: what ``bogc train``
    and (through best/sweep.yaml) ``bogc reproduce`` take."""
    raw = apply_overrides(read_yaml(target.recipe_path),
                          parse_overrides([*target.overrides, *SearchSpace.overrides(params)]))
    load_recipe(None, raw=raw)  # still a valid recipe
    head = (f"# Tuned by bogc tune on {datetime.now():%Y-%m-%d %H:%M}: study {study}, best of its trials: trial "
            f"{number}, validation score {value:.4f} ({OBJECTIVE}; seed {target.seed}).\n"
            f"# From {target.recipe_path} with: {', '.join(SearchSpace.overrides(params))}\n")
    path = target.best_recipe()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, head + yaml.safe_dump(raw, sort_keys=False))
    return path


def write_best_sweep(sweep: dict, targets: list[Target], root: Path) -> Path:
    """best/sweep.yaml: the sweep again, each cell's recipe its tuned best (experiment ``<name>-tuned``)."""
    datasets = {}
    methods: list[str] = []
    for t in targets:
        dataset, method = t.name.split("/", 1)
        datasets[dataset] = str((root / "best" / dataset).resolve())
        if method not in methods:
            methods.append(method)
    out = {"experiment": f"{sweep['experiment']}-tuned", "out": sweep["out"], "seeds": sweep["seeds"],
           "datasets": datasets, "methods": methods, "missing": sweep.get("missing")}
    path = root / "best" / "sweep.yaml"
    write_text(path, f"# The sweep {sweep['experiment']} with every method's tuned recipe (bogc tune): run it with\n"
                     f"#   bogc reproduce {path}\n" + yaml.safe_dump(out, sort_keys=False))
    return path


def _below(path: str | None, root: Path) -> str:
    if not path:
        return "-"
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
