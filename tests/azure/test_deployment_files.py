"""The files that deploy the app agree with the code: settings names, packages, host options."""

from __future__ import annotations

import ast
import json
import re
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from shared.settings import Settings
from tests.support.azurite import AzuriteUnavailable, ensure_installed

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
                else _imported_from(node.module, [a.name for a in node.names])
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


def _imported_from(module: str, names: list[str]) -> list[str]:
    """``from module import a, b``: the module, or where ``module`` is a namespace package shared by
    many distributions (``from opentelemetry import trace``), the submodules it names."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is not None:
        return [module]
    subs = [f"{module}.{n}" for n in names]
    return [m for m in subs if importlib.util.find_spec(m) is not None] or [module]


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


# --- the Bicep templates: parameters, outputs, app settings, roles, network rules -----------------
# Bicep cannot be compiled here; these read the .bicep text. What they check is what the code and
# the docs rely on: a module parameter passed but not declared (or required and not passed), an
# output used but not declared, an app setting the app needs in Azure but nobody sets, a role the
# docs promise but the template does not assign (or assigns with another role definition id).

INFRA = REPO / "infra"

# Built-in role definition ids, from https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
BUILT_IN_ROLES = {
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "AzureML Data Scientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "AzureML Compute Operator": "e503ece1-11d0-4e8e-8e2c-7a6c3bf38815",
    "Network Contributor": "4d97b98b-1d4f-4787-a291-c67834d212e7",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "AcrPush": "8311e382-0749-4cb8-b61a-304f252e45ec",
}
# docs/azure.md section 9 wording -> the symbols roles.bicep uses
DOC_IDENTITIES = {
    "function app": "principalId",
    "Azure ML workspace": "workspacePrincipalId",
}
DOC_SCOPES = {
    "Service Bus namespace": "serviceBus",
    "queue `training-requests`": "requestsQueue",
    "subscription `training-completed/notifier`": "notifierSubscription",
    "app storage account": "storage",
    "Azure ML workspace": "workspace",
    "subnet `aml`": "amlSubnet",
    "NSG of `aml`": "amlNsg",
    "VNet": "vnet",
    "workspace Key Vault": "vault",
    "Application Insights": "appInsights",
    "container registry": "registry",
}
# Settings with no default that works in Azure are set by the templates, or listed here with why not.
NOT_SET_IN_AZURE = {
    "ray_address": "the Ray backend only",
    "ray_auth_token": "the Ray backend only",
    "ray_num_cpus": "the local Ray head only",
    "azureml_cluster_identity": "clusters rlq creates: a user-assigned identity; default system-assigned",
    "azureml_cluster_identity_client_id": "the client id of that user-assigned identity, when one is named",
    "servicebus_connection": "local tools; in Azure the managed identity and RLQ_SERVICEBUS_NAMESPACE",
    "table_connection": "Azurite and local tools; in Azure the managed identity and RLQ_TABLE_ACCOUNT_URL",
    "env_catalog": "unset: gymnasium's and Atari's built-in environments only; an operator who trusts packages sets it",
    "team_quotas": "unset: no team has a cap of its own (the global cap still holds); an operator sets it per team",
}
# Settings whose default is for one machine and wrong in Azure: the templates must set them.
AZURE_OVERRIDES = {
    "data_dir",
    "local_mode",
    "backend",
    "store",
    "broker",
    "public_base_url",
    "azureml_subnet",
}


def _bicep(path: Path) -> str:
    """The text without // comments (a comment may mention a name that is not really there)."""
    return re.sub(r"(?m)//.*$", "", path.read_text())


def _block(text: str, start: int) -> str:
    """The balanced ``{ ... }`` that opens at or after ``start``."""
    i = text.index("{", start)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i : j + 1]
    raise AssertionError(f"unbalanced braces after offset {start}")


def _params(text: str) -> dict[str, bool]:
    """``param name type [= default]`` -> has a default."""
    return {m[1]: bool(m[2]) for m in re.finditer(r"(?m)^param\s+(\w+)\s+[\w.]+(\s*=)?", text)}


