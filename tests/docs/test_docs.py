"""The docs stay true: every setting is documented, every CLI command has --help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgestore.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", doc, flags=re.M))
    missing = set(Settings.model_fields) - documented
    assert not missing, f"settings missing from docs/configuration.md: {sorted(missing)}"
    stale = documented - set(Settings.model_fields)
    assert not stale, f"docs/configuration.md documents unknown settings: {sorted(stale)}"


def test_readme_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^serve:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_cli_help_lists_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgestore", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("serve", "put", "get", "ls", "stat", "rm", "du", "gc", "init"):
        assert command in out


def test_every_cli_option_and_argument_has_help() -> None:
    """`edgestore COMMAND --help` is where README sends users for every option."""
    import typer

    from edgestore.cli.main import app

    def walk(cmd, path: str):  # typer's own click: no isinstance against `click`
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    missing = [
        f"{path}: {param.name}"
        for path, cmd in walk(typer.main.get_command(app), "edgestore")
        for param in cmd.params
        if param.name != "help" and not getattr(param, "help", None)
    ]
    assert not missing, f"no help text: {missing}"


DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
# `GET /objects`, `GET`, `HEAD`, `DELETE /ids/{object_id}?version=N`, `GET/HEAD /healthz`
ROUTE = re.compile(r"`((?:[A-Z]{3,7}`(?:, |/)`)*)((?:[A-Z]{3,7}/)*[A-Z]{3,7}) (/[^`\s]*)`")


def _app_routes():
    """The app's routes as a server builds them (nothing is opened until start-up)."""
    import tempfile

    from edgestore.api.app import create_app
    from edgestore.config import load_settings

    return create_app(load_settings(home=Path(tempfile.mkdtemp()))).router.routes


def test_every_documented_route_exists() -> None:
    """A route the docs name (method and path) is one the app serves, not a 404 or 405."""
    from starlette.routing import Match

    routes = _app_routes()
    missing = []
    for doc in DOCS:
        for m in ROUTE.finditer(doc.read_text()):
            path = m.group(3).split("?")[0]
            if "…" in path:  # a family of routes (security.md), not one
                continue
            sample = re.sub(r"\{[^}]+\}", "x", path)
            for method in re.findall(r"[A-Z]{3,7}", m.group(1) + m.group(2)):
                scope = {"type": "http", "method": method, "path": sample, "root_path": ""}
                if not any(r.matches(scope)[0] == Match.FULL for r in routes):
                    missing.append(f"{doc.name}: {method} {path}")
    assert not missing, f"documented routes the app does not serve: {missing}"


def test_every_route_is_documented() -> None:
    """Each path the app serves is in docs/api.md or docs/client.md (the native API)."""
    documented = set()
    for doc in ("api.md", "client.md"):
        for m in ROUTE.finditer((ROOT / "docs" / doc).read_text()):
            documented.add(re.sub(r"\{[^}]+\}", "{}", m.group(3).split("?")[0]).rstrip("/"))

    def walk(routes, prefix: str = ""):
        for r in routes:
            if hasattr(r, "path"):
                yield prefix + r.path
            elif hasattr(r, "original_router"):  # an included router, with its prefix
                yield from walk(r.original_router.routes, prefix + r.include_context.prefix)

    served = {re.sub(r"\{[^}]+\}", "{}", p).rstrip("/") for p in walk(_app_routes())}
    served -= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # FastAPI's own
    undocumented = sorted(served - documented)
    assert not undocumented, f"routes docs/api.md and docs/client.md do not name: {undocumented}"


def test_documented_defaults_are_the_real_ones() -> None:
    """The default column of docs/configuration.md is what a node really starts with."""
    from typing import Annotated

    from pydantic import TypeAdapter

    from edgestore.config import Settings

    doc = (ROOT / "docs" / "configuration.md").read_text()
    wrong = []
    for name, shown in re.findall(r"^\| `([a-z_0-9]+)` \| ([^|]*) \|", doc, flags=re.M):
        field = Settings.model_fields[name]
        real = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        shown = shown.strip()
        if shown == "none":
            ok = real in (None, [], {})
        elif re.fullmatch(r"`[^`]*`", shown):
            text = shown.strip("`")
            if isinstance(real, bool):
                ok = text == str(real).lower()
            elif isinstance(real, Path):
                ok = Path(text) == real
            elif isinstance(real, int | float):  # as the setting reads it: `8MiB`, `7d`
                read = TypeAdapter(Annotated[(field.annotation, *field.metadata)])
                ok = read.validate_python(text) == real
            else:
                ok = text == real
        else:  # prose: "SQLite at HOME/edgestore.db", derived at run time
            ok = real is None
        if not ok:
            wrong.append(f"{name}: documented {shown}, really {real!r}")
    assert not wrong, wrong


