"""What loading function_app.py installs, by setting (each case in a fresh interpreter: the SDK's
providers can be set once per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import logging
import function_app  # noqa: F401 - loading it configures telemetry
from opentelemetry import trace
from shared import telemetry
provider = type(trace.get_tracer_provider()).__name__
calls = []  # what the tracer is asked for: nothing at all while no SDK is installed


class Counting:
    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        calls.append(name)
        return getattr(self.real, name)


telemetry._tracer = Counting(telemetry._tracer)
with telemetry.span(telemetry.INTAKE, request_id="r-1") as span:
    fields = telemetry.log_fields()
    record = logging.getLogger("shared.probe").makeRecord("shared.probe", 20, "probe.py", 1, "m", (), None)
print("PROBE", provider, type(span).__name__, len(calls), fields["request_id"], record.request_id)
"""


def _probe(tmp_path: Path, **env: str) -> str:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("RLQ_", "OTEL_", "APPLICATIONINSIGHTS_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**clean, "RLQ_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("PROBE ")]  # beside the exporter's
    return line.removeprefix("PROBE ")


@pytest.mark.timeout(240)
def test_the_default_installs_no_sdk_and_skips_spans_but_logs_carry_the_request(tmp_path):
    assert _probe(tmp_path) == "ProxyTracerProvider NonRecordingSpan 0 r-1 r-1"


@pytest.mark.timeout(240)
def test_the_console_exporter_installs_the_sdk(tmp_path):
    assert _probe(tmp_path, RLQ_OTEL_EXPORTER="console") == "TracerProvider _Span 1 r-1 r-1"


def test_a_wrong_exporter_is_refused_naming_the_setting_and_its_values():
    from pydantic import ValidationError

    from shared.settings import Settings

    with pytest.raises(ValidationError) as err:
        Settings(otel_exporter="jaeger", _env_file=None)  # type: ignore[call-arg]
    text = str(err.value)
    assert "otel_exporter" in text and "'none', 'console' or 'otlp'" in text
