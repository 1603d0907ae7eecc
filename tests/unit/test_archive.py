"""Trees shipped as data (``forge_ray/env/archive.py``): reproducible archives, safe unpacking."""
import io
import os
import tarfile

import pytest

from forge_ray.env.archive import pack_tree, resolve_tree, unpack_tree


def _tree(root):
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("x = 1\n")
    (root / "pkg" / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "pkg" / "sub" / "run.sh", 0o775)
    return root


def test_pack_is_reproducible_and_round_trips(tmp_path):
    src = _tree(tmp_path / "src")
    first = pack_tree(src, tmp_path / "a.tar.gz").read_bytes()
    os.utime(src / "pkg" / "__init__.py", (1e9, 1e9))  # times and owners are not part of the archive
    assert pack_tree(src, tmp_path / "b.tar.gz").read_bytes() == first
    out = unpack_tree(tmp_path / "a.tar.gz", tmp_path / "out")
    assert (out / "pkg" / "__init__.py").read_text() == "x = 1\n"
    assert os.access(out / "pkg" / "sub" / "run.sh", os.X_OK)  # the executable bit survives
    assert pack_tree(out, tmp_path / "c.tar.gz").read_bytes() == first


def test_resolve_prefers_the_folder_then_the_archive(tmp_path):
    src = _tree(tmp_path / "repo")
    assert resolve_tree(src) == src
    pack_tree(src, tmp_path / "repo.tar.gz")
    assert resolve_tree(tmp_path / "nope") is None and resolve_tree(tmp_path / "other") is None
    (tmp_path / "x").mkdir()
    pack_tree(tmp_path / "x", tmp_path / "only.tar.gz")
    assert resolve_tree(tmp_path / "only") == tmp_path / "only.tar.gz"


def test_unpack_refuses_members_that_leave_the_destination(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "evil.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(tarfile.TarError):
        unpack_tree(tmp_path / "evil.tar.gz", tmp_path / "dst")
    assert not (tmp_path / "escaped.txt").exists()
