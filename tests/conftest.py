from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
COREL = SHARED_DATA / "corel1k"
UKBENCH = SHARED_DATA / "ukbench56"


@pytest.fixture(scope="session")
def corel_dir() -> Path:
    if not (COREL / "labels.csv").exists():
        pytest.skip(f"Corel-1k test data not found at {COREL} (expected beside the repo in ../shared)")
    return COREL


@pytest.fixture(scope="session")
def ukbench_dir() -> Path:
    if not (UKBENCH / "groups.csv").exists():
        pytest.skip(f"UKBench-56 test data not found at {UKBENCH} (expected beside the repo in ../shared)")
    return UKBENCH


@pytest.fixture(scope="session", autouse=True)
def _model_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Built backbone graphs (fastimg.features.backbone_cache) go to a temporary directory, never
    to the user's cache; subprocesses started by the tests inherit it."""
    import os

    old = os.environ.get("FASTIMG_CACHE_DIR")
    os.environ["FASTIMG_CACHE_DIR"] = str(tmp_path_factory.mktemp("fastimg-cache"))
    yield
    if old is None:
        os.environ.pop("FASTIMG_CACHE_DIR", None)
    else:
        os.environ["FASTIMG_CACHE_DIR"] = old