def _outputs(text: str) -> set[str]:
    return set(re.findall(r"(?m)^output\s+(\w+)\s", text))


def _modules(text: str) -> dict[str, tuple[Path, dict[str, str]]]:
    """main.bicep's ``module sym 'path' = {... params: {k: v}}`` -> (file, params)."""
    mods = {}
    for m in re.finditer(r"(?m)^module\s+(\w+)\s+'([^']+)'\s*=", text):
        body = _block(text, m.end())
        params_at = body.index("params:")
        params = _block(body, params_at)[1:-1]
        keys = re.findall(r"(?m)^\s{4}(\w+):\s*(.+)$", params)
        mods[m[1]] = (INFRA / m[2], dict(keys))
    return mods


def _app_settings() -> dict[str, str]:
    """Every app setting the templates give the function app, with its Bicep value expression."""
    main = _bicep(INFRA / "main.bicep")
    app = _bicep(INFRA / "modules" / "functionapp.bicep")
    found: dict[str, str] = {}
    for text, var in (
        (main, "rlqSettings"),
        (main, "csrfSettings"),
        (main, "secretSettings"),
        (app, "settings"),
    ):
        m = re.search(rf"(?m)^var\s+{var}\s*=", text)
        assert m, f"var {var} is gone"
        for key, value in re.findall(r"(?m)^\s+([A-Za-z_][\w]*)\s*:\s*(.+?)\s*$", _block(text, m.end())):
            found[key] = value
    return found


def _role_assignments() -> tuple[dict[str, str], list[dict[str, str]]]:
    text = _bicep(INFRA / "modules" / "roles.bicep")
    role_ids = dict(re.findall(r"(?m)^\s+(\w+):\s*'([0-9a-f-]{36})'", _block(text, text.index("var role"))))
    assignments = []
    for m in re.finditer(
        r"(?m)^resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@[\w-]+'\s*=", text
    ):
        body = _block(text, m.end())
        role = re.search(r"roleDefinitionId:.*\brole\.(\w+)\)", body)
        scope = re.search(r"(?m)^\s+scope:\s*(\w+)\s*$", body)
        principal = re.search(r"(?m)^\s+principalId:\s*(\w+)\s*$", body)
        assert role and scope and principal, f"role assignment {m[1]} has no role/scope/principal"
        assignments.append(
            {
                "name": m[1],
                "role": role[1],
                "scope": scope[1],
                "principal": principal[1],
                "id": role_ids[role[1]],
            }
        )
    return role_ids, assignments


def _doc_section(title: str) -> str:
    text = (REPO / "docs" / "azure.md").read_text()
    start = text.index(title)
    nxt = re.search(r"(?m)^#{2,3} ", text[start + len(title) :])
    return text[start : start + len(title) + nxt.start()] if nxt else text[start:]


def _doc_table(title: str) -> list[list[str]]:
    rows = []
    for line in _doc_section(title).splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header


def test_module_parameters_and_outputs_line_up() -> None:
    main = _bicep(INFRA / "main.bicep")
    mods = _modules(main)
    assert {"serviceBus", "storage", "functionApp", "aml", "roles", "registry", "network"} <= set(mods)
    for sym, (path, passed) in mods.items():
        text = _bicep(path)
        declared = _params(text)
        assert set(passed) - set(declared) == set(), f"{sym}: passes parameters {path.name} does not declare"
        required = {p for p, has_default in declared.items() if not has_default}
        assert required - set(passed) == set(), f"{sym}: {path.name} requires parameters main.bicep omits"
    for sym, out in re.findall(r"\b(\w+)\.outputs\.(\w+)", main):
        assert sym in mods, f"main.bicep reads outputs of {sym}, which is not a module"
        assert out in _outputs(_bicep(mods[sym][0])), f"{mods[sym][0].name} has no output {out!r}"
    # the example parameters file names only parameters main.bicep declares, and every required one
    example = json.loads((INFRA / "main.parameters.example.json").read_text())["parameters"]
    main_params = _params(main)
    assert set(example) - set(main_params) == set()
    assert {p for p, has_default in main_params.items() if not has_default} <= set(example)
    # the outputs docs/azure.md tells people to read
    assert {"functionAppName", "serviceBusNamespace", "tableAccountUrl", "workspaceName"} <= _outputs(main)


