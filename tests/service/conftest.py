from tests.core.conftest import settings, twin, wired  # noqa: F401 - the core suite's fixtures, reused
