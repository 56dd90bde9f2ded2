"""``--model-control-mode poll``: the repository on disk is the source of truth, read every
``--repository-poll-secs``.

Every model's directory is fingerprinted (each file's path, size and modification time, symlinks
not followed). A model whose fingerprint changed — a new version, a changed config.pbtxt or
baseline, a removed version — is reloaded; a new directory is loaded; a vanished one unloaded.
A change is acted on only once two polls in a row saw the same fingerprint, so a directory still
being copied is never loaded half-written. A reload that fails leaves what served before serving
(the repository's rule), is logged and counted, and polling goes on.

Some files are followed rather than loaded (a model's ``rollout.yaml``): they are left out of the
fingerprint, so that changing one never reloads the model, and whoever follows one is told the model's
name when it changed (written atomically, it is read whole at once: no second look).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from serve.errors import ServeError
from serve.repository.model_version import POLL
from serve.repository.repository import ModelRepository

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]
FileStamp = tuple[int, int] | None  # (size, mtime in ns) of a followed file; None if there is none
# Told a model's name when a file it follows changed.
Follower = Callable[[str], object]


def _followed_or_being_written(name: str, followed: frozenset[str]) -> bool:
    # serve.modelgen.write_atomic's temporary file, ".<name>.<random>.tmp", is part of a followed file too.
    return name in followed or any(name.startswith(f".{f}.") and name.endswith(".tmp") for f in followed)


def fingerprint(directory: Path, followed: frozenset[str] = frozenset()) -> Fingerprint | None:
    """(relative path, size, mtime in ns) of every file below ``directory`` but the ``followed`` files at
    its top; None if it is gone."""
    if not directory.is_dir():
        return None
    entries: list[tuple[str, int, int]] = []
    for top, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in files:
            if followed and top == str(directory) and _followed_or_being_written(name, followed):
                continue
            path = Path(top) / name
            try:
                stat = path.lstat()
            except OSError:  # removed while we looked: the next poll sees the rest
                continue
            entries.append((path.relative_to(directory).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


def _stamp(path: Path) -> FileStamp:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class RepositoryPoller:
    def __init__(
        self, repository: ModelRepository, interval_s: float, followers: Mapping[str, Follower] | None = None
    ) -> None:
        self._repository = repository
        self._interval_s = interval_s
        self._followers = dict(followers or {})  # file name in a model's directory -> who follows it
        self._followed = frozenset(self._followers)
        self._applied: dict[str, Fingerprint | None] = {}  # what the loaded state was made from
        self._seen: dict[str, Fingerprint | None] = {}  # a change seen once, waiting for a second look
        self._stamps: dict[tuple[str, str], FileStamp] = {}  # (model, followed file) -> as last told
        self._task: asyncio.Task[None] | None = None

    def _scan(self) -> tuple[dict[str, Fingerprint | None], dict[tuple[str, str], FileStamp]]:
        names = set(self._repository.model_names()) | set(self._applied)
        scanned: dict[str, Fingerprint | None] = {}
        stamps: dict[tuple[str, str], FileStamp] = {}
        for name in names:
            try:
                directory = self._repository.model_dir(name)
            except ServeError:
                scanned[name] = None
                continue
            scanned[name] = fingerprint(directory, self._followed)
            for followed in self._followed:
                stamps[(name, followed)] = _stamp(directory / followed)
        return scanned, stamps

    def mark_loaded(self) -> None:
        """The repository's state now reflects the disk as it is (after the loads at start, which read
        the followed files too)."""
        self._applied, self._stamps = self._scan()
        self._seen.clear()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll()
            except Exception:  # a poll that fails must not end polling
                log.exception("polling the model repository failed; the next poll tries again")

    async def poll(self) -> list[str]:
        """One look at the repository; returns the models loaded, reloaded or unloaded."""
        scanned, stamps = await asyncio.to_thread(self._scan)
        self._tell_followers(stamps)
        acted: list[str] = []
        for name, now in sorted(scanned.items(), key=lambda item: item[0]):
            if now == self._applied.get(name):
                self._seen.pop(name, None)
                continue
            if name not in self._seen or self._seen[name] != now:
                self._seen[name] = now  # changing (or still being copied): look again next time
                continue
            del self._seen[name]
            self._applied[name] = now
            acted.append(name)
            try:
                if now is None:
                    log.info("model %s left the repository: unloading it", name)
                    await self._repository.unload_model(name, actor=POLL)
                else:
                    log.info("model %s changed in the repository: loading it", name)
                    await self._repository.load_model(name, actor=POLL)
            except ServeError as exc:
                log.error("model %s: %s", name, exc.message)
        return acted

    def _tell_followers(self, stamps: dict[tuple[str, str], FileStamp]) -> None:
        for (name, followed), stamp in sorted(stamps.items()):
            if self._stamps.get((name, followed)) == stamp:
                continue
            self._stamps[(name, followed)] = stamp
            try:
                self._followers[followed](name)
            except Exception:  # one follower's failure must not end polling
                log.exception("model %s: following its %s failed", name, followed)
