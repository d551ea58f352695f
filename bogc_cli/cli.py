"""The ``bogc`` command line: prepare, train, eval, missing-modality, report, reproduce, list.

Every error a user can cause ends in one message naming the key, path or option at fault,
and exit code 2, with no traceback; a usage error (an unknown command or option, a missing
argument) prints typer's usage message and exits 2. An unexpected exception is never masked:
it ends in its own traceback.
"""

from __future__ import annotations

import statistics
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from bogc_cli import __version__
from bogc_cli.errors import ProcessError, UserError


class _FlagsTakeNoValue:
    """Help without a type after flags: typer shows ``--resume  <bool>`` as if the flag took a value."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsTakeNoValue, TyperCommand):
    """A bogc command (see ``_FlagsTakeNoValue``)."""


class Group(_FlagsTakeNoValue, TyperGroup):
    """The bogc command group (see ``_FlagsTakeNoValue``)."""


app = typer.Typer(
    name="bogc",
    help="Multimodal learning experiments: train with BOGC or baseline balancing methods, evaluate, "
         "test robustness to missing modalities and build result tables from YAML recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)
console = Console(width=None if sys.stdout.isatty() else 120)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
_running: dict[str, str | None] = {"command": None}  # the command being run, for the Ctrl-C message


def _csv_list(value: str | None, name: str, cast=str) -> list | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        return [cast(v) for v in items]
    except ValueError:
        raise UserError(f"{name} {value!r}: expected a comma-separated list of {cast.__name__}s") from None


def _version(value: bool) -> None:
    if value:
        console.print(f"bogc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _running["command"] = ctx.invoked_subcommand


def _seeds(value: str, option: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: integers in the seed range, each once (else one UserError naming ``option``)."""
    from bogc_cli.recipe import check_seeds

    seeds = _csv_list(value, option, int)
    if not seeds:
        raise UserError(f"{option} {value!r}: give at least one seed, e.g. {option} 0,1,2")
    return check_seeds(seeds, option)


def _show(table, where: Console | None = None) -> None:
    """Print a rich table; in a log (not a terminal) at its natural width, so no cell ("0.805 ± 0.012")
    wraps over two lines."""
    where = where or console
    if where.is_terminal:
        where.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(where, where.options.update_width(10**6), table).maximum
    width = where.width
    where.width = max(width, natural)  # print(width=...) cannot exceed the console's own width
    try:
        where.print(table)
    finally:
        where.width = width


def _data_option(default=None):
    return typer.Option(default, "--data", help="Folder that holds the run's prepared data now, when it has moved "
                        "since training (default: the dataset.root the run was trained with).")


# ------------------------------------------------------------------------------------------ prepare
@app.command(cls=Command)
def prepare(
    dataset: str = typer.Argument(..., help="Dataset to prepare (see `bogc list`)."),
    raw: Path = typer.Option(..., "--raw", help="Folder with the raw download."),
    out: Path = typer.Option(..., "--out", help="Folder to write the prepared cache to."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Preparation preset (see `bogc list`)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation carve-out and pairings."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Validation share carved from "
                                                 "train, in (0, 1) (default per dataset: mfeat 0.25, mvsa_single 1/9 "
                                                 "of what its 10% test carve-out leaves (8:1:1), others 0.1; ave, "
                                                 "mosei, mosi, iemocap and mmimdb have official validation splits; 0 "
                                                 "is refused: training picks its best epoch on validation)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes decoding files (clips, volumes); "
                                "an interrupted prepare resumes where it stopped."),
    strict: bool = typer.Option(False, "--strict", help="Fail when counts differ from the published ones, or "
                                "when a class has no training sample (warnings otherwise)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a cache in --out made from other inputs or "
                                   "parameters (refused otherwise; an interrupted prepare resumes without it)."),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="arrays: each modality's kind, e.g. "
                                        "audio=sequence,eeg=audio (default: from its per-sample rank)."),
    task: Optional[str] = typer.Option(None, "--task", help="arrays: what labels holds: classification (class "
                                       "indices [N], default), multilabel (0/1 rows [N, C]) or regression "
                                       "(values [N])."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Text: tokenise with the tokenizer of this "
                                             "local Hugging Face model directory (use the same directory as "
                                             "model.encoders.<m>.path); default: a word vocabulary built from the "
                                             "train split. Never downloads."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Text: tokens per sample, padded or "
                                             "truncated (default 128; food101 50, CGGM's length)."),
) -> None:
    """Turn a raw dataset download into a prepared cache that `bogc train` reads."""
    from data_prep import PREPARERS, TEXT_PREPARERS

    if dataset not in PREPARERS:
        from bogc_cli.data.registry import DATASETS

        hint = " (synthetic is built in and needs no preparation)" if dataset == "synthetic" else ""
        raise UserError(f"cannot prepare {dataset!r}{hint}; preparable: {', '.join(PREPARERS)}"
                        + ("" if dataset in DATASETS else f"; known datasets: {', '.join(DATASETS)}"))
    from bogc_cli.recipe import check_seeds
    from bogc_cli.writable import require_writable

    check_seeds([seed], "--seed")
    if not raw.exists():
        raise UserError(f"--raw {raw} does not exist: point it at the folder of the raw {dataset} download")
    extra = {"kinds": _kinds_option(kinds)} if dataset == "arrays" and kinds is not None else {}
    if kinds is not None and dataset != "arrays":
        raise UserError(f"--kinds is for `bogc prepare arrays`; the kinds of {dataset}'s modalities are fixed")
    if task is not None:
        from bogc_cli.tasks import TASKS

        if dataset != "arrays":
            raise UserError(f"--task is for `bogc prepare arrays`; {dataset}'s task is set by its preset "
                            "(`bogc list` shows each dataset's presets and task types)")
        if task not in TASKS:
            raise UserError(f"--task {task!r}: valid are {', '.join(TASKS)}")
        extra["task"] = task
    for option, value in (("--tokenizer", tokenizer), ("--max-length", max_length)):
        if value is not None and dataset not in TEXT_PREPARERS:
            raise UserError(f"{option} is for datasets with text ({', '.join(sorted(TEXT_PREPARERS))}); {dataset} "
                            "has no text modality to tokenise")
    if dataset in TEXT_PREPARERS:
        extra.update(tokenizer=tokenizer, max_length=max_length)
    require_writable(out, "--out")
    manifest = PREPARERS[dataset](raw=raw, out=out, preset=preset, seed=seed, val_fraction=val_fraction,
                                  workers=workers, strict=strict, overwrite=overwrite,
                                  log=lambda msg: console.print(msg, highlight=False), **extra)
    table = Table(title=f"{dataset} prepared in {out}" + (f" (preset {manifest.preset})" if manifest.preset else ""))
    table.add_column("split")
    table.add_column("samples", justify="right")
    per = {"multilabel": "positives per label", "regression": f"target ({manifest.task})"}.get(manifest.task,
                                                                                             "per class")
    table.add_column(per, overflow="fold")
    for split, n in manifest.splits.items():
        counts = manifest.class_counts.get(split, {})
        table.add_row(split, str(n), _per_class(counts) if manifest.task != "regression" else manifest.classes[0])
    _show(table)
    mods = ", ".join(f"{m} {s.kind} {tuple(s.shape)} {s.dtype}" + (
        f" ({s.tokenizer.get('kind')} tokenizer, {s.tokenizer.get('vocab_size')} tokens)" if s.tokenizer else "")
        for m, s in manifest.modalities.items())
    console.print(f"modalities: {mods}", highlight=False)
    if manifest.skipped:
        console.print(f"[yellow]skipped {len(manifest.skipped)} file(s):[/yellow]")
        for item in manifest.skipped:
            console.print(f"  {item.get('file')}: {item.get('reason')}", highlight=False)
    for warning in manifest.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(str(warning))}", highlight=False)


