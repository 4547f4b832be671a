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


@pytest.fixture(autouse=True, scope='session')
def split_cache_folder(tmp_path_factory) -> Path:
    """Split caches (utils/data/cache.py) of the whole session go to one temporary folder instead of the user's
    ~/.cache; the scripts that tests start inherit it."""
    folder = tmp_path_factory.mktemp('split-cache')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('TINYDET_SPLIT_CACHE', str(folder))
        yield folder
