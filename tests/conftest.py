"""Fixtures shared by the end-to-end tests."""
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory) -> str:
    """A small synthetic nuScenes mini (10 scenes x 2 samples, 160x90 images) with infos,
    made by the project's own tools as a user would: generator, then converter."""
    root = str(tmp_path_factory.mktemp('synthetic_nus'))
    tools = os.path.join(REPO, 'tools')
    subprocess.run([sys.executable, os.path.join(tools, 'create_synthetic_nuscenes.py'),
                    '--out', root, '--scenes', '10', '--samples-per-scene', '2',
                    '--image-scale', '0.1', '--workers', '2'],
                   check=True, cwd=REPO, capture_output=True)
    subprocess.run([sys.executable, os.path.join(tools, 'create_data.py'), 'nuscenes',
                    '--root-path', root, '--version', 'v1.0-mini', '--workers', '2'],
                   check=True, cwd=REPO, capture_output=True)
    return root


@pytest.fixture(scope='module')
def single_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    shared 2-core machine two OpenMP threads per process oversubscribe the cores and small
    training steps get 5-20x slower (measured 0.65 s vs 3-18 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