def _per_class(counts: dict[str, int], most: int = 20) -> str:
    """Samples per class for the prepare table: each class (``name:count``), or past ``most`` classes (Food-101's
    101) the range and the classes without a sample, so the table stays readable (manifest.json has them all)."""
    if len(counts) <= most:
        return " ".join(f"{c}:{k}" for c, k in counts.items())
    empty = [c for c, k in counts.items() if k == 0]
    text = f"{len(counts)} classes, {min(counts.values())}-{max(counts.values())} each"
    if empty:
        text += f"; none of {', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''} ({len(empty)})"
    return text


def _kinds_option(value: str) -> dict[str, str]:
    """``--kinds audio=sequence,eeg=audio`` -> ``{"audio": "sequence", "eeg": "audio"}``."""
    pairs = [p.strip() for p in value.split(",") if p.strip()]
    if not pairs or any(p.count("=") != 1 or not all(p.split("=")) for p in pairs):
        raise UserError(f"--kinds {value!r}: expected modality=kind pairs separated by commas, e.g. audio=sequence")
    return {m.strip(): k.strip() for m, k in (p.split("=") for p in pairs)}


# ------------------------------------------------------------------------------------------ train
@app.command(cls=Command)
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe (see recipes/)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.epochs=5 (repeatable)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, one run each: 0,1,2."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results root (overrides output.dir)."),
    max_bad_steps: Optional[int] = typer.Option(None, "--max-bad-steps", min=1, help="Stop after this many steps "
                                                "in a row with a NaN/inf loss or gradient (each is skipped; "
                                                "default train.max_bad_steps, 10)."),
    resume: bool = typer.Option(False, "--resume", help="Continue unfinished runs from their last checkpoint "
                                "(exactly as if never interrupted) and keep finished ones."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the results of earlier runs with the same "
                                   "experiment, dataset, method and seed (refused otherwise)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile each encoder (train.compile): slower "
                                  "start, faster steps on a GPU."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1, help="Train data-parallel on N GPUs of this machine "
                                       "(starts torchrun, one process each; train.batch_size stays the global "
                                       "batch). Several machines: torchrun ... -m bogc_cli train RECIPE."),
) -> None:
    """Train a recipe (once per seed) and evaluate each run's best-validation checkpoint on test."""
    from bogc_cli.engine import distributed
    from bogc_cli.engine.resume import check_same_recipe, saved_recipe
    from bogc_cli.engine.run_lock import refuse_existing
    from bogc_cli.engine.setup import resolved_recipe, run_dir_for
    from bogc_cli.engine.trainer import train_run
    from bogc_cli.recipe import load_recipe
    from bogc_cli.writable import require_writable

    overrides = list(set_)
    if out is not None:
        overrides.append(f"output.dir={out}")
    if max_bad_steps is not None:
        overrides.append(f"train.max_bad_steps={max_bad_steps}")
    if compile_:
        overrides.append("train.compile=true")
    rec = load_recipe(recipe, overrides)
    seed_list = _seeds(seeds, "--seeds") if seeds is not None else rec.run_seeds()
    if resume and overwrite:
        raise UserError("--resume continues earlier results and --overwrite deletes them: choose one")
    if _process_zero():  # refuse before any data is read and before the first seed trains, not after it
        require_writable(rec.output.dir, "--out" if out is not None else "output.dir")
        for seed in seed_list:
            resolved = resolved_recipe(rec.for_seed(seed))
            run_dir = run_dir_for(resolved)
            require_writable(run_dir, "run folder")
            if resume and (saved := saved_recipe(run_dir)) is not None:
                check_same_recipe(saved, resolved.to_dict(), run_dir)
            elif not overwrite and not resume:
                refuse_existing(run_dir)
    if gpus is not None:
        from bogc_cli.engine.launch import check_gpus, run_torchrun

        check_gpus(gpus)
        args = [str(recipe), *(a for o in overrides for a in ("--set", o)), "--seeds", ",".join(map(str, seed_list))]
        args += ["--resume"] if resume else []
        args += ["--overwrite"] if overwrite else []
        raise typer.Exit(run_torchrun(gpus, args))
    results = []
    try:
        for seed in seed_list:
            result = train_run(rec.for_seed(seed), console, overwrite=overwrite, resume=resume)
            if result is not None:  # None: a data-parallel process other than 0
                console.print(f"run written to [bold]{result.run_dir}[/bold]")
                results.append(result)
    finally:
        distributed.stop()
    if results:
        _show(_summary_table(results))


