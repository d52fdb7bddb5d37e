"""Whether a run may use its folder: ``"fresh"`` (it holds no run), ``"overwrite"`` (only the earlier run's own
files are there) or ``"resume"`` (the same kind of run with the same fingerprint), or one error line saying why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustlab.errors import RobustlabError
from robustlab.io import RUN_FILE
from robustlab.run_files import foreign_file, run_files

# files an older robustlab (before run.json) left in a run folder: such a folder holds a run too
_LEGACY_MARKERS = ("last.pt", "partial", "report.json", "results.pt")


class RunChecks:
    """The checks of :class:`robustlab.runs.RunFolder` on the folder ``out`` it is asked to use."""

    out: Path
    kind: str
    fingerprint: dict[str, Any]
    resume: bool
    overwrite: bool
    resumable: bool

    # ------------------------------------------------------------------------------------------ the checks

    def saved(self) -> dict[str, Any] | None:
        """The previous run's ``run.json`` (None when the folder holds none)."""
        path = self.out / RUN_FILE
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RobustlabError(
                f"{path} is not valid JSON ({exc}); the folder's run cannot be resumed: use --overwrite or "
                "another --out"
            ) from None
        if not isinstance(saved, dict) or not isinstance(saved.get("fingerprint"), dict):
            raise RobustlabError(f"{path} is not a robustlab run record; use --overwrite or another --out")
        return saved

    def holds_run(self) -> bool:
        return (self.out / RUN_FILE).exists() or any((self.out / m).exists() for m in _LEGACY_MARKERS)

    def _check(self) -> str:
        """``"fresh"``, ``"overwrite"`` or ``"resume"``, or one error line saying why the folder cannot be used."""
        if not self.holds_run():
            if self.resume:
                raise RobustlabError(f"--resume: {self.out} holds no run to continue; drop --resume")
            return "fresh"
        if self.overwrite:
            self._check_overwrite()
            return "overwrite"
        if not self.resume:
            hint = "continue it with --resume, " if self.resumable else ""
            raise RobustlabError(
                f"{self.out} already holds a run; {hint}replace it with --overwrite, or choose another --out"
            )
        saved = self.saved()
        if saved is None:
            raise RobustlabError(
                f"{self.out} holds a run of an older robustlab without {RUN_FILE}; it cannot be checked for "
                "--resume: choose another --out"
            )
        if saved.get("kind") != self.kind:
            raise RobustlabError(
                f"{self.out} holds a '{saved.get('kind')}' run, not '{self.kind}'; choose another --out"
            )
        previous = saved["fingerprint"]
        changed = sorted(k for k in {*previous, *self.fingerprint} if previous.get(k) != self.fingerprint.get(k))
        if changed:
            detail = ", ".join(f"{k} {previous.get(k)!r} -> {self.fingerprint.get(k)!r}" for k in changed[:6])
            raise RobustlabError(
                f"{self.out} holds a run with different {', '.join(changed)} ({detail}); --resume needs the same "
                "arguments, or use --overwrite or another --out"
            )
        return "resume"

    def _check_overwrite(self) -> None:
        """``overwrite`` deletes only the files the earlier run lists: a folder holding anything else, or a run
        that lists nothing (an older robustlab's), is refused in one line naming the first such file."""
        foreign = foreign_file(self.out)
        if foreign is None:
            return
        files, folders = run_files(self.out)
        if not files and not folders:
            raise RobustlabError(
                f"{self.out} holds a run that does not list its files (an older robustlab's, or files of your own: "
                f"{foreign}), so --overwrite cannot tell what it may delete; delete the folder yourself or choose "
                "another --out"
            )
        raise RobustlabError(
            f"{self.out} holds {foreign}, which its run did not write; --overwrite deletes only the run's own files: "
            "move it away or choose another --out"
        )
