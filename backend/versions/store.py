"""Model versions on disk: fine-tunes published under ``MODEL_DIR/versions``, the pointer to the served one.

Layout::

    MODEL_DIR/versions/
        current                 # JSON pointer: {"version", "pinned", "previous", "updated_at", "reason"}
        projects/<N>            # per-project pointers, the same JSON: what project N is served
        v1-20250301-100000/     # a published version: a checkpoint (released layout) plus
            version.json        #   {"name", "parent", "created_at", "samples", "metrics", "training", ...}
            finetune.json       #   the fine-tune report
            config.json, *.safetensors, tokenizer files, ...

The base checkpoint (``CORES_CHECKPOINT``) is the implicit first version; its name is ``model_version``'s
(``cores-<checkpoint name>`` or ``MODEL_VERSION``) and it has no folder here.

Which version is served (``VersionStore.served``): the pin ``CORES_MODEL_VERSION`` when set, else, for a
request of project N, the version ``projects/<N>`` names, else the version ``current`` names, else the base.
A version trained on one project's corrections is published with that project's pointer moved to it, so it
serves that project only; ``current`` (every other project) moves only when an operator promotes a version
for all (``python -m backend versions promote NAME``) or trains on every project's corrections.

The pointer is a small file replaced atomically (write a temporary
file, fsync, ``os.replace``), never a symlink; readers cache it by ``stat`` (inode, size, mtime), so asking
"which version?" per request costs one ``stat`` call. A version folder appears atomically too: the trainer
writes into a staging folder and ``publish`` renames it into place, so a reader never sees half a
checkpoint. Pointer changes (publish, pin, rollback) take an ``flock`` on ``versions/.lock``.

Nothing here imports torch: the web process reads versions per request.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.operations.version_names import (
    NAME_PATTERN,
    PIN_ENV,
    POINTER_FILE,
    PROJECTS_DIR,
    RESERVED_NAMES,
    VersionError,
)
from backend.versions.model_version import ModelVersion, Pointer, Published, ServedVersion, utc_now

logger = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
VERSION_FILE = "version.json"
_PUBLISHED = re.compile(r"^v(\d+)-")
_LOCK_FILE = ".lock"


class VersionStore:
    """The versions under ``model_dir/versions`` plus the implicit base version. Thread-safe; processes
    coordinate through the lock file.

    Args:
        model_dir: ``MODEL_DIR``.
        base_name: the base checkpoint's version name.
        base_checkpoint: the base checkpoint (folder or hub id).
    """

    def __init__(self, model_dir: Path, base_name: str, base_checkpoint: str) -> None:
        self.root = Path(model_dir) / VERSIONS_DIR
        self.base = ModelVersion(name=base_name, checkpoint=base_checkpoint, base=True)
        self._lock = threading.Lock()
        self._cached: dict[Path, tuple[tuple[int, int, int], Pointer]] = {}
        # Published folders are immutable (renamed into place whole): parse each version.json once.
        self._parsed: dict[str, ModelVersion] = {}

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER_FILE

    def pointer_path_for(self, project: int | None) -> Path:
        """``versions/current`` (None), or project ``project``'s pointer ``versions/projects/<N>``."""
        if project is None:
            return self.pointer_path
        if isinstance(project, bool) or not isinstance(project, int) or project < 0:
            raise VersionError(f"expected a project id, got {project!r}")
        return self.root / PROJECTS_DIR / str(project)

    def project_pointers(self) -> dict[int, Pointer]:
        """Every project's own pointer, by project id."""
        folder = self.root / PROJECTS_DIR
        found: dict[int, Pointer] = {}
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name.isascii() and entry.name.isdigit():
                    pointer = self.read_pointer(int(entry.name))
                    if pointer is not None:
                        found[int(entry.name)] = pointer
        return dict(sorted(found.items()))

    # ---- reading ----------------------------------------------------------------------------------------

    def read_pointer(self, project: int | None = None) -> Pointer | None:
        """The pointer (``current``, or ``project``'s), or None when none was written yet. Re-read only when
        its file changed (``stat``).

        Raises:
            VersionError: a pointer file that is not the JSON this module writes.
        """
        path = self.pointer_path_for(project)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._cached.get(path)
            if cached is not None and cached[0] == key:
                return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pointer = Pointer(
                version=str(data["version"]),
                pinned=bool(data.get("pinned", False)),
                previous=data.get("previous"),
                updated_at=data.get("updated_at"),
                reason=data.get("reason"),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VersionError(
                f"{path} is not a version pointer ({exc}); fix it with `python -m backend versions pin NAME`"
            ) from exc
        with self._lock:
            if len(self._cached) > 4096:  # pointers of projects no longer asked about
                self._cached.clear()
            self._cached[path] = (key, pointer)
        return pointer

    def get(self, name: str) -> ModelVersion:
        """The version called ``name`` (the base's name gives the base).

        Raises:
            VersionError: no such version.
        """
        if name == self.base.name:
            return self.base
        folder = self.root / name
        meta = folder / VERSION_FILE
        if not NAME_PATTERN.match(name) or name in RESERVED_NAMES or not meta.is_file():
            known = ", ".join(v.name for v in self.list())
            raise VersionError(f"no model version {name!r}; known versions: {known}")
        with self._lock:
            found = self._parsed.get(name)
        if found is None:
            found = self._read(folder)
            with self._lock:
                self._parsed[name] = found
        return found

    def _read(self, folder: Path) -> ModelVersion:
        try:
            info = json.loads((folder / VERSION_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VersionError(f"{folder / VERSION_FILE} cannot be read: {exc}") from exc
        return ModelVersion(
            name=folder.name,
            checkpoint=str(folder),
            parent=info.get("parent"),
            created_at=info.get("created_at"),
            info=info,
        )

    def list(self) -> list[ModelVersion]:
        """Every version: the base first, then the published ones, oldest first."""
        published = []
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if folder.is_dir() and NAME_PATTERN.match(folder.name) and (folder / VERSION_FILE).is_file():
                    try:
                        published.append(self._read(folder))
                    except VersionError as exc:
                        logger.warning("skipping an unreadable version: %s", exc)
        published.sort(key=lambda v: (v.created_at or "", v.name))
        return [self.base, *published]

    def served(self, pin: str | None = None, project: int | None = None) -> ServedVersion:
        """The version to serve: ``pin`` (``CORES_MODEL_VERSION``) if given, else ``project``'s pointer's
        (when the project has one), else ``current``'s, else base.

        Raises:
            VersionError: the pin or a pointer names a version that does not exist, or a pointer file is
                unreadable.
        """
        if pin:
            try:
                return ServedVersion(self.get(pin), "pin", True)
            except VersionError as exc:
                raise VersionError(f"{PIN_ENV}={pin}: {exc}") from None
        if project is not None:
            own = self.read_pointer(project)
            if own is not None:
                try:
                    return ServedVersion(self.get(own.version), "project", own.pinned)
                except VersionError as exc:
                    raise VersionError(
                        f"{self.pointer_path_for(project)} names a missing version: {exc}; choose one with "
                        f"`python -m backend versions promote NAME --project {project}`"
                    ) from None
        pointer = self.read_pointer()
        if pointer is None:
            return ServedVersion(self.base, "base", False)
        try:
            return ServedVersion(self.get(pointer.version), "pointer", pointer.pinned)
        except VersionError as exc:
            raise VersionError(
                f"{self.pointer_path} names a missing version: {exc}; "
                "choose one with `python -m backend versions pin NAME`"
            ) from None

    # ---- writing ----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's inter-process lock (``versions/.lock``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / _LOCK_FILE, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_pointer(self, pointer: Pointer, project: int | None = None) -> None:
        """Atomically replace the pointer file (``current`` or ``project``'s; callers hold ``locked()``)."""
        path = self.pointer_path_for(project)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(pointer.to_json(), handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        where = "every project" if project is None else f"project {project}"
        logger.info("model version pointer of %s -> %s (%s)", where, pointer.version, pointer.reason)

    def set_current(self, name: str, *, pinned: bool, reason: str, project: int | None = None) -> Pointer:
        """Point ``current`` (or ``project``'s pointer) at ``name`` (which must exist).

        Raises:
            VersionError: no such version.
        """
        with self.locked():
            self.get(name)
            previous = self.served(project=project).name
            pointer = Pointer(name, pinned, previous, utc_now(), reason)
            self._write_pointer(pointer, project)
            return pointer

    def reset(self, project: int) -> Pointer | None:
        """Drop ``project``'s own pointer: it is served what every project is again. Returns the old one."""
        with self.locked():
            old = self.read_pointer(project)
            self.pointer_path_for(project).unlink(missing_ok=True)
            return old

    def unpin(self, project: int | None = None) -> Pointer:
        """Keep the served version but let the next published version replace it."""
        with self.locked():
            served = self.served(project=project)
            old = self.read_pointer(project)
            pointer = Pointer(served.name, False, old.previous if old else None, utc_now(), "unpinned")
            self._write_pointer(pointer, project)
            return pointer

    def rollback(self, project: int | None = None) -> Pointer:
        """Point ``current`` (or ``project``'s pointer) at the parent of the version served now, pinned (a
        later training run publishes but does not serve until ``unpin`` or ``pin``). ``CORES_MODEL_VERSION``,
        when set, still overrides the pointers.

        Raises:
            VersionError: the served version is the base (it has no parent).
        """
        with self.locked():
            served = self.served(project=project)
            parent = served.version.parent
            if parent is None:
                raise VersionError(f"{served.name} is the base version: there is nothing to roll back to")
            self.get(parent)
            pointer = Pointer(parent, True, served.name, utc_now(), f"rolled back from {served.name}")
            self._write_pointer(pointer, project)
            return pointer

    def next_name(self, when: datetime | None = None) -> str:
        """A fresh published-version name: ``v<N>-<YYYYMMDD>-<HHMMSS>`` with N one above the highest."""
        highest = 0
        if self.root.is_dir():
            for entry in self.root.iterdir():
                found = _PUBLISHED.match(entry.name)
                if found:
                    highest = max(highest, int(found.group(1)))
        stamp = (when or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
        return f"v{highest + 1}-{stamp}"

    def publish(
        self,
        staged: Path,
        info: Mapping[str, Any],
        *,
        pin: str | None = None,
        reason: str = "published",
        project: int | None = None,
        refused: str | None = None,
    ) -> Published:
        """Move the checkpoint folder ``staged`` into the store as a new version and, unless a pin holds
        the pointer (``pin``, i.e. ``CORES_MODEL_VERSION``, or a pinned pointer), serve it: to ``project``
        only (its pointer moves) when given, else to every project (``current`` moves).

        ``refused``: the promotion gate's reason not to serve it (``backend.versions.gate``); it is then kept
        as a candidate, served only after ``versions promote NAME``.

        ``info`` becomes ``version.json`` together with ``name`` and ``created_at``; it should hold
        ``parent``. ``staged`` must be on the same file system as ``MODEL_DIR`` (the move is a rename).

        Raises:
            VersionError: ``staged`` is not a checkpoint folder, or its parent version does not exist.
        """
        if not (staged / "config.json").is_file():
            raise VersionError(f"{staged} holds no checkpoint (config.json): nothing to publish")
        parent = info.get("parent")
        with self.locked():
            if parent is not None:
                self.get(str(parent))
            for _ in range(1000):
                name = self.next_name()
                meta = {"name": name, "created_at": utc_now(), **dict(info)}
                (staged / VERSION_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
                try:
                    staged.rename(self.root / name)  # fails when a folder of that name exists
                except OSError:
                    if not (self.root / name).exists():
                        raise
                    continue
                break
            else:  # pragma: no cover - a thousand concurrent publishers
                raise VersionError("could not find a free version name")
            _fsync_dir(self.root)
            version = self._read(self.root / name)
            served = self.served(project=project)
            held_by = f"{PIN_ENV}={pin}" if pin else None
            if held_by is None and refused:
                held_by = f"the promotion gate: {refused}"
            if held_by is None and served.source in ("project", "pointer") and served.pinned:
                held_by = f"the pointer is pinned to {served.name}"
            if held_by is None:
                self._write_pointer(Pointer(name, False, served.name, utc_now(), reason), project)
        logger.info(
            "published model version %s (parent %s)%s",
            name,
            parent,
            f"; not served: {held_by}" if held_by else "; it is now current",
        )
        return Published(version, held_by is None, held_by)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
