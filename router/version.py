"""The installed package's version, for `--version` on both command lines, and the commit
it was built from, for the `router_build_info` metric."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "inference-router"  # pyproject.toml's [project] name
# The checkout this package sits in, when run from one (editable installs, tests); an
# installed copy (site-packages, the image) has no `.git` beside it.
ROOT_CHECKOUT = Path(__file__).resolve().parents[1]


def package_version() -> str:
    """The version pip installed, or a note saying the package is not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree without `pip install -e .`
        return "unknown (not installed)"


@functools.cache
def git_commit(checkout: Path = ROOT_CHECKOUT) -> str:
    """The commit checked out at `checkout` (12 hex digits), or "unknown"; read once.

    Only a `.git` right in `checkout` counts (a directory, or a worktree's file), so a
    copy installed inside some other repository's virtualenv does not report that one.
    """
    if not (checkout / ".git").exists():
        return "unknown"
    try:
        run = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return "unknown"
    commit = run.stdout.strip()
    if run.returncode != 0 or not commit:
        return "unknown"
    return commit