def test_every_setting_the_app_needs_in_azure_is_set_by_the_templates() -> None:
    settings = _app_settings()
    rlq = {k.removeprefix("RLQ_").lower(): v for k, v in settings.items() if k.startswith("RLQ_")}
    assert set(rlq) <= set(Settings.model_fields), sorted(set(rlq) - set(Settings.model_fields))
    unset_by_default = {
        n for n, f in Settings.model_fields.items() if f.default is None and not f.is_required()
    }
    needed = (unset_by_default - set(NOT_SET_IN_AZURE)) | AZURE_OVERRIDES
    assert sorted(needed - set(rlq)) == []
    assert set(NOT_SET_IN_AZURE) <= set(Settings.model_fields)  # no stale entry
    # the literal values parse as settings (a typo in an enum value fails here, not at start-up)
    literals = {k: v[1:-1] for k, v in rlq.items() if re.fullmatch(r"'[^'$]*'", v)}
    s = Settings(_env_file=None, **literals)
    assert (s.backend, s.store, s.broker, s.local_mode, s.azureml_subnet) == (
        "azureml",
        "table",
        "servicebus",
        False,
        "aml",
    )
    # the triggers' identity-based connection and the host storage by identity
    assert "ServiceBusConnection__fullyQualifiedNamespace" in settings
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "'Authorization=AAD'"


def test_service_bus_entities_match_the_settings() -> None:
    text = _bicep(INFRA / "modules" / "servicebus.bicep")
    defaults = Settings(_env_file=None)
    entity = {}
    for m in re.finditer(
        r"(?m)^resource\s+(\w+)\s+'Microsoft\.ServiceBus/namespaces/[\w/]+@[\w-]+'\s*=", text
    ):
        entity[m[1]] = re.search(r"(?m)^\s{2}name:\s*'([^']+)'", _block(text, m.end()))[1]
    assert set(entity) == {"requests", "rejected", "completed", "notifier"}
    assert entity["requests"] == defaults.queue_name
    assert entity["rejected"] == defaults.rejected_queue_name
    assert entity["completed"] == defaults.topic_name
    assert entity["notifier"] == defaults.subscription_name
    requests = _block(text, text.index("resource requests"))
    assert f"maxDeliveryCount: {defaults.max_delivery_count}" in requests
    assert "requiresDuplicateDetection: true" in requests
    # roles.bicep's defaults name the same entities (its scopes for the triggers' Data Owner)
    roles = _params(_bicep(INFRA / "modules" / "roles.bicep"))
    assert {"requestsQueueName", "completedTopicName", "notifierSubscriptionName"} <= set(roles)


def test_no_template_declares_a_name_twice() -> None:
    """Bicep refuses a file that declares a symbol (parameter, variable, resource, module) or an
    output twice; outputs have their own namespace (``output name`` beside ``param name`` is fine)."""
    for path in INFRA.rglob("*.bicep"):
        text = _bicep(path)
        for kinds in ("param|var|resource|module", "output"):
            names = re.findall(rf"(?m)^(?:{kinds})\s+(\w+)\b", text)
            twice = sorted({n for n in names if names.count(n) > 1})
            assert twice == [], f"{path.relative_to(REPO)} declares {twice} more than once"


def test_templates_use_ga_api_versions_only() -> None:
    previews = [
        f"{p.relative_to(REPO)}: {m}"
        for p in INFRA.rglob("*.bicep")
        for m in re.findall(r"'[\w./]+@\d{4}-\d{2}-\d{2}-preview'", p.read_text())
    ]
    assert previews == []


