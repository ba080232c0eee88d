"""Test session setup: a private Hugging Face cache and a fake Hub on 127.0.0.1.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once,
when it is first imported. pytest imports this file before any test module (and rem_env imports
huggingface_hub only when a model is downloaded or pushed), so setting them here, at the top,
before anything else, points every Hub call of the session at the fake server
(``tests/hub_server.py``) and a throwaway cache: no test can reach the real Hub. The server's
port is bound now and served by the ``fake_hub`` fixture.

Torch runs on one intra-op thread in the whole session: the tests use tiny models, for which
OpenMP threads only add overhead, and on a busy 2-core machine spinning threads slow them down by
tens of times. The processes the tests start (trainer runs, the benchmark scripts) inherit
``OMP_NUM_THREADS=1`` for the same reason: beside the other pytest-xdist worker, a subprocess on
two threads ran the GPU script's CPU smoke test in 68 s instead of ~40 s. A test that needs more
threads in a subprocess says so in that subprocess's environment.

The suite runs on every core this process may use, one pytest-xdist worker per core
(``-n auto`` in pyproject.toml; :func:`pytest_xdist_auto_num_workers`); each worker imports this
file, so each has its own fake Hub, port and cache, and every test writes under its own
``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest
import torch
from hub_server import FakeHub, FakeHubServer

torch.set_num_threads(1)
os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})

HF_TEST_HOME = tempfile.mkdtemp(prefix="rem-env-tests-hf-")
FAKE_HUB = FakeHub()
FAKE_HUB_SERVER = FakeHubServer(FAKE_HUB)

os.environ.update(
    {
        "HF_HOME": HF_TEST_HOME,
        "HF_HUB_CACHE": os.path.join(HF_TEST_HOME, "hub"),
        "HF_ENDPOINT": FAKE_HUB_SERVER.endpoint,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
    }
)
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE_DIR"):
    os.environ.pop(_name, None)

if "huggingface_hub" in sys.modules:  # imported before this file: its constants are stale
    HUB_SETUP_ERROR: str | None = (
        "huggingface_hub was imported before tests/conftest.py could point it at the fake Hub "
        "(a pytest plugin?); Hub tests cannot run safely"
    )
else:
    HUB_SETUP_ERROR = None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers of ``-n auto``: one per core this process may run on (``taskset`` included; not
    psutil's count of physical cores, which a VM's vCPUs can halve), and none on one core, where
    a worker would only add its start-up to the same serial run."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    return cores if cores > 1 else 0


def pytest_unconfigure(config: object) -> None:
    FAKE_HUB_SERVER.stop()
    shutil.rmtree(HF_TEST_HOME, ignore_errors=True)


@pytest.fixture
def fake_hub() -> Iterator[FakeHubServer]:
    """The running fake Hub (``.hub`` holds its repos); restarted after a test that stops it."""
    if HUB_SETUP_ERROR is not None:
        pytest.fail(HUB_SETUP_ERROR)
    from huggingface_hub import constants

    if FAKE_HUB_SERVER.endpoint != constants.ENDPOINT:
        pytest.fail(f"huggingface_hub points at {constants.ENDPOINT}, not the fake Hub")
    FAKE_HUB_SERVER.start()
    yield FAKE_HUB_SERVER
    FAKE_HUB_SERVER.start()
