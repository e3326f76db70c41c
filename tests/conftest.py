from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Env, sandbox


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with sandbox(tmp_path) as environment:
        yield environment
