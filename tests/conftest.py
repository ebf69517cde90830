import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: its small models gain nothing from threads, and two OpenMP threads
    on a shared 2-core machine spin-wait on each other (one is several times faster there)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def shared_reference_cache(tmp_path_factory, monkeypatch):
    """One reference cache for the whole session (FEWSTEP_CACHE), so each reference is computed once."""
    monkeypatch.setenv("FEWSTEP_CACHE", str(tmp_path_factory.getbasetemp() / "fewstep-cache"))


@pytest.fixture(scope="module")
def gmm2d():
    from fewstep.models import load_model

    return load_model("gmm2d")
