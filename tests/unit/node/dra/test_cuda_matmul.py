"""The GPU check's CUDA program (tests/integration/node/cuda_matmul.py) against a stand-in libcuda that computes
on the CPU (tests/data/dra/fake_libcuda.c): its host side (ctypes calls, kernel parameters, copies, the check
of the result, error reporting) works here; its PTX needs a real driver (docs/dra.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[4]
SCRIPT = ROOT / "tests" / "integration" / "node" / "cuda_matmul.py"
SOURCE = ROOT / "tests" / "data" / "dra" / "fake_libcuda.c"


@pytest.fixture
def fake_libcuda(tmp_path: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc or cc) to build the stand-in libcuda")
    lib = tmp_path / "libcuda.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(SOURCE)], check=True, capture_output=True)
    return lib


def run(lib: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SCRIPT.read_text()], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TURBOK_LIBCUDA": str(lib)}, check=False)


def test_the_matmul_runs_and_checks_its_result(fake_libcuda: Path) -> None:
    done = run(fake_libcuda)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("matmul N=64 max_error=") and line.endswith("device=Stand-in GPU")
    assert float(line.split("max_error=")[1].split()[0]) < 1e-4


def test_a_cuda_error_is_named(fake_libcuda: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"  # a driver whose JIT refuses the PTX
    broken.write_text(SOURCE.read_text().replace('".visible .entry matmul("', '"no such entry"'))
    lib = tmp_path / "libbroken.so"
    subprocess.run([shutil.which("gcc") or "cc", "-shared", "-fPIC", "-o", str(lib), str(broken)], check=True)
    done = run(lib)
    assert done.returncode == 1
    assert "cuModuleLoadData (PTX JIT): CUDA error 200 CUDA_ERROR_INVALID_IMAGE" in done.stderr
