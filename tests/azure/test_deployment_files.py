"""The files that deploy the app agree with the code: settings names, packages, host options."""

from __future__ import annotations

import ast
import json
import re
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from shared.adapters.azurite import AzuriteUnavailable, ensure_installed
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TRAINER_ONLY = {"ray", "torch", "gymnasium", "ale-py", "opencv-python-headless", "imageio"}


def _duration_s(text: str) -> int:
    h, m, s = (int(x) for x in text.split(":"))
    return h * 3600 + m * 60 + s


def _requirement_names() -> set[str]:
    names = set()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_host_json_service_bus_and_timeouts() -> None:
    host = json.loads((REPO / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    sb = host["extensions"]["serviceBus"]
    assert sb["autoCompleteMessages"] is True
    # the lock is renewed for as long as the intake may run
    assert _duration_s(sb["maxAutoLockRenewalDuration"]) >= _duration_s(host["functionTimeout"])
    assert sb["prefetchCount"] == 0 and 1 <= sb["maxConcurrentCalls"] <= 16
    assert "Request" in host["logging"]["applicationInsights"]["samplingSettings"]["excludedTypes"]


def test_every_rlq_setting_named_in_deployment_files_exists() -> None:
    """A typo in an app setting name would silently fall back to a default: catch it here."""
    fields = set(Settings.model_fields)
    local = json.loads((REPO / "local.settings.example.json").read_text())["Values"]
    bicep = (REPO / "infra" / "main.bicep").read_text()
    named = {k for k in local if k.startswith("RLQ_")} | set(re.findall(r"\b(RLQ_[A-Z0-9_]+)\s*:", bicep))
    assert {"RLQ_BACKEND", "RLQ_STORE", "RLQ_BROKER", "RLQ_POLL_SCHEDULE", "RLQ_DATA_DIR"} <= named
    unknown = sorted(n for n in named if n.removeprefix("RLQ_").lower() not in fields)
    assert unknown == []
    assert local["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert local["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    # the trigger's connection name matches the function app's bindings
    assert "ServiceBusConnection__fullyQualifiedNamespace" in local
    assert "ServiceBusConnection__fullyQualifiedNamespace" in bicep
    assert 'connection="ServiceBusConnection"' in (REPO / "functions" / "intake.py").read_text()


def test_settings_in_deployment_files_parse() -> None:
    local = json.loads((REPO / "local.settings.example.json").read_text())["Values"]
    values = {k.removeprefix("RLQ_").lower(): v for k, v in local.items() if k.startswith("RLQ_") and v != ""}
    s = Settings(_env_file=None, **values)
    assert (s.backend, s.store, s.broker, s.local_mode) == ("azureml", "table", "servicebus", False)


def test_requirements_cover_the_app_and_leave_the_trainer_out() -> None:
    names = _requirement_names()
    assert not names & TRAINER_ONLY, "Ray / torch belong to trainer/requirements.txt"
    dists = packages_distributions()
    missing = set()
    files = [REPO / "function_app.py", *(REPO / "functions").rglob("*.py"), *(REPO / "shared").rglob("*.py")]
    for path in files:
        for node in ast.parse(path.read_text()).body:  # module-level imports: what loading the app needs
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for mod in mods:
                top = mod.split(".")[0]
                if top in ("shared", "functions", "trainer", "__future__") or top in _stdlib():
                    continue
                dist = _distribution_of(mod, dists.get(top, [top]))
                if dist.lower().replace("_", "-") not in names:
                    missing.add(f"{path.relative_to(REPO)}: {mod} ({dist})")
    assert sorted(missing) == []


def _distribution_of(module: str, candidates: list[str]) -> str:
    """The installed distribution that provides ``module`` (namespace packages like ``azure.*``
    are shared by many distributions: the module's file decides)."""
    import importlib.util
    from importlib.metadata import distribution

    if len(candidates) == 1:
        return candidates[0]
    origin = Path(importlib.util.find_spec(module).origin or "").resolve()
    for name in candidates:
        dist = distribution(name)
        if any(Path(dist.locate_file(f)).resolve() == origin for f in dist.files or []):
            return name
    return candidates[0]


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)


def test_funcignore_keeps_the_trainer_and_drops_the_rest() -> None:
    lines = {
        line.strip()
        for line in (REPO / ".funcignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for excluded in (".venv/", "tests/", "bench/", "infra/", "node_modules/", "local.settings.json"):
        assert excluded in lines
    assert not any(line.rstrip("/") in ("trainer", "trainer/*", "shared", "functions") for line in lines)
    assert "trainer/outputs/" in lines


def test_azurite_helper_says_what_to_run_when_missing(tmp_path: Path) -> None:
    with pytest.raises(AzuriteUnavailable, match="npm install"):
        ensure_installed(repo_root=tmp_path, install=False)
    with pytest.raises(AzuriteUnavailable, match=r"no package\.json"):
        ensure_installed(repo_root=tmp_path, install=True)
