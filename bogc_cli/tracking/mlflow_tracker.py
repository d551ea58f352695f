"""MLflow: one MLflow run per run directory, in the MLflow experiment named as the recipe's experiment.

Store: ``output.mlflow_uri``, else the ``MLFLOW_TRACKING_URI`` environment variable, else a local SQLite
file ``<output.dir>/<experiment>/mlflow.db`` (a SQLite store's artifacts go to ``mlartifacts`` beside it);
any MLflow tracking URI (a shared server, a database) works the same. Watch it with
``mlflow ui --backend-store-uri sqlite:///results/<experiment>/mlflow.db``.

Logged (names: tracking/metrics.py): parameters = the resolved recipe, flattened (``optim.lr``,
``method.name``, ...); every epoch's metrics.jsonl figures, at step = the epoch; when the run finishes,
eval.json's test figures (``test.accuracy``, ...) and, as artifacts, eval.json, recipe.yaml,
metrics.jsonl and the run's figures. The run ends FINISHED, KILLED (stopped: resumable) or FAILED.

The MLflow run's id is kept in ``<run_dir>/mlflow.json``: a resumed run continues that MLflow run and
logs only the epochs it has not got yet, so no step is logged twice; epochs done before MLflow was added
to a run are logged from metrics.jsonl.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from bogc_cli.atomic import write_json
from bogc_cli.engine.callbacks import Callback, RunEnd, RunStart
from bogc_cli.errors import UserError
from bogc_cli.recipe import Recipe
from bogc_cli.tracking import import_or_refuse
from bogc_cli.tracking.metrics import figures, flatten, numeric, run_name, test_metrics

RUN_FILE = "mlflow.json"
_BATCH = 100  # parameters per log_batch call (MLflow's limit)
_PARAM_CHARS = 6000  # longest parameter value every MLflow store takes


def tracking_uri(recipe: Recipe) -> str:
    """``output.mlflow_uri``, else ``MLFLOW_TRACKING_URI``, else the SQLite file of the experiment folder."""
    if recipe.output.mlflow_uri:
        return recipe.output.mlflow_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str((Path(recipe.output.dir) / recipe.experiment / "mlflow.db").resolve())


def safe_name(name: str) -> str:
    """A metric or parameter name MLflow accepts (letters, digits, ``_ - . / space``)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


class MlflowTracker(Callback):
    """Opens the store (and the MLflow experiment) at once, so a wrong URI is refused before the run writes
    anything: ``UserError`` naming the URI."""

    def __init__(self, recipe: Recipe, run_dir: Path):
        import_or_refuse("mlflow", "mlflow")
        for noisy in ("mlflow", "alembic"):  # store creation and migrations log at INFO on stderr
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(recipe)
        self.run_dir = run_dir
        self.name = run_name(recipe)
        self.run_id: str | None = None
        self.logged_epochs = 0
        try:
            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(recipe)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds (MlflowException, OSError, SQL errors)
            raise UserError(f"MLflow tracking URI {self.uri} cannot be used: {_first_line(exc)}; fix output.mlflow_uri "
                            "or MLFLOW_TRACKING_URI (or leave both unset for the local SQLite store), or remove "
                            "mlflow from output.trackers") from None

    def _experiment(self, recipe: Recipe) -> str:
        """The MLflow experiment named as the recipe's experiment, created when missing."""
        found = self.client.get_experiment_by_name(recipe.experiment)
        if found is not None:
            return found.experiment_id
        # a SQLite store keeps its artifacts beside its file (MLflow's default, ./mlruns, would land in
        # whatever folder bogc runs from); a server or another store decides for itself
        where = None
        if self.uri.startswith("sqlite:///"):
            where = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(recipe.experiment, artifact_location=where)
        except Exception:  # another process created it meanwhile
            found = self.client.get_experiment_by_name(recipe.experiment)
            if found is None:
                raise
            return found.experiment_id

    def on_run_start(self, run: RunStart) -> None:
        saved = _read(self.run_dir / RUN_FILE)
        if saved.get("tracking_uri") == self.uri and self._continue(saved.get("run_id")):
            pass
        else:
            self._create(run)
        for record in run.records:  # epochs it has not got: from before MLflow was added, or a lost session
            self._epoch(record["epoch"], record)

    def _continue(self, run_id: str | None) -> bool:
        """Continue the MLflow run ``run_id`` (RUNNING again); False when the store no longer has it."""
        if not run_id:
            return False
        try:
            found = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - deleted, or another store
            return False
        self.run_id = run_id
        history = self.client.get_metric_history(run_id, "epoch")
        self.logged_epochs = int(max((m.step for m in history), default=0))
        if found.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return True

    def _create(self, run: RunStart) -> None:
        from mlflow.entities import Param

        created = self.client.create_run(self.experiment_id, run_name=self.name,
                                         tags={"bogc.run_dir": str(self.run_dir.resolve())})
        self.run_id, self.logged_epochs = created.info.run_id, 0
        params = [Param(safe_name(k), _param_value(v)) for k, v in flatten(run.recipe).items()]
        for i in range(0, len(params), _BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _BATCH])
        write_json(self.run_dir / RUN_FILE, {"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                                             "run_id": self.run_id})

    def on_epoch_end(self, epoch: int, record: dict) -> str | None:
        self._epoch(epoch, record)
        return None

    def _epoch(self, epoch: int, record: dict) -> None:
        if epoch <= self.logged_epochs:
            return
        self._metrics(numeric(record), step=epoch)
        self.logged_epochs = epoch

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(safe_name(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def on_run_end(self, end: RunEnd) -> None:
        if self.run_id is None:
            return
        if end.status == "finished" and end.result is not None:
            self._metrics({f"test.{k}": v for k, v in test_metrics(end.result.test).items()}, step=end.epochs_done)
            for name in ("eval.json", "recipe.yaml", "metrics.jsonl"):
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            for png in figures(self.run_dir):
                self.client.log_artifact(self.run_id, str(png), artifact_path="figures")
        status = {"finished": "FINISHED", "stopped": "KILLED"}.get(end.status, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


def _param_value(value) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:_PARAM_CHARS]


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
