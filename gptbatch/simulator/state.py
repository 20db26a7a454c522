"""A simulator's state directory: its settings, an append-only change log, uploads, the time.

The service is event-sourced: every change (an upload, a batch creation, a cancel, a limit
or fault change) is one JSON record, appended and fsynced before it is applied and before
the HTTP reply goes out. Processing is deterministic given those records, so a restarted
simulator replays them to rebuild statuses, output files and billing exactly. Layout:

    simulator.json   format version and the settings replay depends on (written once)
    log.jsonl        one record per change, in order; a torn last line (kill -9) is dropped
    files/<id>       each uploaded file's bytes (an Anthropic batch's body), written once
                     before its record
    clock.json       the simulated time reached, saved whenever something visible happened
    lock             flock'd while a simulator uses the directory
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from gptbatch.canonical import atomic_write_bytes, canonical_json, fsync_dir
from gptbatch.errors import StateError

__all__ = ["BLOB_RECORDS", "FORMAT", "SimStateError", "StateDir"]

FORMAT = 1
# Records whose bytes are kept under files/<id>: uploads (OpenAI's, Gemini's) and
# Anthropic batches' bodies.
BLOB_RECORDS = ("file", "anthropic_batch", "gemini_file")
REMEDY = "start the simulator on another --state-dir, or move this one away"


class SimStateError(StateError):
    """A simulator state directory is unreadable, in use, or was written with other settings."""


class StateDir:
    """An open, locked state directory: what it held when opened, and appends to it."""

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any]) -> None:
        """Open (creating if needed) and lock `path`; SimStateError if it cannot be used."""
        self.path = Path(path)
        self._files = self.path / "files"
        self._log_path = self.path / "log.jsonl"
        try:
            self._files.mkdir(parents=True, exist_ok=True)
            self._lock = self._take_lock()
        except OSError as exc:
            raise SimStateError(
                f"cannot use {self.path}: {exc.strerror or exc}: {REMEDY}"
            ) from None
        try:
            self._check_settings(json.loads(canonical_json(settings)))
            self.records: list[dict[str, Any]] = self._read_log()
            self.saved_time = self._read_time()
            self._remove_strays()
            self._log: IO[bytes] = open(self._log_path, "ab")  # noqa: SIM115 - kept open
            fsync_dir(self.path)
        except OSError as exc:
            self._lock.close()
            raise SimStateError(
                f"cannot use {self.path}: {exc.strerror or exc}: {REMEDY}"
            ) from None
        except BaseException:
            self._lock.close()
            raise

    # --- opening -------------------------------------------------------------------------

    def _take_lock(self) -> IO[str]:
        lock = open(self.path / "lock", "a+")  # noqa: SIM115 - held while the simulator runs
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise SimStateError(
                f"another simulator is using {self.path}: stop it first, or {REMEDY}"
            ) from None
        return lock

    def _check_settings(self, settings: dict[str, Any]) -> None:
        meta = self.path / "simulator.json"
        if not meta.exists():
            strays = [
                p.name
                for p in self.path.iterdir()
                if p.name not in ("lock", "files") and not p.name.endswith(".tmp")
            ]
            if strays or any(self._files.iterdir()):
                raise SimStateError(
                    f"{self.path} is not empty and holds no simulator state "
                    f"(no simulator.json): {REMEDY}"
                )
            atomic_write_bytes(meta, canonical_json({"format": FORMAT, "settings": settings}))
            return
        try:
            saved = json.loads(meta.read_bytes())
            version, before = saved["format"], saved["settings"]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise SimStateError(f"{meta} is unreadable ({exc}): {REMEDY}") from None
        if version != FORMAT:
            raise SimStateError(
                f"{self.path} holds simulator state format {version}, this gptbatch "
                f"reads format {FORMAT}: {REMEDY}"
            )
        changed = [
            f"{key} {before.get(key)!r} -> {settings.get(key)!r}"
            for key in sorted(set(before) | set(settings))
            if before.get(key) != settings.get(key)
        ]
        if changed:
            raise SimStateError(
                f"{self.path} holds the state of a simulator with other settings "
                f"({', '.join(changed)}); replaying it would rewrite its history: start with "
                f"the same settings, or {REMEDY}"
            )

    def _read_log(self) -> list[dict[str, Any]]:
        try:
            data = self._log_path.read_bytes()
        except FileNotFoundError:
            return []
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a write torn by a kill: never acknowledged, so drop it
            with open(self._log_path, "r+b") as f:
                f.truncate(complete)
                os.fsync(f.fileno())
        records = []
        for number, line in enumerate(data[:complete].splitlines(), 1):
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("op"), str):
                    raise ValueError("not a record")
            except ValueError:
                raise SimStateError(
                    f"{self._log_path}:{number}: damaged record: {REMEDY}"
                ) from None
            records.append(record)
        return records

    def _read_time(self) -> float | None:
        path = self.path / "clock.json"
        try:
            times = [float(r["at"]) for r in self.records[-1:]]
            if path.exists():
                times.append(float(json.loads(path.read_bytes())["time"]))
        except (OSError, ValueError, TypeError, KeyError):
            raise SimStateError(
                f"{path} or the last record of the log is unreadable: {REMEDY}"
            ) from None
        return max(times) if times else None

    def _remove_strays(self) -> None:
        """Uploads a kill interrupted before their record was written: never acknowledged."""
        kept = {r.get("id") for r in self.records if r["op"] in BLOB_RECORDS}
        for path in self._files.iterdir():
            if path.name not in kept:
                with contextlib.suppress(OSError):
                    path.unlink()

    # --- writing -------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (on failure the log is left as it was)."""
        # ASCII escapes: any str (even a lone surrogate from a JSON body) reads back the same.
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
        data = line.encode() + b"\n"
        fd = self._log.fileno()
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise

    def stage(self, data: bytes) -> Path:
        """Write an upload's bytes durably under a temporary name (slow part, no lock needed)."""
        fd, name = tempfile.mkstemp(dir=self._files, prefix=".upload.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.discard(Path(name))
            raise
        return Path(name)

    def keep(self, staged: Path, file_id: str) -> None:
        """Give a staged upload its file id (before the record naming it is appended)."""
        os.replace(staged, self._files / file_id)
        fsync_dir(self._files)

    @staticmethod
    def discard(staged: Path) -> None:
        """Remove a staged upload that was refused."""
        with contextlib.suppress(OSError):
            staged.unlink()

    def blob(self, file_id: str) -> bytes:
        """An uploaded file's bytes; SimStateError if missing."""
        try:
            return (self._files / file_id).read_bytes()
        except OSError as exc:
            raise SimStateError(
                f"{self._files / file_id}: uploaded file unreadable ({exc.strerror}): {REMEDY}"
            ) from None

    def save_time(self, at: float) -> None:
        """Record the simulated time reached."""
        atomic_write_bytes(self.path / "clock.json", canonical_json({"time": at}))

    def close(self) -> None:
        """Close the log and release the lock."""
        self._log.close()
        self._lock.close()