def test_every_role_the_docs_list_is_assigned_with_its_built_in_id() -> None:
    role_ids, assignments = _role_assignments()
    # every id roles.bicep names is the built-in role's
    known = {v: k for k, v in BUILT_IN_ROLES.items()}
    assert sorted(set(role_ids.values()) - set(known)) == []
    rows = _doc_table("### Role assignments")
    assert len(rows) >= 10
    documented = set()
    for identity, role, scope, why, source in rows:
        m = re.fullmatch(r"(.+?) \(`([0-9a-f-]{36})`\)", role)
        assert m, f"docs row {role!r}: 'Role name (`id`)' expected"
        name, rid = m[1], m[2]
        assert BUILT_IN_ROLES.get(name) == rid, f"docs: {name} is not built-in role {rid}"
        assert "https://" in source, f"docs row {name} / {scope}: no source link"
        assert why, f"docs row {name} / {scope}: no reason"
        key = (DOC_IDENTITIES[identity], rid, DOC_SCOPES[scope])
        match = [a for a in assignments if (a["principal"], a["id"], a["scope"]) == key]
        assert match, f"docs promise {name} for {identity} on {scope}; roles.bicep does not assign it"
        documented.add(key)
    undocumented = [a["name"] for a in assignments if (a["principal"], a["id"], a["scope"]) not in documented]
    assert undocumented == []
    # the triggers' scaling needs the Manage claim: Data Owner on both trigger entities, not Receiver
    owner = BUILT_IN_ROLES["Azure Service Bus Data Owner"]
    assert {a["scope"] for a in assignments if a["id"] == owner} == {"requestsQueue", "notifierSubscription"}
    assert BUILT_IN_ROLES["Azure Service Bus Data Receiver"] not in {a["id"] for a in assignments}


def test_the_workspace_uses_the_declared_registry_with_the_admin_user_off() -> None:
    registry = _bicep(INFRA / "modules" / "registry.bicep")
    assert "adminUserEnabled: false" in registry and "anonymousPullEnabled: false" in registry
    aml = _bicep(INFRA / "modules" / "aml.bicep")
    workspace = _block(aml, aml.index("resource workspace"))
    assert re.search(r"(?m)^\s+containerRegistry:\s*containerRegistryId\s*$", workspace)
    main = _bicep(INFRA / "main.bicep")
    aml_params = _modules(main)["aml"][1]
    assert aml_params["containerRegistryId"] == "registry.outputs.id"
    for cluster in ("headCluster", "workerCluster"):  # they pull with their own identity
        assert "type: 'SystemAssigned'" in _block(aml, aml.index(f"resource {cluster}"))


def test_the_registry_asks_for_no_content_trust() -> None:
    """Azure refuses ``trustPolicy`` now (ContentTrustUnsupported): a deployment asking for it fails."""
    registry = _bicep(INFRA / "modules" / "registry.bicep")
    code = "\n".join(line.split("//", 1)[0] for line in registry.splitlines())  # comments may name it
    assert "trustPolicy" not in code and "Notary" not in code
    assert "CKV_AZURE_164" in (INFRA / ".checkov.yaml").read_text()  # the skip says why


def _bicep_value(expr: str, env: dict[str, object]) -> object:
    """A Bicep rule field's value: a string (``${name}`` filled from ``env``), a number, a name
    from ``env``, or ``<number> + <name>``."""
    expr = expr.strip()
    if len(expr) >= 2 and expr[0] == expr[-1] == "'":
        return re.sub(r"\$\{(\w+)\}", lambda m: str(env[m[1]]), expr[1:-1])
    if expr.isdigit():
        return int(expr)
    if m := re.fullmatch(r"(\d+)\s*\+\s*(\w+)", expr):
        return int(m[1]) + int(env[m[2]])  # type: ignore[call-overload]
    return env[expr]


