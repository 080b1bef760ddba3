"""The web app's workspace folder: every file the page reads or writes lives inside it.

    work/
      jobs.sqlite   jobs/<id>/log.txt, exit_code     (glmtune.web.jobs)
      data/         uploaded data files
      runs/<name>/  training runs (the run-folder contract of glmtune.train)
      exports/<name>/ merged, sharded model folders (glmtune.export)

A path typed or picked in the page is resolved (symlinks followed) and must stay inside the workspace;
an uploaded file keeps only a cleaned base name. Anything else is refused with a one-line error.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from glmtune.errors import GlmtuneError
from glmtune.web.jobs import JobStore

DATA_SUFFIXES = (".jsonl", ".json")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class WebError(GlmtuneError):
    """A page action refused with a reason (a path outside the workspace, a bad name, a missing run, ...)."""


def check_name(name: str, what: str = "name") -> str:
    name = (name or "").strip()
    if not NAME_RE.match(name) or ".." in name:
        raise WebError(f"{what} {name!r}: use letters, digits, '.', '_' or '-' (no slashes), at most 100 characters")
    return name


class Workspace:
    OWN_FOLDERS = {"runs", "exports", "jobs", "evals", "plans", "configs"}  # what glmtune writes, not user data

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        for sub in ("data", "runs", "exports"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(self.root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def resolve(self, user_path: str | Path, must_exist: bool = True) -> Path:
        """A path from the page (relative to the workspace, or absolute) -> an absolute path inside it."""
        text = str(user_path or "").strip()
        if not text:
            raise WebError("no file given")
        p = Path(text).expanduser()
        p = (p if p.is_absolute() else self.root / p).resolve()
        if not p.is_relative_to(self.root):
            raise WebError(f"{text}: outside the workspace {self.root}; put the file in the workspace or upload it")
        if must_exist and not p.exists():
            raise WebError(f"{text}: not found in the workspace {self.root}")
        return p

    def rel(self, path: str | Path) -> str:
        p = Path(path)
        return str(p.relative_to(self.root)) if p.is_absolute() and p.is_relative_to(self.root) else str(p)

    def save_upload(self, uploaded: str | Path, original_name: str | None = None) -> Path:
        """Copy an uploaded file into data/ under its cleaned base name (never a path the browser chose)."""
        name = Path(original_name or uploaded).name
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "upload.jsonl"
        if not name.endswith(DATA_SUFFIXES):
            raise WebError(f"{name}: data files are .jsonl or .json")
        dest = self.data_dir / name
        shutil.copyfile(uploaded, dest)
        return dest

    def save_uploads(self, uploaded: list, under: str, folder: str, suffixes: tuple[str, ...], kind: str) -> Path:
        """Uploaded files into <under>/<folder>/ under cleaned base names (never a path the browser chose); a file
        not ending in one of `suffixes` is refused, naming `kind` (e.g. "ISE results")."""
        dest = self.root / under / check_name(folder, "folder name")
        dest.mkdir(parents=True, exist_ok=True)
        for up in uploaded:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(up).name).lstrip(".")
            if not name.lower().endswith(suffixes):
                raise WebError(f"{Path(up).name}: {kind} are {', '.join(suffixes)} files")
            shutil.copyfile(up, dest / name)
        return dest

    def data_files(self, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[str]:
        """Data files anywhere in the workspace but the folders glmtune writes (runs, exports, jobs, ...)."""
        skip = self.OWN_FOLDERS
        out = []
        for top in sorted(self.root.iterdir()):
            if top.name in skip:
                continue
            for p in [top] if top.is_file() else sorted(top.rglob("*")):
                if p.is_file() and p.suffix in suffixes:
                    out.append(str(p.relative_to(self.root)))
        return out

    def runs(self, finished_only: bool = False) -> list[str]:
        from glmtune.run.folder import CONFIG, METHOD

        marker = METHOD if finished_only else CONFIG
        return sorted(self.rel(p.parent) for p in self.runs_dir.glob(f"*/{marker}"))

    def exports(self) -> list[str]:
        return sorted(self.rel(p.parent) for p in self.exports_dir.glob("*/config.json"))
