"""The unit tests see none of the caller's ClusterOS settings: a CLUSTEROS_SPEC or CLUSTEROS_DIST
left in a developer's shell (or by an e2e run) must not change what a test reads or where it writes."""

import pytest

USER_SETTINGS = ("CLUSTEROS_SPEC", "CLUSTEROS_DIST", "CLUSTEROS_STATE_DIR", "CLUSTEROS_CACHE_DIR", "CLUSTEROS_DOIT_DB")


@pytest.fixture(autouse=True)
def no_user_settings(monkeypatch):
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