def test_documented_metrics_exist() -> None:
    from prometheus_client import generate_latest

    from edgestore.api.metrics import Metrics

    metrics = Metrics()
    metrics.chunks.labels("new")  # labelled series appear once touched
    metrics.upload_bodies.labels("direct")
    metrics.requests.labels("GET", "200")
    exposed = set(re.findall(r"^(edgestore_\w+)", generate_latest(metrics.registry).decode(), re.M))
    exposed |= {family.name for family in metrics.registry.collect()}  # a histogram's name
    documented = set()
    for doc in DOCS:
        documented |= set(re.findall(r"`(edgestore_[a-z_]+)", doc.read_text()))
    assert documented, "no metric found in the docs: has the notation changed?"
    assert not documented - exposed, f"documented, not exposed: {sorted(documented - exposed)}"


def test_documented_command_lines_parse() -> None:
    """Every `edgestore …` line of a shell example names a real command and real options."""
    import shlex

    import typer

    from edgestore.cli.main import app

    root = typer.main.get_command(app)
    problems = []
    for doc in DOCS:
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;", line.split(" #")[0]):
                    words = shlex.split(part.strip().replace("[", " ").replace("]", " "))
                    if not words or words[0] != "edgestore":
                        continue
                    cmd, known = root, {o for p in root.params for o in p.opts}
                    for word in words[1:]:
                        sub = getattr(cmd, "commands", {}).get(word)
                        if sub is not None:
                            cmd = sub
                            known |= {o for p in cmd.params for o in p.opts}
                        elif word.startswith("-"):
                            for flag in word.split("|"):
                                if flag.split("=")[0] not in known:
                                    problems.append(f"{doc.name}: {part.strip()!r}: {flag}")
                    if cmd is root:
                        problems.append(f"{doc.name}: {part.strip()!r}: no such command")
    assert not problems, problems


def test_exit_code_table_is_the_cli_s() -> None:
    """docs/operations.md's table lists every code cli/main.py maps an error to, and no other."""
    from edgestore.cli.main import EXIT_CODES

    doc = (ROOT / "docs" / "operations.md").read_text()
    table = doc.split("## Exit codes of the command line", 1)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    # 0 success, 1 anything unmapped, 2 usage (click), 10 scrub/repair found damage
    assert documented == {code for _, code in EXIT_CODES} | {0, 1, 2, 10}


def _cli_commands():
    """Every command path of the CLI (`put`, `keys create`, …) with its click command."""
    import typer

    from edgestore.cli.main import app

    def walk(cmd, path: str):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield f"{path} {name}".strip(), sub
            yield from walk(sub, f"{path} {name}")

    return list(walk(typer.main.get_command(app), ""))


def test_every_cli_command_is_documented() -> None:
    """A command (or sub-command) no doc names is one a user only finds by accident."""
    text = "\n".join(doc.read_text() for doc in DOCS)
    missing = [
        path
        for path, cmd in _cli_commands()
        if not getattr(cmd, "commands", None)  # a group (`keys`) is named by its commands
        and not re.search(rf"edgestore {re.escape(path)}\b", text)
    ]
    assert not missing, f"CLI commands no doc names as `edgestore COMMAND`: {missing}"


def test_every_metric_is_documented() -> None:
    """The reverse of test_documented_metrics_exist: each family /metrics exposes is named."""
    from edgestore.api.metrics import Metrics

    text = "\n".join(doc.read_text() for doc in DOCS)
    documented = set(re.findall(r"`(edgestore_[a-z_]+)", text))
    families = {family.name for family in Metrics().registry.collect()}
    missing = sorted(f for f in families if not {f, f + "_total"} & documented)
    assert not missing, f"metrics docs/operations.md does not name: {missing}"


def _error_statuses() -> dict[str, int]:
    """Each `error` code a response can carry, with its HTTP status (api/errors.py)."""
    from edgestore import errors as e
    from edgestore.api.errors import STATUS

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    codes = {
        cls.code: next((s for c, s in STATUS if issubclass(cls, c)), 500)
        for cls in subclasses(e.EdgestoreError)
    }
    # The app's own answers: unknown route or method, a bad query or body, a bug.
    codes |= {"not_found": 404, "method_not_allowed": 405, "invalid_request": 400}
    return codes | {"internal_error": 500}


