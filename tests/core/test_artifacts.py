import json

import pytest

from edgeq.core.artifacts import Artifact, Manifest, atomic_path, sha256_of, write_json_atomic


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_path_replaces(tmp_path):
    target = tmp_path / "m.keras"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def _manifest_with_one_artifact(tmp_path):
    f = tmp_path / "artifacts" / "x.tflite"
    f.parent.mkdir()
    f.write_bytes(b"model")
    m = Manifest(tmp_path, {"model": "x"})
    m.add(Artifact.record(tmp_path, f, name="x", format="tflite", precision="int8", method="ptq",
                          stage="s", key="k1"))
    return f


def test_manifest_reuse_requires_same_key_and_intact_file(tmp_path):
    f = _manifest_with_one_artifact(tmp_path)
    m2 = Manifest(tmp_path)
    assert m2.reusable("x", "k1") is not None
    assert m2.reusable("x", "k2") is None
    f.write_bytes(b"tampered")
    assert m2.reusable("x", "k1") is None


def test_manifest_file_records_the_header_and_each_artifacts_hash(tmp_path):
    f = _manifest_with_one_artifact(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["model"] == "x"
    assert [(a["name"], a["path"], a["sha256"]) for a in data["artifacts"]] == [("x", "artifacts/x.tflite", sha256_of(f))]


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
