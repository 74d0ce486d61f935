"""Where a gateway keeps the rule bundles it applied (``[chain] bundles``)::

    bundles/
      6/            offers.toml … bundle.json (the signed payload as received)
      7/
      current -> 7  the running bundle: a symlink, replaced in one rename

Every step is atomic on its own: a bundle's folder is written under a temporary name
and renamed into place, then ``current`` is pointed at it by renaming a new symlink
over the old one. A crash between any two steps leaves ``current`` on the old bundle or
on the new one, whole: a folder that ``current`` does not name is never read. The
running bundle's number is the name ``current`` points at, so it survives a restart
with the link itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

CURRENT = "current"
PAYLOAD = "bundle.json"
KEEP = 3
"""Bundle folders kept (the running one and the ones before it, for a look back)."""


class BundleDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def current_link(self) -> Path:
        return self.root / CURRENT

    def running(self) -> int | None:
        """The number of the bundle ``current`` points at (None: no bundle applied)."""
        try:
            target = os.readlink(self.current_link)
        except OSError:
            return None
        name = Path(target).name
        return int(name) if name.isdigit() and (self.root / name).is_dir() else None

    def running_folder(self) -> Path | None:
        number = self.running()
        return self.root / str(number) if number is not None else None

    def running_payload(self) -> bytes | None:
        folder = self.running_folder()
        if folder is None:
            return None
        try:
            return (folder / PAYLOAD).read_bytes()
        except OSError:
            return None

    def stage(self, files: Mapping[str, str], payload: bytes) -> Path:
        """Write the files into a new temporary folder beside the bundles (fsynced)."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
        try:
            for name, text in {**files, PAYLOAD: payload.decode()}.items():
                with open(folder / name, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def install(self, staged: Path, number: int) -> Path:
        """Rename the staged folder to ``<number>`` (a leftover of a crash is replaced)."""
        final = self.root / str(number)
        if final.exists():
            if number == self.running():
                raise FileExistsError(f"{final} is the running bundle")
            shutil.rmtree(final)
        os.rename(staged, final)
        _fsync_dir(self.root)
        return final

    def point_current(self, number: int) -> None:
        """Point ``current`` at bundle ``number`` in one rename."""
        temp = self.root / f".{CURRENT}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        os.symlink(str(number), temp)
        os.replace(temp, self.current_link)
        _fsync_dir(self.root)

    def unpoint(self, previous: int | None) -> None:
        """Undo :meth:`point_current` (the swap in memory failed)."""
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                self.current_link.unlink()
            _fsync_dir(self.root)
        else:
            self.point_current(previous)

    def tidy(self) -> None:
        """Remove staging leftovers and all but the newest :data:`KEEP` bundle folders
        (never the running one)."""
        if not self.root.is_dir():
            return
        running = self.running()
        numbered = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".staging-"):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.isdigit() and entry.is_dir() and not entry.is_symlink():
                numbered.append(int(entry.name))
        for number in sorted(numbered)[:-KEEP]:
            if number != running:
                shutil.rmtree(self.root / str(number), ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def startup_rule_paths(root: Path | None) -> tuple[int, list[Path]] | None:
    """The running bundle and its folder, when ``root`` has one (the gateway then starts
    on the bundle's rules, not on its config's rule files)."""
    if root is None:
        return None
    number = BundleDir(root).running()
    if number is None:
        return None
    return number, [root / str(number)]
