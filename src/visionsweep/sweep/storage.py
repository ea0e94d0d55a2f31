"""Where a sweep's Optuna study lives, and opening it the same way in every worker and trial.

* Default: an append-only journal file ``<run folder>/study.journal``
  (``JournalStorage(JournalFileBackend(...))``). Several processes on one machine (the runner and
  its trial processes, or several ``run`` commands) share it safely through its file lock; a
  shared file system with working locks (NFSv3+) extends that to several machines. SQLite is not
  used by default because parallel writers get "database is locked" (spec C.5).
* A URL: ``postgresql://user@host/db`` (or ``mysql://``, ``sqlite:///file.db``) opens Optuna's
  ``RDBStorage`` (the first worker creates the tables; workers that start together retry, see
  ``_database``); ``redis://host:port`` opens a Redis journal (needs the ``redis`` package),
  without Optuna's pickled snapshot (``_RedisLogOnly``).
  PostgreSQL needs a driver: SQLAlchemy 2.1 reads ``postgresql://`` with psycopg 3
  (``pip install "psycopg[binary]"``); ``postgresql+psycopg2://`` selects psycopg2 instead.
* Any other string is a journal file path (relative to the run folder).
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalRedisBackend, JournalStorage

from visionsweep.errors import SettingsError
from visionsweep.sweep import attrs

JOURNAL_FILE = "study.journal"
# A process holds the journal lock for one append, milliseconds. A killed process can leave the lock
# behind; Optuna breaks it after this many seconds of no change (its default, 30 s, made every
# resume after a kill wait half a minute).
LOCK_GRACE_S = 5
# How long opening a database is retried: long enough for a worker that creates the tables at the
# same moment to finish (milliseconds on SQLite, a second or two on a remote server).
_CREATE_RETRY_S = 15.0
_RDB_SCHEMES = ("postgresql", "postgres", "mysql", "sqlite", "mariadb", "oracle", "mssql")


def open_storage(spec: str | None, run_dir: str | Path) -> BaseStorage:
    """Open the storage named by ``spec`` (None: the journal file in ``run_dir``)."""
    run_dir = Path(run_dir)
    if spec is None:
        return _journal(run_dir.resolve() / JOURNAL_FILE)
    scheme = spec.split("://", 1)[0].split("+", 1)[0].lower() if "://" in spec else ""
    if scheme == "redis":
        return JournalStorage(_RedisLogOnly(spec))
    if scheme in _RDB_SCHEMES:
        url = "postgresql" + spec[len("postgres"):] if spec.startswith("postgres://") else spec
        return _database(url, spec)
    if scheme:
        raise SettingsError([f"--storage {mask_url(spec)}: unknown scheme {scheme!r}; use postgresql://, mysql://, "
                             "sqlite:///, redis:// or a journal file path"], context="storage")
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else run_dir.resolve() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return _journal(path)


def journal_path(spec: str | None, run_dir: str | Path) -> Path | None:
    """The journal file of a file-based storage (None for databases and Redis)."""
    if spec is None:
        return Path(run_dir).resolve() / JOURNAL_FILE
    if "://" in spec:
        return None
    path = Path(spec).expanduser()
    return path if path.is_absolute() else Path(run_dir).resolve() / path


def open_study(storage: BaseStorage, study_name: str, *, fingerprint: str, plan: dict[str, Any],
               summary: dict[str, Any], sampler: BaseSampler | None = None,
               pruner: BasePruner | None = None) -> tuple[optuna.Study, dict[str, Any], bool]:
    """Create the study, or load it and check that it belongs to the same job.

    Returns (study, the plan stored in the study, created). The first worker stores ``plan``;
    later workers and resumed runs use the stored plan, so that all of them sample one space even
    where the plan depends on the machine (AutoMode). Raises ``SettingsError`` when the study holds
    another job's sweep.
    """
    created = False
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler, pruner=pruner)
    stored = study.user_attrs
    if created or attrs.FINGERPRINT not in stored:
        # A worker that died between creating the study and writing these is repaired by the next one.
        study.set_user_attr(attrs.PLAN, plan)
        study.set_user_attr(attrs.BUDGET, plan["budget"])
        study.set_user_attr(attrs.JOB_SUMMARY, summary)
        study.set_user_attr(attrs.FINGERPRINT, fingerprint)
        return study, plan, created
    if stored[attrs.FINGERPRINT] != fingerprint:
        raise SettingsError([
            f"study {study_name!r} in this storage holds the sweep of a different job (its task, settings, search "
            "space, sampling, policy or max_trials differ). Run the changed job in a new run folder, or give it "
            "another name (job name: or --study-name)"], context="sweep")
    return study, stored[attrs.PLAN], created


def _database(url: str, spec: str) -> RDBStorage:
    """Open Optuna's RDBStorage, creating its tables in a new database.

    Two workers that open a new database at the same moment both create Optuna's tables and both
    stamp its schema version; the slower one's statement fails ("table studies already exists",
    "UNIQUE constraint failed: alembic_version.version_num" on SQLite, the same as other errors on
    PostgreSQL and MySQL). Moments later the faster one has finished, and opening again finds the
    complete schema and creates nothing. So a failed first open is retried for up to
    ``_CREATE_RETRY_S``; what still fails after that (a server that does not answer, a file that
    cannot be written) is reported.
    """
    started = time.monotonic()
    delay = 0.05
    while True:
        try:
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as error:
            raise SettingsError([f"--storage {mask_url(spec)}: the database driver is missing "
                                 f"({error.__cause__ or error}); for postgresql:// install it with: "
                                 "pip install \"psycopg[binary]\""], context="storage") from None
        except sqlalchemy.exc.DBAPIError as error:
            if time.monotonic() - started > _CREATE_RETRY_S:
                first = str(error.orig or error).strip().splitlines()[0]
                raise SettingsError([f"--storage {mask_url(spec)}: cannot open the database: {first}"],
                                    context="storage") from None
        time.sleep(delay)
        delay = min(2 * delay, 1.0)


class _RedisLogOnly(JournalRedisBackend):
    """Optuna's Redis journal without its snapshot. Optuna keeps a pickled copy of the study in
    Redis next to the log and unpickles it on open, so whoever could write that one key could run
    code in every worker; the log (JSON) alone rebuilds the same study, a little more slowly."""

    def save_snapshot(self, snapshot: bytes) -> None:
        pass

    def load_snapshot(self) -> bytes | None:
        return None


def _journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path), LOCK_GRACE_S)))


def study_seed(study_name: str) -> int:
    """A stable seed derived from the study name (the Sobol sequence's seed when the job gives none)."""
    return zlib.crc32(study_name.encode())


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url

