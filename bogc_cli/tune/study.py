"""The Optuna study of a tune: its storage, its trial budget, and trials a kill or Ctrl-C cut short.

Storage: any Optuna RDB URL (``--storage``); by default the SQLite file ``<experiment folder>/optuna.db``,
so a killed ``bogc tune`` finds its finished trials again. Several processes (``--jobs``, other machines,
Slurm array tasks) share one study through it.

Budget: ``--trials N`` is the study's total, not each process's: a trial *slot* is a trial number, and a
trial that resumes an interrupted one keeps the slot it continues (user attribute ``bogc.slot``). A
process starts a trial only while fewer than N slots are taken; should two processes ask for the last
slot at once, the later trial number yields (``bogc.excess``, FAIL, not counted), so every study gets
exactly N, which is what makes a comparison of methods tuned with ``bogc tune`` fair.

Interrupted trials: Ctrl-C or SIGTERM checkpoint the trial's run and mark it ``bogc.interrupted``
(Optuna marks it FAIL); a SIGKILL leaves it RUNNING with its trial lock free (the kernel releases a
dead process's ``flock``). ``recover`` (run when a tune starts, under the experiment folder's lock)
marks those FAIL and enqueues each one's parameters again as a retry of its slot, which resumes the
trial's run directory from its last checkpoint. A trial whose process vanished elsewhere (another
machine) is failed by Optuna's heartbeat after ``GRACE_S`` and retried the same way.
"""

from __future__ import annotations

import fcntl
import inspect
import logging
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from bogc_cli.errors import UserError

SLOT, EXCESS, INTERRUPTED, RUN_DIR, ERROR = "bogc.slot", "bogc.excess", "bogc.interrupted", "bogc.run_dir", "bogc.error"
HEARTBEAT_S, GRACE_S = 30, 180
TRIAL_LOCK = ".trial.lock"


def default_storage(root: Path) -> str:
    return "sqlite:///" + str((root / "optuna.db").resolve())


def shown(url: str) -> str:
    """``url`` with any password masked, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` (created when new), with heartbeats so a vanished process's trial is
    retried. Raises ``UserError`` naming the URL when it cannot be opened (a wrong URL, a driver that is
    not installed, an unreachable server, an unwritable file)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # bogc prints its own line per trial (and no traceback)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    callback = ("heartbeat_stale_trial_callback"
                if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                else "failed_trial_callback")  # Optuna < 4.9
    failure: Exception | None = None
    for attempt in range(5):
        try:
            # SQLite: processes sharing the file create its tables one at a time (two creating them at once
            # fail with "table ... already exists", "database is locked" or a duplicate alembic version)
            with _sqlite_creation_lock(url):
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, **{callback: requeue})
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy, driver and Optuna errors alike
            failure = exc
            if "already exists" not in str(exc) and "locked" not in str(exc):
                break
            time.sleep(0.5 + attempt)  # another process (perhaps on another machine) is creating the tables
    text = str(failure).strip().splitlines()
    raise UserError(f"--storage {shown(url)} cannot be opened: {type(failure).__name__}: {text[0] if text else ''}; "
                    "give a reachable Optuna RDB URL (sqlite:///path/optuna.db, postgresql://user@host/db, "
                    "mysql://...) with its driver installed, or leave --storage out for the SQLite file in the "
                    "experiment folder")


@contextmanager
def _sqlite_creation_lock(url: str):
    """Holds ``<database>.lock`` for a ``sqlite:///`` URL, creating the database's folder; no lock for a server
    URL (the server serialises its clients)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    database = Path(url.removeprefix("sqlite:///"))
    with _flock(database.with_name(database.name + ".lock")):
        yield


def slot_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(SLOT, trial.number))


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that take part in the study (not those that yielded to the budget)."""
    return [t for t in trials if not t.user_attrs.get(EXCESS)]


def slots_taken(trials: list[FrozenTrial]) -> set[int]:
    return {slot_of(t) for t in counted(trials) if t.state != TrialState.WAITING}


def latest_per_slot(trials: list[FrozenTrial]) -> dict[int, FrozenTrial]:
    """Each slot's latest trial (a retry after the trial it continues): the slot's outcome."""
    latest: dict[int, FrozenTrial] = {}
    for t in sorted(counted(trials), key=lambda t: t.number):
        latest[slot_of(t)] = t
    return latest


def is_excess(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Whether a new trial (not a retry) came after the budget was taken by new trials numbered before it."""
    before = {t.number for t in counted(study.get_trials(deepcopy=False))
              if t.number < trial.number and slot_of(t) == t.number}
    return len(before) >= budget


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue ``trial``'s parameters as a retry of its slot (it resumes the slot's run directory)."""
    study.enqueue_trial(trial.params, user_attrs={SLOT: slot_of(trial), "bogc.retry_of": trial.number})


@contextmanager
def folder_lock(root: Path):
    """Hold ``<root>/.tune.lock`` (``flock``): one process at a time recovers trials of this folder's studies."""
    with _flock(root / ".tune.lock"):
        yield


@contextmanager
def _flock(path: Path):
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder, when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def trial_lock_free(folder: Path) -> bool:
    """Whether ``folder/.trial.lock`` exists and no live process holds it (its trial's process died)."""
    path = folder / TRIAL_LOCK
    if not path.is_file():
        return False  # not ours (another machine's), or not started: the heartbeat judges those
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


def recover(study: optuna.Study, trial_folder) -> list[int]:
    """Retry the trials that were cut short: each slot whose latest trial was interrupted (FAIL with
    ``bogc.interrupted``) or killed (RUNNING, its trial lock free: ``trial_folder(slot)`` is its folder)
    gets its parameters enqueued again. Call under ``folder_lock``. Returns the slots retried."""
    retried = []
    for slot, trial in latest_per_slot(study.get_trials(deepcopy=False)).items():
        if trial.state == TrialState.RUNNING and trial_lock_free(trial_folder(slot)):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - finished meanwhile (another process, or the heartbeat)
                continue
        elif not (trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED)):
            continue
        requeue(study, trial)
        retried.append(slot)
    return retried
