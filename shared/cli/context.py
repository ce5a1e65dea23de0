"""What every ``rlq`` command shares: the global options, the wiring built from them, and one
translation of the error tree into a readable line and an exit code.

Kept apart from ``shared.cli`` (the typer app) so that ``shared.cli.local`` (serve, demo) can
use it without importing the app it is registered on.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

from shared.cli.render import err_console, fail, print_field_errors
from shared.contracts.run import RunRecord
from shared.errors import InvalidRequest, NotFound, PermanentError, RlqError, TransientError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.composition import Wiring

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def exit_code_for(record: RunRecord) -> int:
    """0 completed, 3 canceled, 1 anything else that ended (failed, timed out, rejected)."""
    if record.status == "Completed":
        return EXIT_OK
    if record.status == "Canceled":
        return EXIT_CANCELED
    return EXIT_FAILED


@dataclass
class State:
    data_dir: Path | None = None
    debug: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _wiring: Wiring | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            values = dict(self.overrides)
            if self.data_dir is not None:
                values["data_dir"] = self.data_dir
            self._settings = Settings(**values)
        return self._settings

    def override(self, **values: Any) -> None:
        """Settings that win over the environment (read again on the next ``settings()``)."""
        self.overrides.update(values)
        self._settings = None

    def link_to_port(self, port: int) -> None:
        """Links in messages point at this host's API unless RLQ_PUBLIC_BASE_URL says otherwise."""
        if "public_base_url" not in self.settings().model_fields_set:
            self.override(public_base_url=f"http://127.0.0.1:{port}")

    def wiring(self) -> Wiring:
        if self._wiring is None:
            from shared.composition import build

            self._wiring = build(self.settings())
        return self._wiring


def state_of(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):
        obj = ctx.find_root().obj = State()
    return obj


@contextlib.contextmanager
def errors(state: State) -> Iterator[None]:  # noqa: C901 - one except clause per branch of the error tree, each its own exit code
    """Turn the error tree into one readable line and an exit code (``--debug``: the traceback)."""
    try:
        yield
    except typer.Exit:
        raise
    except InvalidRequest as err:
        if state.debug:
            raise
        print_field_errors(err.errors)
        raise typer.Exit(EXIT_USAGE) from None
    except PermanentError as err:
        if state.debug:
            raise
        fail(f"{err.reason}: {err.description}", EXIT_USAGE)
    except NotFound as err:
        if state.debug:
            raise
        fail(str(err), EXIT_FAILED)
    except TransientError as err:
        if state.debug:
            raise
        fail(f"{err} (temporary: try again)", EXIT_FAILED)
    except ValidationError as err:  # settings from the environment
        if state.debug:
            raise
        problems = "; ".join(
            f"RLQ_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in err.errors(include_url=False)
        )
        fail(f"invalid settings: {problems}", EXIT_USAGE)
    except KeyboardInterrupt:
        err_console().print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as err:
        if state.debug:
            raise
        if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and err.filename:
            fail(
                f"{err.filename} is read-only ({err.strerror}): rlq writes its queue and run store in its "
                "data directory; make it writable, or pick another (--data-dir / RLQ_DATA_DIR) "
                "(permanent: retrying will not help)",
                EXIT_FAILED,
            )
        fail(f"{type(err).__name__}: {err}", EXIT_FAILED)
    except (RlqError, ValueError) as err:
        if state.debug:
            raise
        fail(str(err), EXIT_FAILED)
