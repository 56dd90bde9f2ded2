"""``--model-control-mode poll``: the repository on disk is the source of truth, read every
``--repository-poll-secs``.

Every model's directory is fingerprinted (each file's path, size and modification time, symlinks
not followed). A model whose fingerprint changed — a new version, a changed config.pbtxt or
baseline, a removed version — is reloaded; a new directory is loaded; a vanished one unloaded.
A change is acted on only once two polls in a row saw the same fingerprint, so a directory still
being copied is never loaded half-written. A reload that fails leaves what served before serving
(the repository's rule), is logged and counted, and polling goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from serve.errors import ServeError
from serve.repository.model_version import POLL
from serve.repository.repository import ModelRepository

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(directory: Path) -> Fingerprint | None:
    """(relative path, size, mtime in ns) of every file below ``directory``; None if it is gone."""
    if not directory.is_dir():
        return None
    entries: list[tuple[str, int, int]] = []
    for top, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in files:
            path = Path(top) / name
            try:
                stat = path.lstat()
            except OSError:  # removed while we looked: the next poll sees the rest
                continue
            entries.append((path.relative_to(directory).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


class RepositoryPoller:
    def __init__(self, repository: ModelRepository, interval_s: float) -> None:
        self._repository = repository
        self._interval_s = interval_s
        self._applied: dict[str, Fingerprint | None] = {}  # what the loaded state was made from
        self._seen: dict[str, Fingerprint | None] = {}  # a change seen once, waiting for a second look
        self._task: asyncio.Task[None] | None = None

    def _scan(self) -> dict[str, Fingerprint | None]:
        names = set(self._repository.model_names()) | set(self._applied)
        scanned: dict[str, Fingerprint | None] = {}
        for name in names:
            try:
                scanned[name] = fingerprint(self._repository.model_dir(name))
            except ServeError:
                scanned[name] = None
        return scanned

    def mark_loaded(self) -> None:
        """The repository's state now reflects the disk as it is (after the loads at start)."""
        self._applied = self._scan()
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
        scanned = await asyncio.to_thread(self._scan)
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
