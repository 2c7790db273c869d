import os

import pytest
import torch
from hypothesis import HealthCheck, settings

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: over ~5 s on one core (subprocesses, training, long simulations); "
                            "`make test` runs them, `make test-fast` (-m 'not slow') leaves them out")


def pytest_collection_modifyitems(config, items):
    """The tests marked slow first (a stable sort: each file keeps its order). pytest-xdist hands tests out in this
    order, so the long ones start at once and the short ones fill the gaps: the run does not end with one worker busy
    on a 40-second test while the other waits (longest-first scheduling)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.fixture(params=_DEVICES)
def device(request) -> str:
    "The device a test runs on: a test that takes `device` runs on the CPU, and again on CUDA where there is a GPU."
    return request.param

@pytest.fixture(scope="module")
def one_thread():
    "One torch thread for a test module: long loops over small tensors run several times faster than with two."
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Property-based tests (hypothesis): a fast profile for `make test` (derandomized, so CI is reproducible) and a larger
# one for a deliberate hunt: `HYPOTHESIS_PROFILE=thorough make test-py`.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=25, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=400, print_blob=True, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
