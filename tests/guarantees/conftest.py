"""The guarantee suites reuse the service suite's fixtures (SQLite broker and store, compute twin)."""

from tests.core.conftest import settings, twin, wired  # noqa: F401
