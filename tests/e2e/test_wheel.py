"""The built wheel works outside the checkout: `python -m build` makes it, a fresh venv in a temporary directory
installs it, and `edgeq run --example mobilenet_v2` runs there end to end on the package's own model and sample,
then `edgeq.load_run` reads the run back.

The fresh venv takes edgeq only from the wheel; its third-party dependencies come from this environment's
site-packages (a path line, so none of this checkout's editable-install hooks load): installing TensorFlow again
would only test PyPI."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build needs the `build` package (the dev extra)")
    out = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (whl,) = out.glob("edgeq-*.whl")
    return whl


def test_wheel_carries_the_example_model_and_sample_as_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    for name in ("mobilenet_v2.yaml", "mobilenet_v2.keras", "fashion_mnist_sample.npz"):
        assert sizes.get(f"edgeq/examples/{name}", 0) > 100, name  # the bytes, not a link into the checkout
    assert "edgeq/ondevice/agent.py" in sizes and "edgeq/cli.py" in sizes


def test_installed_wheel_runs_the_example_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "edgeq_test_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)} | {"CUDA_VISIBLE_DEVICES": ""}
    where = subprocess.run([str(py), "-c", "import edgeq; print(edgeq.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's edgeq, not the checkout's
    edgeq = venv / "bin" / "edgeq"
    p = subprocess.run([str(edgeq), "run", "--example", "mobilenet_v2", "--stages", "tflite_ptq", "--out", "run"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-3000:]
    code = ("import edgeq, json; r = edgeq.load_run('run'); "
            "print(json.dumps({'ship': r.ship, 'top1': r.artifacts['int8_tflite_ptq'].top1, "
            "'n': r.artifacts['int8_tflite_ptq'].n}))")
    got = json.loads(subprocess.run([str(py), "-c", code], cwd=work, env=env, capture_output=True, text=True,
                                    check=True).stdout)
    assert got["n"] >= 1000 and got["top1"] > 0.8  # the trained default model, evaluated on the shipped images
    assert got["ship"]["host"] in ("int8_tflite_ptq", "fp32_tflite", "fp32_keras")
