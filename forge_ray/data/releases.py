"""Download a package's recent source distributions, the input of ``sources.release_prs``.

``forge-ray data fetch-releases PACKAGE [PACKAGE...] --last N --out DIR`` puts the sdists of the
last ``N`` final releases (pre- and dev releases skipped; releases without an sdist skipped) of
each package into ``DIR``, using this Python's pip (``pip index versions``, then
``pip download --no-deps --no-binary :all:``). Files already in ``DIR`` are not fetched again.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from forge_ray.data.sources import canonical_name, parse_sdist_name


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)


def available_versions(package: str) -> list[str]:
    """The final release versions of ``package`` on the configured index, newest first."""
    from packaging.version import InvalidVersion, Version

    p = _pip("index", "versions", package)
    line = next((x for x in p.stdout.splitlines() if x.startswith("Available versions:")), None)
    if p.returncode or line is None:
        raise RuntimeError(f"pip index versions {package} failed: {(p.stderr or p.stdout).strip()[-500:]}")
    versions = []
    for raw in line.split(":", 1)[1].split(","):
        try:
            v = Version(raw.strip())
        except InvalidVersion:
            continue
        if not (v.is_prerelease or v.is_devrelease):
            versions.append((v, raw.strip()))
    return [raw for _, raw in sorted(versions, reverse=True)]


def _present(package: str, out_dir: Path) -> dict[str, Path]:
    """sdists of ``package`` already in ``out_dir``, by normalized version string."""
    from packaging.version import Version

    found = {}
    for file in sorted(out_dir.iterdir()):
        parsed = parse_sdist_name(file)
        if parsed and canonical_name(parsed[0]) == canonical_name(package):
            found.setdefault(str(Version(parsed[1])), file)
    return found


def _sdist(package: str, version: str, out_dir: Path) -> tuple[Path | None, str]:
    """``package==version``'s sdist in ``out_dir``, downloaded unless already there; (None, why) if none."""
    from packaging.version import Version

    key = str(Version(version))
    path = _present(package, out_dir).get(key)
    if path is not None:
        return path, ""
    p = _pip("download", "--no-deps", "--no-binary", ":all:", "-d", str(out_dir), f"{package}=={version}")
    path = _present(package, out_dir).get(key) if p.returncode == 0 else None
    return path, (p.stderr or "").strip()[-300:]


def fetch_releases(package: str, n: int, out_dir: str | Path) -> list[Path]:
    """The sdists of the last ``n`` final releases of ``package`` that have one, downloaded into
    ``out_dir`` unless already there; oldest first. Raises RuntimeError when the index cannot be
    read; a release whose sdist cannot be downloaded is skipped (the next older one is tried)."""
    from packaging.version import Version

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    got: list[tuple[Version, Path]] = []
    for version in available_versions(package):
        if len(got) >= n:
            break
        path, why = _sdist(package, version, out_dir)
        if path is None:
            print(f"fetch-releases: {package} {version}: no sdist ({why[-200:]})", file=sys.stderr)
            continue
        got.append((Version(version), path))
    return [path for _, path in sorted(got)]


def fetch_versions(package: str, versions: list[str], out_dir: str | Path) -> list[Path]:
    """The sdists of exactly ``versions`` of ``package`` (pinned: the same corpus on every
    machine), downloaded into ``out_dir`` unless already there; in version order. A version
    without an sdist raises RuntimeError naming it."""
    from packaging.version import Version

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for version in sorted({v.strip() for v in versions if v.strip()}, key=Version):
        path, why = _sdist(package, version, out_dir)
        if path is None:
            raise RuntimeError(f"{package}=={version}: no source distribution ({why})")
        paths.append(path)
    return paths


def _fetch(args: argparse.Namespace) -> int:
    status = 0
    for package in args.packages:
        try:
            paths = fetch_releases(package, args.last, args.out)
        except RuntimeError as e:
            print(f"fetch-releases: {e}", file=sys.stderr)
            status = 1
            continue
        for path in paths:
            print(path)
        if len(paths) < args.last:
            print(f"fetch-releases: {package}: only {len(paths)} of {args.last} releases have an sdist",
                  file=sys.stderr)
    return status


def add_parser(data_sub: argparse._SubParsersAction) -> None:
    """Register ``fetch-releases`` on the ``forge-ray data`` subparsers."""
    p = data_sub.add_parser("fetch-releases", help="download the sdists of a package's last N releases",
                            description=__doc__.splitlines()[0])
    p.add_argument("packages", nargs="+", metavar="PACKAGE")
    p.add_argument("--last", type=int, default=5, metavar="N", help="how many final releases (default: 5)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the sdists")
    p.set_defaults(fn=_fetch)
