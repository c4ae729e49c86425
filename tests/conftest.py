import os

# before any kernel module is imported: Triton reads it when a kernel is decorated
os.environ["TRITON_INTERPRET"] = "1"

import lightning.pytorch  # noqa: F401  (its log handlers bind to the stderr of the moment: the real one, not a test's capture)
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny tensors: worker threads only add contention on a busy host (the forwards get many times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