def test_documented_error_codes_are_the_real_ones() -> None:
    """`503 `server_busy``, `412 precondition_failed`, `| 403 | `out_of_scope` |`: the code
    exists and is answered with that status."""
    codes = _error_statuses()
    pair = re.compile(r"\b([1-5]\d\d)\*{0,2}\s\(?`([a-z_]+)`|`([1-5]\d\d) ([a-z_]+)`")
    row = re.compile(r"^\| ([1-5]\d\d) \| ((?:`[a-z_]+`(?:, )?)+) \|", re.M)
    wrong, seen = [], 0
    for doc in DOCS:
        text = doc.read_text()
        found = [(m[1] or m[3], m[2] or m[4]) for m in pair.finditer(text)]
        found += [(s, c) for s, cs in row.findall(text) for c in re.findall(r"`([a-z_]+)`", cs)]
        for status, code in found:
            seen += 1
            if codes.get(code) != int(status):
                real = codes.get(code, "no such code")
                wrong.append(f"{doc.name}: {status} {code} (really {real})")
    assert seen, "no status and error code found in the docs: has the notation changed?"
    assert not wrong, wrong


def test_documented_environment_variables_exist() -> None:
    """Every `EDGESTORE_*` a doc names is read by something (a setting, `--config`, a client
    command's option, or the test suite), and every variable a client command reads is
    documented."""
    from edgestore.config import ENV_PREFIX, READ_ELSEWHERE, TEST_SUITE_PREFIXES

    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    cli = {
        var
        for _, cmd in _cli_commands()
        for param in cmd.params
        for var in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }
    suite = {  # the test suite's own, which load_settings does not warn about either
        var
        for path in (ROOT / "tests").rglob("*.py")
        for var in re.findall(r"\bEDGESTORE_(?:REQUIRE|TEST)_[A-Z_]+", path.read_text())
    }
    assert all(v.removeprefix(ENV_PREFIX).startswith(TEST_SUITE_PREFIXES) for v in suite)
    real = settings | cli | suite | {ENV_PREFIX + "CONFIG"}
    text = "\n".join(doc.read_text() for doc in DOCS)
    documented = set(re.findall(r"\b(EDGESTORE_[A-Z0-9_]+)", text))
    assert not documented - real, f"documented, read by nothing: {sorted(documented - real)}"
    undocumented = (cli | {ENV_PREFIX + "CONFIG"}) - documented
    assert not undocumented, f"read, documented nowhere: {sorted(undocumented)}"
    # The variables no setting reads are the ones load_settings does not warn about.
    assert {ENV_PREFIX + name for name in READ_ELSEWHERE} == cli | {ENV_PREFIX + "CONFIG"}


# Examples the docs give as refused (the text says why), refused they must stay.
REFUSED_EXAMPLES = {'upload_expiry_seconds = "30s"'}


def test_documented_configuration_examples_load(monkeypatch, tmp_path) -> None:
    """Each TOML block of the docs, each `name = value` and `EDGESTORE_NAME=value` whose name
    is a setting, is accepted as written (a unit, a list, a quota's table); the examples
    shown as refused are refused."""
    from edgestore.config import ENV_PREFIX, load_settings
    from edgestore.errors import ConfigError

    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    examples: list[tuple[str, str, str]] = []  # (doc, "file" or "variable", text)
    for doc in DOCS:
        text = doc.read_text()
        examples += [(doc.name, "file", b) for b in re.findall(r"```toml\n(.*?)```", text, re.S)]
        for line in re.findall(r"`([a-z_0-9]+ = [^`\n]+)`", text):
            if line.split(" = ")[0] in Settings.model_fields:
                examples.append((doc.name, "file", line))
        for var in re.findall(r"`(" + ENV_PREFIX + r"[A-Z_0-9]+=[^`…]*)`", text):
            if var.split("=")[0].removeprefix(ENV_PREFIX).lower() in Settings.model_fields:
                examples.append((doc.name, "variable", var))
    assert len(examples) > 10, "few configuration examples found: has the notation changed?"
    wrong = []
    for doc, source, text in examples:
        with monkeypatch.context() as env:
            path = None
            if source == "file":
                path = tmp_path / "edgestore.toml"
                path.write_text(text + "\n")
            else:
                env.setenv(*text.split("=", 1))
            try:
                load_settings(config_file=path)
                refused = None
            except ConfigError as exc:
                refused = str(exc)
        if (refused is not None) != (text in REFUSED_EXAMPLES):
            wrong.append(f"{doc}: {text!r}: {refused or 'accepted'}")
    assert not wrong, wrong


def test_documented_refusal_message_is_the_real_one(monkeypatch) -> None:
    """docs/configuration.md quotes what an unreadable duration is refused with: its hint
    once listed `500ms` for a setting that refuses it."""
    from edgestore.config import ENV_PREFIX, load_settings
    from edgestore.errors import ConfigError

    text = " ".join((ROOT / "docs" / "configuration.md").read_text().split())
    quoted = re.search(
        r"`(invalid configuration: ([a-z_]+) \(([A-Z_]+)\): [^`]*got '([^']*)'[^`]*)`", text
    )
    assert quoted, "no quoted refusal in docs/configuration.md: has the notation changed?"
    message, key, var, value = quoted.groups()
    assert var == ENV_PREFIX + key.upper()
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == message