def _bicep_rules(text: str, var: str, env: dict[str, object]) -> list[dict[str, object]]:
    """The security rules of ``var <var> = [ {name: ..., properties: {...}} ... ]`` as ARM dicts."""
    start = re.search(rf"(?m)^var\s+{var}\s*=\s*\[", text)
    assert start, f"network.bicep has no var {var}"
    body = text[start.end() : text.index("\n]", start.end())]
    rules = []
    for m in re.finditer(r"(?m)^\s+name:\s*(.+)$\s+properties:\s*", body):
        props = _block(body, m.end())
        # a list value (destinationPortRanges: [ '443' '8787' ]) first, then the one-line fields
        lists = {
            k: [_bicep_value(v, env) for v in re.findall(r"'[^']*'", items)]
            for k, items in re.findall(r"(?ms)^\s+(\w+):\s*\[\s*$(.*?)^\s+\]\s*$", props[1:-1])
        }
        one_line = re.sub(r"(?ms)^\s+\w+:\s*\[\s*$.*?^\s+\]\s*$", "", props[1:-1])
        fields = dict(re.findall(r"(?m)^\s+(\w+):\s*(.+?)\s*$", one_line))
        rules.append(
            {"name": _bicep_value(m[1], env), **{k: _bicep_value(v, env) for k, v in fields.items()}, **lists}
        )
    return rules


def _aml_nsg(location: str = "westeurope") -> dict[str, list[dict[str, object]]]:
    """network.bicep's aml NSG rules by the var that holds them; the outbound loop expanded."""
    text = _bicep(INFRA / "modules" / "network.bicep")
    env: dict[str, object] = {"location": location, "amlSubnetPrefix": "10.20.1.0/24"}
    tags_at = re.search(r"(?m)^var\s+amlOutboundTags\s*=\s*\[", text)
    assert tags_at
    tags = [
        _bicep_value(t, env)
        for t in re.findall(r"(?m)^\s+('[^']+')\s*$", text[tags_at.end() : text.index("\n]", tags_at.end())])
    ]
    loop = re.search(
        r"(?m)^var\s+amlOutbound443\s*=\s*\[for\s+\((\w+),\s*(\w+)\)\s+in\s+amlOutboundTags:", text
    )
    assert loop, "network.bicep: var amlOutbound443 = [for (tag, i) in amlOutboundTags: ...]"
    template = text[loop.end() : text.index("}]", loop.end()) + 1]
    name_expr = re.search(r"(?m)^\s+name:\s*(.+)$", template)[1]  # type: ignore[index]
    assert name_expr == (
        "'Allow${tag == 'AzureFrontDoor.FirstParty' ? 'AzureFrontDoorFirstParty' : split(tag, '.')[0]}'"
    )
    props = _block(template, template.index("properties:"))
    fields = dict(re.findall(r"(?m)^\s+(\w+):\s*(.+?)\s*$", props[1:-1]))
    outbound = []
    for i, tag in enumerate(tags):
        name = (
            "AllowAzureFrontDoorFirstParty"
            if tag == "AzureFrontDoor.FirstParty"
            else f"Allow{str(tag).split('.')[0]}"
        )
        loop_env = {**env, loop[1]: tag, loop[2]: i}
        outbound.append({"name": name, **{k: _bicep_value(v, loop_env) for k, v in fields.items()}})
    nsg = _block(text, text.index("resource amlNsg"))
    assert re.search(
        r"securityRules:\s*concat\(\s*amlRules,\s*amlOutbound443,\s*nodePublicIp \? amlInboundPublicIp : \[\],"
        r"\s*batchNodeManagementInbound \? amlInboundBatch : \[\]\s*\)",
        nsg,
    ), "the aml NSG is amlRules + amlOutbound443 (+ the optional inbound rules)"
    return {
        "amlRules": _bicep_rules(text, "amlRules", env),
        "amlOutbound443": outbound,
        "amlInboundPublicIp": _bicep_rules(text, "amlInboundPublicIp", env),
        "amlInboundBatch": _bicep_rules(text, "amlInboundBatch", env),
    }


