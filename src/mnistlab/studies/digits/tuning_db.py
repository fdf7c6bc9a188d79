"""Where the digits tuning's trials live: an Optuna storage (SQLite in the run folder, or a
database shared by several processes), checked before use and repaired after an interruption.

* every finished trial carries a digest of its parameters and scores, checked (with the
  ranges) before the best trial is chosen: a corrupted database is reported, never used;
* a trial that did not finish — interrupted (marked FAIL) or killed (left RUNNING) — is
  re-queued with its parameters before anything new is sampled;
* on a shared database, each running trial beats (``compat.heartbeat``) so that the other
  processes can tell a dead worker's trial from a slow one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistlab import compat, runs
from mnistlab.errors import CorruptFileError, MnistlabError

if TYPE_CHECKING:
    import optuna

STUDY_NAME = "digits-cv"
FINISHED = ("COMPLETE", "PRUNED")


def record_digest(params: dict, value: float, attrs: dict) -> str:
    body = {
        "params": params,
        "value": value,
        "fold_acc": attrs.get("fold_acc"),
        "best_epochs": attrs.get("best_epochs"),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def storage_url(folder: Path, url: str | None) -> str:
    return url or f"sqlite:///{(folder / 'optuna.db').resolve()}"


def describe_url(url: str) -> str:
    """A storage URL for messages: the file of SQLite, the URL without its password."""
    if url.startswith("sqlite:///"):
        return url.removeprefix("sqlite:///")
    scheme, sep, rest = url.partition("://")
    user, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{user.split(':')[0]}{at}{host}" if at else url


def db_error(url: str, exc: Exception) -> MnistlabError:
    return MnistlabError(
        f"tuning database {describe_url(url)} cannot be used ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:120]}); delete it or re-run with --force to start the tuning "
        "again"
    )


HEARTBEAT = 5  # seconds between a shared-database trial's heartbeats
STALE = 4 * HEARTBEAT  # a RUNNING trial silent this long is failed and re-queued


@dataclass
class Tuning:
    """An Optuna study, where it is stored, and whether other processes share it."""

    study: optuna.Study
    url: str
    shared: bool = False
    storage: Any = None  # the RDBStorage of a shared study (its heartbeats are recorded here)


def open_tuning(url: str, *, shared: bool = False) -> Tuning:
    """The tuning study, created or loaded. ``shared``: several processes use this database
    (a ``--storage`` URL): trials carry heartbeats, a silent one is failed and its parameters
    re-queued by whoever notices, and concurrent creation is retried instead of failing."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    last: Exception | None = None
    for attempt in range(20):
        try:
            storage = None
            if shared:
                storage = optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT,
                    grace_period=STALE,
                    heartbeat_stale_trial_callback=optuna.storages.RetryFailedTrialCallback(
                        max_retry=3
                    ),
                )
            study = optuna.create_study(
                study_name=STUDY_NAME,
                storage=storage or url,
                direction="maximize",
                load_if_exists=True,
                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
            )
            return Tuning(study, url, shared, storage)
        except Exception as exc:  # damaged file, foreign database, or a creation race
            last = exc
            if not shared:
                break
            time.sleep(0.1 * (attempt + 1))  # another process is creating the same study
    raise db_error(url, last) from None


def claimed(trials, number: int | None = None) -> int:
    """Trials that count against the budget (finished, running or queued), optionally only
    those numbered below ``number``."""
    states = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
    return sum(
        t.state.name in states
        and (number is None or t.number < number)
        and not t.user_attrs.get("over_budget")
        for t in trials
    )


def repair(study: optuna.Study) -> int:
    """Stale RUNNING trials → FAIL; every FAIL trial not yet retried is enqueued again with
    its parameters. Only safe while this process is the study's one writer (the run folder
    lock). Returns how many trials were re-queued.

    A trial killed while its parameters were being drawn (some stored, some not) is not
    re-queued: a retry would keep the stored ones and draw the rest afresh, which no
    uninterrupted run does. It stays failed, and the next trial draws what an uninterrupted run
    would (the sampler is seeded by the count of finished trials)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL)  # its process is gone
        elif t.state != TrialState.FAIL or t.user_attrs.get("over_budget"):
            continue
        if t.number not in retried and t.params and t.user_attrs.get("drawn"):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            queued += 1
    return queued


def verified_trials(study: optuna.Study, folds: int, where: str) -> list:
    """Finished trials whose stored numbers are intact and in range."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in FINISHED:
            continue
        if t.state.name == "COMPLETE":
            acc = t.user_attrs.get("fold_acc")
            ok = (
                t.value is not None
                and math.isfinite(t.value)
                and 0 <= t.value <= 1
                and isinstance(acc, list)
                and len(acc) == folds
                and all(isinstance(a, float) and 0 <= a <= 1 for a in acc)
                and t.user_attrs.get("digest") == record_digest(t.params, t.value, t.user_attrs)
            )
            if not ok:
                raise CorruptFileError(
                    where,
                    f"trial {t.number}'s stored result does not verify (value {t.value!r}); "
                    "re-run with --force to tune again",
                )
        out.append(t)
    return out


@contextlib.contextmanager
def heartbeat(tuning: Tuning, number: int):
    """Heartbeats of trial ``number`` on a shared study while it runs (none otherwise), through
    the storage's public API: Optuna records them itself only inside ``study.optimize``, and
    the exact resume above needs ask-and-tell."""
    if not tuning.shared:
        yield
        return
    record = compat.heartbeat(tuning.storage, STUDY_NAME, number)
    if record is None:  # this Optuna has no heartbeat methods (compat.py)
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            record()
            if stop.wait(HEARTBEAT):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def write_trials(path: Path, study: optuna.Study) -> None:
    """Every trial, failed and re-queued ones included: the tuning's audit trail."""
    runs.atomic_write_csv(
        path,
        [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                **t.params,
                "fold_acc": t.user_attrs.get("fold_acc"),
                "retry_of": t.user_attrs.get("retry_of"),
            }
            for t in study.get_trials(deepcopy=False)
        ],
    )
