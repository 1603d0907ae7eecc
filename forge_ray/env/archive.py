"""Source trees that environments ship as data, packed as one reproducible ``.tar.gz`` each.

    pack_tree("out/repos/toolz-1.2.0", "out/repos/toolz-1.2.0.tar.gz")   # then remove the folder
    unpack_tree("out/repos/toolz-1.2.0.tar.gz", workspace)                 # per episode
    resolve_tree("data/swe_tasks/repos/toolz-1.2.0")                       # the folder, or its archive

Third-party code (a package's sources and tests, an exercise's support files) is data to
forge_ray, not code of its own: kept as archives it is read by the environments, not by
linters, size budgets or duplicate finders, and a repository's history holds one compressed
blob per tree instead of hundreds of files. Archives are byte-for-byte reproducible (sorted
members, zeroed times and owners, no gzip timestamp), so rebuilding unchanged data changes no
file. Unpacking uses tarfile's ``data`` filter: no absolute paths, no ``..``, no links out of
the destination, no devices.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

SUFFIX = ".tar.gz"


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = (0o755 if info.isdir() or info.mode & 0o111 else 0o644)
    return info


def pack_tree(src: str | Path, archive: str | Path) -> Path:
    """Write the tree ``src`` (its contents, relative paths) as the archive ``archive``."""
    src, archive = Path(src), Path(archive)
    if not src.is_dir():
        raise ValueError(f"pack_tree: {src} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(src.rglob("*"), key=lambda p: p.relative_to(src).as_posix()):
            rel = path.relative_to(src).as_posix()
            tar.add(path, arcname=rel, recursive=False, filter=_normalise)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(buf.getvalue())
    os.replace(tmp, archive)
    return archive


def unpack_tree(archive: str | Path, dst: str | Path) -> Path:
    """Extract ``archive`` into the directory ``dst`` (created if missing)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dst, filter="data")
    return dst


def resolve_tree(path: str | Path) -> Path | None:
    """``path`` if it is a directory, else ``path.tar.gz`` if that archive exists, else None."""
    path = Path(path)
    if path.is_dir():
        return path
    archive = path.with_name(path.name + SUFFIX)
    return archive if archive.is_file() else None


def is_archive(path: str | Path) -> bool:
    return str(path).endswith(SUFFIX)