def test_the_aml_nsg_opens_what_the_current_azure_ml_guidance_needs() -> None:
    """Evaluated with the same checker the backends run before each submit (nsg.py)."""
    from shared.adapters.compute.azureml.nsg import OUTBOUND_TAGS, missing_nsg_rules
    from tests.support.network_twin import INFRA_NSG_RULES

    nsg = _aml_nsg()
    default = nsg["amlRules"] + nsg["amlOutbound443"]
    subnet = ["10.20.1.0/24"]
    # no-public-IP clusters (the default): complete, and nothing inbound but from the subnet itself
    assert missing_nsg_rules(default, subnet_prefixes=subnet) == []
    inbound_allows = [r for r in default if r["direction"] == "Inbound" and r["access"] == "Allow"]
    assert [r["sourceAddressPrefix"] for r in inbound_allows] == ["10.20.1.0/24"]
    assert [r["name"] for r in default if r["direction"] == "Outbound" and r["access"] == "Deny"] == [
        "DenyInternetOutbound"
    ]
    # every outbound tag of the guidance is opened, and only those
    opened = {
        str(r["destinationAddressPrefix"])
        for r in default
        if r["direction"] == "Outbound" and r["access"] == "Allow"
    }
    assert {next(t for t in OUTBOUND_TAGS if o == t or o.startswith(t + ".")) for o in opened} == set(
        OUTBOUND_TAGS
    )
    assert len(opened) == len(OUTBOUND_TAGS)
    # the optional rules: clusters with public IPs, and the seed's BatchNodeManagement rule
    assert missing_nsg_rules(default, subnet_prefixes=subnet, node_public_ip=True) != []
    assert (
        missing_nsg_rules(default + nsg["amlInboundPublicIp"], subnet_prefixes=subnet, node_public_ip=True)
        == []
    )
    assert missing_nsg_rules(default, subnet_prefixes=subnet, batch_node_inbound=True) != []
    assert (
        missing_nsg_rules(default + nsg["amlInboundBatch"], subnet_prefixes=subnet, batch_node_inbound=True)
        == []
    )

    # the Azure ML twin's NSG is the template's default one
    def key(r: dict) -> tuple:
        g = lambda f: r.get(f, r.get(re.sub(r"_(\w)", lambda m: m[1].upper(), f)))  # noqa: E731 - local reader
        return tuple(
            str(g(f))
            for f in (
                "name",
                "priority",
                "direction",
                "access",
                "protocol",
                "source_address_prefix",
                "destination_address_prefix",
                "destination_port_range",
            )
        )

    twin = sorted(key(r) for r in INFRA_NSG_RULES)
    template = sorted(key(r) for r in default)
    assert twin == template


def test_both_subnets_leave_through_the_nat_gateway() -> None:
    """No subnet relies on default outbound access: the clusters (no public IP) and the function
    app (webhooks, Teams) go out through the NAT gateway."""
    text = _bicep(INFRA / "modules" / "network.bicep")
    vnet = _block(text, text.index("resource vnet"))
    for subnet in ("functions", "aml"):
        body = _block(vnet, vnet.index(f"name: '{subnet}'"))
        assert re.search(r"(?m)^\s+defaultOutboundAccess:\s*false\s*$", body), subnet
        assert re.search(r"natGateway:\s*\{\s*id:\s*natGateway\.id\s*\}", body), subnet