def _summary_table(results) -> Table:
    """Per seed: the best epoch, its validation score and the test metrics of the run's task (classification:
    accuracy, macro-F1, each head's accuracy; multilabel and regression: ``tasks.metrics.TABLE_METRICS`` and
    each head's selection metric); mean ± std over seeds below."""
    from bogc_cli.tasks.metrics import METRIC_TITLES, TABLE_METRICS

    first = results[0].test
    task, metric = first.get("task", "classification"), results[0].select_metric
    heads_key = "unimodal_accuracy" if task == "classification" else f"unimodal_{metric}"
    modalities = list(first.get(heads_key, {}))
    shown = TABLE_METRICS[task]
    table = Table(title=f"{first['dataset']} / {first['method']}: test metrics at the best-validation epoch "
                        f"({task}; selected on validation {metric})")
    val_title = "val acc" if metric == "accuracy" else f"val {METRIC_TITLES.get(metric, metric)}"
    head_title = "acc" if task == "classification" else METRIC_TITLES.get(metric, metric)
    titles = {"accuracy": "test acc", "macro_f1": "macro-F1"} if task == "classification" else METRIC_TITLES
    for col in ["seed", "best epoch", val_title, *[titles.get(k, k) for k in shown],
                *[f"{m} head {head_title}" for m in modalities], "time"]:
        table.add_column(col, justify="right")
    for r in results:
        t = r.test
        table.add_row(str(r.seed), str(r.best_epoch), f"{r.val_score:.3f}", *[f"{t[k]:.3f}" for k in shown],
                      *[f"{t[heads_key][m]:.3f}" for m in modalities], f"{r.seconds:.0f}s")
    if len(results) > 1:
        def ms(values):
            return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
        table.add_row("mean ± std", "", ms([r.val_score for r in results]),
                      *[ms([r.test[k] for r in results]) for k in shown],
                      *[ms([r.test[heads_key][m] for r in results]) for m in modalities], "",
                      style="bold")
    return table


