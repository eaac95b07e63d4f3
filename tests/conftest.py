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
