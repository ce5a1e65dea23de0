from tests.core.conftest import settings, settings_overrides, twin, wired  # noqa: F401 - the core suite's fixtures, reused
