"""The installed package's version, for `--version` on both command lines."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "inference-router"  # pyproject.toml's [project] name


def package_version() -> str:
    """The version pip installed, or a note saying the package is not installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree without `pip install -e .`
        return "unknown (not installed)"
