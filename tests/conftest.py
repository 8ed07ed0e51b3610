"""Test-wide settings. Triton kernels run under the interpreter on CPU tensors; the variable
must be set before triton is first imported, hence here."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed's JIT-built op is kept across test sessions (the per-session cache below would rebuild it)
os.environ.setdefault("UNIEMOX_EXTENSIONS", os.path.join(os.path.expanduser("~"), ".cache", "uniemox", "torch_extensions"))

import pytest


def pytest_configure(config):
    # benchmarks/gpu/run.sh runs every test with this marker on the GPU machine
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one; run by the GPU script)")
    config.addinivalue_line("markers", "lowest_versions: installs the lowest dependency versions setup.py admits "
                                       "into a venv of its own (about 3 GB of downloads; CI runs it)")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The sample shards and other caches go to a per-session folder, not the user's home."""
    os.environ["UNIEMOX_CACHE"] = str(tmp_path_factory.mktemp("uniemox-cache"))


@pytest.fixture(scope="module")
def mediapipe_detector():
    """The default person detector, or the test skipped with the line that says how to install it
    (its mediapipe release has no wheel past Python 3.12)."""
    from uniemox.data.detector import build_detector
    from uniemox.errors import UserError
    try:
        detector = build_detector("mediapipe")
    except UserError as e:
        pytest.skip(str(e))
    yield detector
    detector.close()
