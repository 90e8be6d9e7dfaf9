"""Fixtures shared by the end-to-end tests."""
import os
import subprocess
import sys

import pytest

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
