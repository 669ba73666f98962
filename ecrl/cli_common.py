"""Small pieces every ``ecrl`` subcommand shares (the CLI is the only layer that prints)."""

from __future__ import annotations

import shutil
import sys


def missing_extra(command: str, module: str | None, make_target: str) -> int:
    """One-line error for a command that needs the training extra; returns exit code 2."""
    print(
        f"ecrl: error: {command} needs the training extra ({module} missing); "
        f"run `make {make_target}`",
        file=sys.stderr,
    )
    return 2


def install(src: str, dest: str) -> None:
    """Copy an exported artifact to where the package loads it from, and say so."""
    shutil.copyfile(src, dest)
    print(f"installed {dest}")
