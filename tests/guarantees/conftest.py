"""The guarantee suites reuse the service suite's fixtures (SQLite broker and store, compute twin)."""

from tests.core.conftest import settings, settings_overrides, twin, wired  # noqa: F401
