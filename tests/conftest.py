"""Shared test fixtures. Real data lives in ../shared beside the repository; tests that need it skip without it."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
sys.path.insert(0, str(REPO))


def shared_path(relative: str) -> Path:
    """A path under ../shared, or skip the test with the reason if it is absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f'{path} is absent (real data from ../shared is needed for this test)')
    return path


@pytest.fixture
def repo() -> Path:
    return REPO