# ------------------------------------------------------------------------------------------ eval
@app.command("eval", cls=Command)
def eval_(
    target: Path = typer.Argument(..., help="Run directory (uses best.pt) or a checkpoint file."),
    split: str = typer.Option("test", "--split", help="Split to evaluate: train, val or test."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    data: Optional[Path] = _data_option(),
    shapley: bool = typer.Option(True, "--shapley/--no-shapley", help="Exact Shapley contribution of each "
                                 "modality (2^M subsets; refused above 8 modalities: add --no-shapley)."),
) -> None:
    """Accuracy, macro-F1, per-class accuracy, each modality head's accuracy, and the balance metrics: each
    modality's Shapley contribution and the imbalance degree, linear-probe accuracy per modality,
    calibration (ECE, NLL, Brier; reliability.png) and cost (parameters, FLOPs). Multilabel runs: micro-,
    macro-, weighted- and samples-F1 and mAP; regression runs: MAE, Corr, Acc-2 (both forms), F1, Acc-7
    (the classification-only balance metrics are reported as not applicable)."""
    from bogc_cli.engine.checkpoint import resolve_checkpoint
    from bogc_cli.engine.inference import evaluate_run, load_run
    from bogc_cli.writable import require_writable

    device = _device(device)
    checkpoint = resolve_checkpoint(target)
    require_writable(checkpoint.parent, "run folder")  # eval writes its results there
    run = load_run(checkpoint, device=device, data=data)
    result, path = evaluate_run(run, split, shapley=shapley)
    table = Table(title=f"{result['dataset']} / {result['method']} / seed {result['seed']}: {split} "
                        f"({run.checkpoint.name}, epoch {run.epoch}, n={result['n']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in _task_rows(result):
        table.add_row(name, value)
    for name, value in _balance_rows(result):
        table.add_row(name, value)
    for c, acc in result.get("per_class_accuracy", {}).items():
        table.add_row(f"class {c} accuracy", f"{acc:.4f}")
    _show(table)
    if "skipped" in result["contribution"]:
        console.print(f"Shapley contributions skipped: {result['contribution']['skipped']}", highlight=False)
    for name, block in result.items():
        if isinstance(block, dict) and "not_applicable" in block:
            console.print(f"{name}: not applicable ({block['not_applicable']})", highlight=False)
    console.print(f"written to {path}")


def _task_rows(result: dict) -> list[tuple[str, str]]:
    """The task's metrics of an eval result (and each head's) as (name, value) rows."""
    from bogc_cli.tasks.metrics import METRIC_TITLES, TABLE_METRICS

    task, metric = result.get("task", "classification"), result.get("select_metric", "accuracy")
    if task == "classification":
        rows = [("accuracy", f"{result['accuracy']:.4f}"), ("macro-F1", f"{result['macro_f1']:.4f}")]
        return rows + [(f"{m} head accuracy", f"{v:.4f}") for m, v in result["unimodal_accuracy"].items()]
    rows = [(METRIC_TITLES[k] + (" (selection metric)" if k == metric else ""), f"{result[k]:.4f}")
            for k in TABLE_METRICS[task]]
    return rows + [(f"{m} head {METRIC_TITLES[metric]}", f"{v:.4f}")
                   for m, v in result[f"unimodal_{metric}"].items()]


def _balance_rows(result: dict) -> list[tuple[str, str]]:
    """The balance metrics of an eval result as (name, value) rows; a block that is not applicable to the run's
    task (multilabel, regression: linear probes, calibration) gives none."""
    from bogc_cli.engine.contribution import VALUE_FUNCTIONS_BY_TASK

    rows = []
    contribution = result["contribution"]
    value = VALUE_FUNCTIONS_BY_TASK[result.get("task", "classification")][0]  # accuracy, or the task's first
    if value in contribution:
        for m, phi in contribution[value]["shapley"].items():
            rows.append((f"{m} Shapley contribution ({value})", f"{phi:+.4f}"))
        degree = contribution[value]["imbalance_degree"]
        rows.append((f"imbalance degree ({value})", "-" if degree is None else f"{degree:.4f}"))
    for m, acc in result["linear_probe"].get("accuracy", {}).items():
        rows.append((f"{m} linear-probe accuracy", f"{acc:.4f} (C={result['linear_probe']['C'][m]:g})"))
    cal = result["calibration"]
    if "ece" in cal:
        rows += [(f"ECE ({cal['bins']} bins)", f"{cal['ece']:.4f}"), ("NLL", f"{cal['nll']:.4f}"),
                 ("Brier score", f"{cal['brier']:.4f}")]
    rows += [("parameters", f"{result['parameters']:,}"),
             ("forward MFLOPs / sample", f"{result['forward_flops_per_sample'] / 1e6:.3f}")]
    return rows


def _device(value: str) -> str:
    """Check ``--device`` before anything is loaded (a missing GPU is named by the option the user gave)."""
    if value not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {value!r}: valid are auto, cpu, cuda")
    if value == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is visible to this process; use --device cpu, or auto "
                            "(a GPU when there is one)")
    return value


# ------------------------------------------------------------------------------------------ missing-modality
@app.command("missing-modality", cls=Command)
def missing_modality(
    run_dir: Path = typer.Argument(..., help="Run directory (uses best.pt) or a checkpoint file."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Modalities to drop, e.g. audio,visual "
                                             "(default: all)."),
    rates: str = typer.Option("0,0.1,0.3,0.5,0.7,1.0", "--rates", help="Missing rates in [0, 1]."),
    fill: Optional[str] = typer.Option(None, "--fill", help="zero-input, zero-feature or mean-feature "
                                       "(default: the run's model.fill)."),
    seed: int = typer.Option(0, "--seed", help="Seed choosing which samples miss a modality."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    data: Optional[Path] = _data_option(),
) -> None:
    """Test accuracy (the run's selection metric: micro-F1 for multilabel, MAE for regression runs) with a
    seeded fraction of samples missing each modality; adds the rows to the run's
    missing_modality.csv (earlier calls' rows are kept) and redraws its plot."""
    from bogc_cli.engine.checkpoint import resolve_checkpoint
    from bogc_cli.engine.inference import load_run
    from bogc_cli.engine.missing import MissingResults, evaluate_missing
    from bogc_cli.models.multimodal import FILLS
    from bogc_cli.recipe import check_seeds
    from bogc_cli.writable import require_writable

    if fill is not None and fill not in FILLS:
        raise UserError(f"--fill {fill!r}: valid are {', '.join(FILLS)}")
    check_seeds([seed], "--seed")
    rate_list = _csv_list(rates, "--rates", float)
    device = _device(device)
    checkpoint = resolve_checkpoint(run_dir)
    require_writable(checkpoint.parent, "run folder")  # the CSV and the plot go there
    run = load_run(checkpoint, device=device, data=data)
    results = MissingResults.open(run)  # earlier calls' rows: merged with these by (missing, rate, fill, mask seed)
    df = evaluate_missing(run, _csv_list(modalities, "--modalities"), rate_list, fill, seed)
    merged = results.add(df)
    csv_path, png = results.csv, results.png
    single = df[~df["missing"].str.contains(r"\+")]
    metric = run.model.task.metric
    better = "higher" if run.model.task.higher_is_better else "lower"
    table = Table(title=f"missing-modality {metric} ({run.model.task.task} run's selection metric, {better} is "
                        f"better; {run.model.fill}, mask seed {seed})")
    table.add_column("missing")
    for r in rate_list:
        table.add_column(f"{r:g}", justify="right")
    for m, rows in single.groupby("missing", sort=False):
        by_rate = dict(zip(rows["rate"], rows["score"]))
        table.add_row(m, *[f"{by_rate[r]:.3f}" for r in rate_list])
    _show(table)
    multi = df[df["missing"].str.contains(r"\+")]
    for _, row in multi.iterrows():
        console.print(f"all of {row['missing']} missing: {metric} {row['score']:.3f}", highlight=False)
    kept = len(merged) - len(df)
    console.print(f"written to {csv_path} and {png}" + (f" ({kept} row(s) of earlier calls kept)" if kept else ""))


# ------------------------------------------------------------------------------------------ reproduce
@app.command(cls=Command)
def reproduce(
    sweep: Path = typer.Argument(..., help="Sweep file: datasets x methods x seeds (see recipes/paper/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells in run order with their protocol, what "
                                 "each needs, their state and the estimated time; run nothing (needs no data)."),
    show: Optional[str] = typer.Option(None, "--show", help="Print one cell's resolved recipe (as `bogc train` "
                                       "will save it), e.g. cremad/ogm_ge/seed0; runs nothing."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Cells at a time on the CPU (their threads share the cores)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU ids, one cell per GPU at a time: 0,1,2,3."),
    launcher: str = typer.Option("local", "--launcher", help="local: run here; slurm: write an sbatch job array "
                                 "for the unfinished cells instead (and a submit script when cells need others)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results root (overrides the sweep's out)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train again the cells whose run (finished or not) "
                                   "was made with another recipe than the sweep's now (refused otherwise)."),
) -> None:
    """Run a sweep: every unfinished cell trains (resuming interrupted ones; a cell that needs others after
    them), gets its missing-modality evaluation, and the sweep ends with `bogc report`. Rerun after an
    interruption: finished cells are kept."""
    from bogc_cli.engine.resume import describe_differences
    from bogc_cli.sweep.plan import make_plan
    from bogc_cli.sweep.runner import run_local, write_slurm
    from bogc_cli.writable import require_writable

    if launcher not in ("local", "slurm"):
        raise UserError(f"--launcher {launcher!r}: valid are local, slurm")
    gpu_list = _csv_list(gpus, "--gpus")
    plan = make_plan(sweep, out)
    if show is not None:
        _show_cell(plan, show)
        return
    changed = [c for c in plan.cells if c.status == "changed"]
    for cell in changed:
        cell.overwrite = overwrite
    todo = plan.todo()
    _print_plan(plan, max(len(gpu_list or []), jobs))
    if changed and not overwrite:
        listing = "; ".join(f"{c.name}: {describe_differences(c.changed, 3)}" for c in changed[:3])
        more = f"; and {len(changed) - 3} more cell(s)" if len(changed) > 3 else ""
        message = (f"{len(changed)} cell(s) hold a run made with another recipe than the sweep's now ({listing}{more}). "
                   "Pass --overwrite to train them again with this one (their earlier results are deleted), or "
                   "restore the recipe they were made with")
        if dry_run:
            err_console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)
            return
        raise UserError(message)
    if dry_run:
        return
    require_writable(plan.root, "the sweep's results folder")
    if launcher == "slurm":
        if not todo:
            console.print("every cell is finished: no job array to write")
            return
        script, submit = write_slurm(plan)
        if submit is None:
            console.print(f"wrote {script} ({len(todo)} array tasks); submit it with: sbatch {script}")
        else:
            console.print(f"wrote {script} and {submit} ({len(todo)} tasks, some needing others); submit them "
                          f"in order with: bash {submit}")
        return
    failed, skipped = [], []
    if todo:
        outcomes = run_local(plan, jobs, gpu_list, lambda line: console.print(line, highlight=False))
        failed = [o for o in outcomes if o.skipped is None and o.code not in (0, 130)]
        skipped = [o for o in outcomes if o.skipped is not None]
        if any(o.code == 130 for o in outcomes):
            raise KeyboardInterrupt
        if failed:
            console.print(f"[bold red]{len(failed)} cell(s) failed[/bold red] (the others are kept; rerun the same "
                          "command after fixing them):")
            for o in failed:
                console.print(f"  {o.cell.name}: exit {o.code}, log {o.log}", highlight=False)
        if skipped:
            console.print(f"[bold red]{len(skipped)} cell(s) skipped[/bold red]: a cell they need did not finish "
                          "(they run on the rerun once it does):")
            for o in skipped:
                console.print(f"  {o.cell.name}: needs {o.skipped.name}", highlight=False)
    _report_sweep(plan)
    if failed or skipped:
        raise typer.Exit(1)


def _show_cell(plan, name: str) -> None:
    cells = {c.name: c for c in plan.cells}
    if name not in cells:
        first = ", ".join(list(cells)[:3])
        raise UserError(f"--show {name!r}: no such cell in {plan.source}; cells are named dataset/method/seedN "
                        f"(e.g. {first}); --dry-run lists them")
    cell = cells[name]  # plain text, never wrapped: the output is YAML a user may save and reuse
    typer.echo(f"# {cell.name} ({cell.protocol}): bogc {shlex.join(cell.train_args())}")
    typer.echo(cell.resolved().to_yaml(), nl=False)


def _print_plan(plan, parallel: int) -> None:
    t = Table(title=f"sweep {plan.sweep.experiment}: {len(plan.cells)} cells -> {plan.root} (rows in run order)")
    for col in ("dataset", "method", "protocol", "seeds", "after", "done", "to run", "est. per run"):
        t.add_column(col, justify="right" if col in ("done", "to run", "est. per run") else "left")
    groups: dict[tuple[str, str], list] = {}
    for c in plan.ordered():
        groups.setdefault((c.dataset, c.method), []).append(c)
    total, unknown = 0.0, 0
    for (dataset, method), cells in groups.items():
        est = plan.estimate_seconds(cells[0])
        left = [c for c in cells if c.status != "done"]
        total += (est or 0) * len(left)
        unknown += 0 if est is not None else len(left)
        notes = [f"{n} {state}" for state in ("partial", "changed") if (n := sum(c.status == state for c in left))]
        after = ", ".join(dict.fromkeys(d.method for c in cells for d in c.needs)) or "-"
        protocols = ", ".join(dict.fromkeys(c.protocol for c in cells))
        t.add_row(dataset, method, protocols, ",".join(str(c.seed) for c in cells), after,
                  str(len(cells) - len(left)), str(len(left)) + (f" ({', '.join(notes)})" if notes else ""),
                  "-" if est is None else f"{est / 60:.1f} min")
    _show(t)
    left = len(plan.todo())
    console.print(f"{left} of {len(plan.cells)} cells to run; {_eta(left, total / parallel, unknown)}", highlight=False)
    if any(c.needs for c in plan.cells):
        console.print("a cell with an 'after' entry starts once those cells of its dataset and seed have finished "
                      "(their run directories fill its needs); `--show dataset/method/seedN` prints a cell's "
                      "recipe", highlight=False)


def _eta(left: int, seconds: float, unknown: int) -> str:
    """The time left in words; never "about 0 min" for work whose time is not known yet."""
    if not left:
        return "nothing to do"
    why = "estimates come from finished cells of the same dataset (and method)"
    if unknown == left:
        return f"no time estimate yet: {why}, and none has finished"
    minutes = seconds / 60
    eta = "under 1 min" if minutes < 1 else f"about {minutes:.0f} min"
    if unknown:
        eta += f", plus {unknown} run(s) with no estimate yet"
    return f"{eta} ({why})"


def _report_sweep(plan) -> None:
    from bogc_cli.report import run_report

    if not any((c.run_dir / "eval.json").is_file() for c in plan.cells):
        return
    result = run_report(plan.root)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(str(w))}", highlight=False)
    console.print(f"report of {result.n_runs} runs written to {plan.root / 'tables'} and {plan.root / 'plots'}")


# ------------------------------------------------------------------------------------------ tune
@app.command()
def tune(
    recipe: Path = typer.Argument(..., help="YAML recipe, or a sweep file (recipes/paper/*.yaml): then every dataset "
                                  "x method cell is tuned, each with the same --trials (fair tuning)."),
    space: Path = typer.Option(..., "--space", help="Search-space YAML (recipes/tune/<method>.yaml), or a folder "
                               "with one per method (<method>.yaml)."),
    trials: int = typer.Option(20, "--trials", min=1, help="Trials of each study in total: a resumed or parallel "
                               "tune (--jobs, other machines on one --storage) runs only the missing ones."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Trials at a time on the CPU (worker processes sharing "
                             "the cores)."),
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU ids, one trial per GPU at a time: 0,1."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna RDB URL of the study, shared by several "
                                          "processes or machines, e.g. postgresql://user@host/db (default: the "
                                          "SQLite file <out>/<experiment>-tune/optuna.db)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="Start no new trial after this many "
                                            "seconds (the running one finishes; rerun to go on)."),
    pruner: str = typer.Option("median", "--pruner", help="median: stop a trial at an epoch where its validation "
                               "accuracy is below the median of earlier trials' there; none: never."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed of every trial (default: the recipe's, "
                                       "or the sweep's first)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set train.epochs=5 (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results root (overrides output.dir); trials go to "
                                       "<out>/<experiment>-tune/."),
    worker: Optional[int] = typer.Option(None, "--worker", hidden=True),
    only: Optional[str] = typer.Option(None, "--only", hidden=True),
) -> None:
    """Tune a method's hyper-parameters with Optuna: each trial an ordinary run (objective: the validation
    score the run selects on, never test), bad trials pruned at epoch boundaries; writes the best recipe. Rerun after an
    interruption: finished trials are kept and a cut trial continues from its checkpoint."""
    from bogc_cli.tune.runner import results, run_workers, targets_for, tune_target, write_best_sweep
    from bogc_cli.tune.study import default_storage, open_storage
    from bogc_cli.writable import require_writable

    if pruner not in ("median", "none"):
        raise UserError(f"--pruner {pruner!r}: valid are median, none")
    if gpus is not None and jobs != 1:
        raise UserError("--jobs and --gpus both set: give --gpus for one trial per GPU, or --jobs for CPU trials")
    gpu_list = _csv_list(gpus, "--gpus")
    if gpus is not None and not gpu_list:
        raise UserError(f"--gpus {gpus!r}: give GPU ids, e.g. 0,1")
    targets, sweep = targets_for(recipe, space, list(set_), seed, out)
    if only is not None:
        targets = [t for t in targets if t.name == only]
    root = targets[0].root
    require_writable(root, "the tune folder (--out)")
    url = storage or default_storage(root)
    open_storage(url)  # an unreachable or unwritable storage is refused before any trial runs
    slots = gpu_list or ([None] * jobs if jobs > 1 else [])
    console.print(f"tuning {len(targets)} stud{'y' if len(targets) == 1 else 'ies'} ({', '.join(t.name for t in targets)}),"
                  f" {trials} trial(s) each; study storage {url if storage is None else '--storage'}", highlight=False)
    for target in targets:
        if slots and worker is None:
            argv = ["tune", str(recipe), "--space", str(space), "--trials", str(trials), "--storage", url,
                    "--pruner", pruner, "--only", target.name, *(a for o in set_ for a in ("--set", o))]
            argv += ["--seed", str(target.seed)] + (["--out", str(out)] if out is not None else [])
            argv += ["--timeout", str(timeout)] if timeout is not None else []
            code = run_workers(argv, slots, root / "logs", lambda line: console.print(line, highlight=False))
            if code == 130:
                raise KeyboardInterrupt
            if code != 0:
                raise typer.Exit(code)
        else:
            tune_target(target, url, trials, timeout=timeout, pruner=pruner, console=console, worker=worker or 0)
    if worker is not None:
        return
    found = [results(t, url, console) for t in targets]
    if sweep is not None and all(found):
        path = write_best_sweep(sweep, targets, root)
        console.print(f"every cell's best recipe in one sweep: bogc reproduce {path}", highlight=False)
    if not all(found):
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------ report
@app.command(cls=Command)
def report(
    results_dir: Path = typer.Argument(..., help="A results folder holding run directories."),
    format_: str = typer.Option("md,csv,tex", "--format", help="Table formats: md, csv, tex."),
) -> None:
    """Aggregate every run below RESULTS_DIR: tables (mean ± std over seeds) in RESULTS_DIR/tables/, plots in RESULTS_DIR/plots/."""
    from bogc_cli.report import PLOTS_DIR, TABLES_DIR, run_report
    from bogc_cli.writable import require_writable

    if not results_dir.is_dir():
        raise UserError(f"{results_dir} is not a folder: give a results folder (e.g. results/quickstart)")
    for folder in (TABLES_DIR, PLOTS_DIR):
        require_writable(results_dir / folder, "report folder")
    result = run_report(results_dir, _csv_list(format_, "--format"))
    for table in result.rich_tables:
        _show(table)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/yellow] {escape(str(warning))}", highlight=False)
    console.print(f"{result.n_runs} run(s); wrote {len(result.paths)} file(s) under {results_dir / 'tables'} "
                  f"and {results_dir / 'plots'}")


# ------------------------------------------------------------------------------------------ list
@app.command("list", cls=Command)
def list_() -> None:
    """Datasets, encoders, fusion heads and methods, with their options."""
    from bogc_cli.data.options import dataset_option_model
    from bogc_cli.data.registry import DATASETS
    from bogc_cli.fusion import METHODS
    from bogc_cli.models.encoders import ENCODERS
    from bogc_cli.models.pretrained import FAMILIES as PRETRAINED
    from bogc_cli.models.fusion_heads import FUSION_HEADS
    from bogc_cli.recipe import DatasetBlock

    t = Table(title="datasets (dataset.name)", caption="every dataset block also takes: "
              + ", ".join(f"{k} ({f.description})" for k, f in DatasetBlock.model_fields.items()
                          if k != "name" and not (f.description or "").startswith("arrays:")))
    for col in ("name", "modalities", "tasks", "presets", "options", "about"):
        t.add_column(col, overflow="fold")
    for info in DATASETS.values():
        presets = [f"{p} (prepare)" for p in info.prepare_presets] + [f"{p} (view)" for p in info.view_presets]
        opts = [f"{k}={_default_text(f)}" for k, f in dataset_option_model(info.name).model_fields.items()]
        if info.name == "arrays":  # the common keys that matter for your own data, and the arrays-only ones
            opts = ["root=<your folder>"] + [
                f"{k} ({(f.description or '').removeprefix('arrays: ')}; default {_default_text(f)})"
                for k, f in DatasetBlock.model_fields.items()
                if (f.description or "").startswith("arrays:") or k in ("val_fraction", "split_seed")] + opts
        _add_plain_row(t, info.name, ", ".join(info.modalities) or "yours", ", ".join(info.tasks),
                       ", ".join(presets) or "-", ", ".join(opts) or "-", info.description)
    console.print(t)
    t = Table(title="encoders (model.encoders.<m>: a name, or {name, weights | path, freeze, pooling, normalize}; "
              "optim.backbone_lr: learning rate of pretrained encoders)")
    t.add_column("name")
    t.add_column("inputs")
    t.add_column("about", overflow="fold")
    for name, (_, kinds, about) in ENCODERS.items():
        _add_plain_row(t, name, ", ".join(kinds), about)
    for name, kinds, about in PRETRAINED.values():
        _add_plain_row(t, name, ", ".join(kinds), about)
    console.print(t)
    t = Table(title="fusion heads (model.fusion)")
    t.add_column("name")
    t.add_column("about", overflow="fold")
    for name, about in FUSION_HEADS.items():
        _add_plain_row(t, name, about)
    console.print(t)
    t = Table(title="methods (method.name); docs/fidelity.md compares each with its reference code",
              caption="tasks: the task types (classification, multilabel, regression) the method's rule is defined "
              "for; a run of another task is refused when the recipe is read")
    for col in ("name", "options", "modalities", "tasks", "about"):
        t.add_column(col, overflow="fold")
    for name, cls in METHODS.items():
        opts = ", ".join(f"{k}={_default_text(f)}" for k, f in cls.Options.model_fields.items())
        mods = f">= {cls.min_modalities}" + (f", <= {cls.max_modalities}" if cls.max_modalities else "")
        mods += f"; {cls.modality_note}" if cls.modality_note else ""
        about = f"{cls.summary}\nfidelity: {cls.fidelity}" if cls.fidelity else cls.summary
        tasks = ", ".join(cls.tasks) + (f"; {cls.task_note}" if cls.task_note else "")
        _add_plain_row(t, name, opts or "-", mods, tasks, about)
    console.print(t)


def _add_plain_row(table: Table, *cells: str) -> None:
    """A row whose text is shown as written: brackets in it (`.[pretrained]`, `[CLS]`) are not rich markup."""
    table.add_row(*(escape(str(c)) for c in cells))


def _default_text(field) -> str:
    if field.is_required():
        return "<required>"
    value = field.get_default(call_default_factory=True)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


#: What Ctrl-C leaves behind, per command (``None``: before a command began).
INTERRUPTED = {
    "train": "interrupted: finished runs and the last checkpoint are kept; run the same `bogc train` command with "
             "--resume to continue exactly where it stopped",
    "prepare": "interrupted: the files decoded so far are kept; run the same `bogc prepare` command again to resume "
               "where it stopped",
    "eval": "interrupted: nothing was written (eval results are written only when the evaluation ends) and the "
            "run's files are as they were; run the same `bogc eval` command again",
    "missing-modality": "interrupted: the run's files are as they were (the CSV and the plot are written only when "
                        "the evaluation ends); run the same `bogc missing-modality` command again",
    "report": "interrupted: each table and plot already written is complete (files are replaced whole, never half "
              "written); run the same `bogc report` command again to write them all",
    "reproduce": "interrupted: finished cells are kept and the running ones saved a checkpoint; run the same "
                 "`bogc reproduce` command to continue (finished cells are skipped, interrupted ones resume)",
    "tune": "interrupted: finished trials are kept in the study and the running trial saved a checkpoint; run the "
            "same `bogc tune` command to continue (the cut trial resumes, only the missing trials run)",
    "list": "interrupted",
    None: "interrupted before any command started: nothing was written",
}


def _interrupted() -> str:
    return INTERRUPTED.get(_running["command"], "interrupted")


def _process_zero() -> bool:
    """True unless this is a data-parallel process other than 0 (torchrun sets RANK)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _usage_error_class() -> type[Exception]:
    """The ``ClickException`` of the click that typer runs on: its own vendored copy since typer 0.29 (which no
    longer installs the ``click`` package), the ``click`` package before. Found through typer's public
    ``BadParameter``, so that bogc never imports click itself."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _show_usage_error(exc: Exception) -> None:
    """Print a usage error as typer itself does (usage line, help hint, the message in a box). An error of
    the option parser (an option left without its value, a flag given one) comes without the usage line:
    the hint names the command's help instead."""
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
    except ImportError:  # typer without rich
        exc.show()
    if getattr(exc, "ctx", None) is None:
        command = " ".join(["bogc", *([_running["command"]] if _running["command"] else [])])
        err_console.print(f"Try '{command} --help' for help.", highlight=False)


def main() -> None:
    """Entry point: run the app; user errors -> one message, exit 2; usage errors -> typer's usage message, exit 2;
    Ctrl-C -> what the interrupted command kept, exit 130. Anything else is a bug and ends in its traceback."""
    # data-parallel, every process meets the same mistakes and stops together: process 0 speaks for them
    speaks = _process_zero()
    try:
        code = app(standalone_mode=False)  # typer turns Ctrl-C and typer.Exit into a returned exit code here
    except UserError as exc:
        if speaks or isinstance(exc, ProcessError):
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # typer before 0.29 raised Abort for Ctrl-C; or outside a command
        if speaks:
            err_console.print(_interrupted(), soft_wrap=True)
        sys.exit(130)
    except Exception as exc:
        if not isinstance(exc, _usage_error_class()):
            raise
        _show_usage_error(exc)
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code != 0:
        if code == 130 and speaks:
            err_console.print(_interrupted(), soft_wrap=True)
        sys.exit(code)
