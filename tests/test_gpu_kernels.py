"""The compiled Triton kernels against their references on a CUDA GPU (bench/check_compiled.py).

Marked `gpu`: the default suite deselects it, and it skips without CUDA. The check runs in a fresh
process because conftest.py switches this one to Triton's interpreter for the session.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "check_compiled.py"

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_compiled_kernels_match_references():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    # --no-record: a test run leaves bench/results alone; run the script itself to record
    run = subprocess.run([sys.executable, str(SCRIPT), "--no-record"], env=env, capture_output=True, text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    assert " cases passed" in run.stdout
