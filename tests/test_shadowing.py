"""No folder of this repository shadows an installed distribution when the repository root is on sys.path (as it
is under pytest, `python -c` and a notebook opened here): `import kernels` finds Hugging Face's package when it
is installed, never a file of ours, and the project's kernels and proofs import as constrained.kernels and
constrained.proofs."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHERE = ("import importlib.util, json; s = importlib.util.find_spec({name!r}); "
         "print(json.dumps(None if s is None else [s.origin, list(s.submodule_search_locations or [])]))")


def from_root(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def inside_repository(path: str | None) -> bool:
    """A file of this project's (the virtual environment may live in the checkout too: its packages are not)."""
    ours = [ROOT / "kernels", ROOT / "proofs", ROOT / "constrained"]
    return path is not None and any(Path(path).resolve().is_relative_to(d) for d in ours)


@pytest.mark.parametrize("name", ["kernels", "proofs"])
def test_a_top_level_folder_is_no_module_file_from_the_repository_root(name):
    result = from_root(WHERE.format(name=name))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    if found is not None:
        origin, _ = found
        assert not inside_repository(origin), f"`import {name}` from the repository root loads {origin}"
    spec = importlib.util.find_spec(name)  # this process: pytest put the repository root on sys.path
    assert spec is None or not inside_repository(spec.origin)


def test_the_project_imports_its_kernels_and_proofs_by_their_package_names():
    result = from_root("import constrained.kernels.attention as a, constrained.proofs.mask as m; "
                       "print(a.__name__, m.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["constrained.kernels.attention", "constrained.proofs.mask"]


@pytest.mark.lens
def test_transformer_lens_imports_from_the_repository_root():
    if importlib.util.find_spec("transformer_lens") is None:
        pytest.skip("the lens extra (transformer-lens) is not installed; `make test-lens` installs it")
    result = from_root("import transformer_lens, kernels; print(kernels.__file__)")
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    origin = result.stdout.strip()
    assert origin != "None" and not inside_repository(origin), f"`import kernels` gave {origin}, not the installed one"
