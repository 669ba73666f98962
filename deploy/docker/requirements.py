"""Print ecrl's core requirements plus those of the given extras, one a line (for image builds).

The images install these with ``pip install -c requirements/dev.lock -r ...``: only what the
image needs, at exactly the versions of the lock file the test suite ran with (the lock holds
every extra, so it pins the whole closure). Reading pyproject.toml here, before the source is
copied, keeps the dependency layer cached across code changes.

Usage: python deploy/docker/requirements.py [--pyproject PATH] [EXTRA ...]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    """Core dependencies followed by each extra's, in file order, without duplicates."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise ValueError(f"unknown extra {unknown[0]!r}; pyproject.toml has {', '.join(optional)}")
    lines = list(project["dependencies"])
    for extra in extras:
        lines += [r for r in optional[extra] if r not in lines]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("extras", nargs="*", metavar="EXTRA", help="e.g. services, testbed")
    p.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = p.parse_args(argv)
    try:
        lines = requirements(tomllib.loads(args.pyproject.read_text()), args.extras)
    except (OSError, ValueError) as exc:
        print(f"requirements.py: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