def test_the_default_clusters_have_no_public_ip_and_a_workspace_endpoint() -> None:
    aml = _bicep(INFRA / "modules" / "aml.bicep")
    assert _params(aml)["nodePublicIp"] is True  # has a default ...
    assert re.search(r"(?m)^param\s+nodePublicIp\s+bool\s*=\s*false\s*$", aml)  # ... and it is false
    for cluster in ("headCluster", "workerCluster"):
        body = _block(aml, aml.index(f"resource {cluster}"))
        assert re.search(r"(?m)^\s+enableNodePublicIp:\s*nodePublicIp\s*$", body), cluster
        assert re.search(r"dependsOn:\s*\[\s*workspaceEndpoint\s*\]", body), cluster
    assert re.search(
        r"(?m)^module\s+workspaceEndpoint\s+'workspace-endpoint\.bicep'\s*=\s*if\s*\(!nodePublicIp\)", aml
    )
    endpoint = _bicep(INFRA / "modules" / "workspace-endpoint.bicep")
    assert "'amlworkspace'" in endpoint
    assert {"privatelink.api.azureml.ms", "privatelink.notebooks.azure.net"} <= set(
        re.findall(r"'(privatelink\.[\w.]+)'", endpoint)
    )
    network = _bicep(INFRA / "modules" / "network.bicep")
    subnet = _block(network, network.index("name: 'aml'"))
    assert "defaultOutboundAccess: false" in subnet and "natGateway:" in subnet
    main = _bicep(INFRA / "main.bicep")
    assert re.search(r"(?m)^param\s+amlNodePublicIp\s+bool\s*=\s*false\s*$", main)
    assert re.search(r"(?m)^param\s+amlBatchNodeManagementInbound\s+bool\s*=\s*false\s*$", main)
    mods = _modules(main)
    assert mods["network"][1]["nodePublicIp"] == mods["aml"][1]["nodePublicIp"] == "amlNodePublicIp"
    assert mods["network"][1]["batchNodeManagementInbound"] == "amlBatchNodeManagementInbound"
    # the NSG check is told the same
    settings = _app_settings()
    assert settings["RLQ_AZUREML_NODE_PUBLIC_IP"] == "string(amlNodePublicIp)"
    assert settings["RLQ_AZUREML_NSG_BATCH_INBOUND"] == "string(amlBatchNodeManagementInbound)"


def test_cluster_creation_gets_read_on_the_vnet_and_join_on_the_subnet() -> None:
    """Creating a cluster in a VNet needs Microsoft.Network/*/read on the VNet and
    subnets/join/action on the subnet (Azure ML, how-to-secure-training-vnet, prerequisites)."""
    text = _bicep(INFRA / "modules" / "roles.bicep")
    conditions = {
        m[1]: (m[2] or "").strip()
        for m in re.finditer(
            r"(?m)^resource\s+(\w+)\s+'Microsoft\.Authorization/roleAssignments@[\w-]+'\s*=\s*(if\s*\([^)]*\))?",
            text,
        )
    }
    _, assignments = _role_assignments()
    by = {(a["principal"], a["id"], a["scope"]): a["name"] for a in assignments}
    vnet_read = by.get(("principalId", BUILT_IN_ROLES["Reader"], "vnet"))
    subnet_join = by.get(("principalId", BUILT_IN_ROLES["Network Contributor"], "amlSubnet"))
    operator = by.get(("principalId", BUILT_IN_ROLES["AzureML Compute Operator"], "workspace"))
    assert vnet_read and subnet_join and operator
    assert conditions[subnet_join] == conditions[operator] == "if (allowClusterCreation)"
    # read on the VNet whenever clusters may be created (and for the NSG check anyway)
    assert conditions[vnet_read] in ("", "if (allowClusterCreation)")


def test_every_nsg_rule_is_in_the_docs() -> None:
    text = _bicep(INFRA / "modules" / "network.bicep")
    rows = _doc_table("### Network rules")
    assert rows and all("https://" in r[-1] for r in rows), "every network rule names its source"
    aml_rows = [" ".join(r) for r in rows if "NSG of `aml`" in r[0]]
    rules = [r for group in _aml_nsg(location="<region>").values() for r in group]
    assert len(rules) >= 12
    for rule in rules:
        name, direction = rule["name"], str(rule["direction"]).lower()
        peer = rule["sourceAddressPrefix"] if direction == "inbound" else rule["destinationAddressPrefix"]
        ours = [r for r in aml_rows if direction in r]
        if rule["access"] == "Deny":
            assert any(f"`{peer}`: deny" in r for r in ours), name
        elif rule.get("destinationPortRange") == "*":
            assert rule["sourceAddressPrefix"] == "10.20.1.0/24", name
            assert any("from the `aml` subnet" in r for r in ours), name
        else:
            ports = rule.get("destinationPortRange") or ", ".join(rule["destinationPortRanges"])  # type: ignore[arg-type]
            wanted = (f"`{ports}`", f"`{peer}`", str(rule["protocol"]).upper())
            assert any(all(w in r for w in wanted) for r in ours), f"{name}: {wanted} not in docs"
    assert "functionsNsg" in text
