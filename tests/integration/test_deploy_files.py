"""The deployment files mean what they say: ``compose.yaml`` is a valid Compose file
whose services run commands this package installs, the Procfile's process types are
the contract's, and the NATS config compose mounts is one a real ``nats-server``
accepts, with JetStream syncing before it acknowledges; the development tooling
(``dev/``) is neither packaged nor copied into the image.

``data/compose_spec.json`` is the Compose Specification's JSON schema as
docker-compose 1.29.2 shipped it (``compose/config/compose_spec.json`` in its wheel on
PyPI), vendored because the tests reach no network.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dev.servers import find_nats_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).resolve().parents[1] / "data" / "compose_spec.json"
APP_SERVICES = {"bridge": "orders-bridge", "worker": "orders-worker", "web": "orders-web"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def console_scripts() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(pyproject["project"]["scripts"])


def image_sources() -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions take (not those
    copied from another stage)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    return [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors(compose()) == []
    broken = copy.deepcopy(compose())
    broken["services"]["bridge"]["restart_policy"] = "sometimes"  # not a service key
    assert schema_errors(broken), "the schema accepts anything: the check proves nothing"


def test_every_app_service_runs_a_command_of_this_package() -> None:
    services = compose()["services"]
    scripts = console_scripts()
    for service, command in APP_SERVICES.items():
        assert services[service]["command"][0] == command
        assert command in scripts, f"{service} runs {command}, which pyproject does not install"


def test_compose_keeps_data_durable() -> None:
    services = compose()["services"]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert "--appendfsync" in redis_command
    assert any("nats-server.conf" in volume for volume in services["nats"]["volumes"])
    assert "/ready" in services["bridge"]["healthcheck"]["test"][-1]


def test_nats_config_is_accepted_by_nats_server_and_syncs_always() -> None:
    config = ROOT / "deploy" / "nats" / "nats-server.conf"
    result = subprocess.run(
        [find_nats_server(), "-c", str(config), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    settings = [line.split("#")[0].strip() for line in config.read_text().splitlines()]
    assert "sync_interval: always" in settings


def test_procfile_runs_the_contracts_process_types_on_commands_of_this_package() -> None:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            kind, _, command = line.partition(":")
            entries[kind.strip()] = shlex.split(command)
    assert set(entries) == set(APP_SERVICES)
    for kind, command in APP_SERVICES.items():
        assert entries[kind][0] == command
    assert console_scripts() >= set(APP_SERVICES.values())


@pytest.mark.parametrize(
    ("lock", "extras"), [("runtime.lock", ()), ("dev.lock", ("dev", "embedded"))]
)
def test_lock_pins_every_dependency_within_pyproject_ranges(
    lock: str, extras: tuple[str, ...]
) -> None:
    """``make lock`` output, used by ``make install`` (dev) and the image (runtime),
    is in step with the ranges ``pyproject.toml`` declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        declared += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pinned = {}
    for line in (ROOT / "requirements" / lock).read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, rest = line.partition("==")
            pinned[canonicalize_name(name.split("[")[0])] = rest.split(";")[0].strip()
    for requirement in declared:
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):
            continue  # the project's own extras
        assert name in pinned, f"{requirement.name} is not pinned in {lock} (run make lock)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {requirement.name}=={pinned[name]} outside {requirement.specifier}"
        )


def test_the_development_tooling_is_neither_packaged_nor_in_the_image() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for module in ("dev", "dev.bench", "dev.servers"):
        assert not any(fnmatch.fnmatchcase(module, pattern) for pattern in packaged), packaged
    sources = image_sources()
    assert sources, "no COPY of the build context found: the check proves nothing"
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip().strip("/") for line in dockerignore}
    for source in sources:
        top = Path(source).parts[0] if Path(source).parts else "."
        # The whole context, or a pattern matching dev/, takes it in unless ignored.
        if top == "." or fnmatch.fnmatchcase("dev", top):
            assert "dev" in ignored, f"COPY {source} takes dev/ into the image"


def test_every_shipped_package_and_the_ledger_scripts_are_packaged_and_in_the_image() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    sources = {Path(source).parts[0] for source in image_sources() if Path(source).parts}
    for package in ("relay", "orders", "bridge"):
        assert any(fnmatch.fnmatchcase(package, pattern) for pattern in packaged), packaged
        assert package in sources or "." in sources, f"the Dockerfile does not COPY {package}/"
    # relay.ledger reads its Lua scripts as package data: a wheel without them fails.
    assert "lua/*.lua" in package_data["relay"]
    assert sorted((ROOT / "relay" / "lua").glob("*.lua")), "no ledger scripts"
