"""MkDocs hook: the reference pages that describe code are generated from it at build time, so they cannot go stale.

- `reference/cli.md` from the typer application (`hhvaem.cli.app`, through click's command objects),
- `reference/openapi.md` (and `reference/openapi.json`) from the FastAPI application's OpenAPI document,
- `reference/configuration.md` from the settings class (`configuration_table`).

A command, route or setting that no longer imports breaks `mkdocs build --strict` here, as it should.
"""

from __future__ import annotations

import json
import re
import tempfile

from mkdocs.structure.files import File

_HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def on_files(files, config):
    for path, text in (
        ("reference/cli.md", cli_reference()),
        ("reference/configuration.md", configuration_reference()),
        *openapi_reference(),
    ):
        files.append(File.generated(config, path, content=text))
    return files


# --- the command line -------------------------------------------------------------------------------------------


def cli_reference() -> str:
    import typer

    from hhvaem.cli import app

    root = typer.main.get_command(app)
    lines = [
        "# Command line",
        "",
        "Generated from the `hhvaem` command's own definitions (`hhvaem/cli.py`); `hhvaem COMMAND --help` prints",
        "the same on a terminal.",
        "",
    ]
    ctx = root.context_class(root, info_name="hhvaem")
    lines += _commands(root, ctx, "hhvaem")
    return "\n".join(lines) + "\n"


def _commands(group, ctx, prefix: str) -> list[str]:
    lines: list[str] = []
    for name, command in group.commands.items():  # registration order, as `--help` lists them
        if command.hidden:
            continue
        sub = command.context_class(command, info_name=name, parent=ctx)
        if hasattr(command, "commands"):  # a group (typer carries its own copy of click: no isinstance)
            lines += _commands(command, sub, f"{prefix} {name}")
            continue
        lines += [f"## `{prefix} {name}`", "", *_usage(command, sub, f"{prefix} {name}"), ""]
        lines += [_plain(command.help or ""), ""]
        lines += _parameters(command)
    return lines


def _usage(command, ctx, full_name: str) -> list[str]:
    pieces = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(command.collect_usage_pieces(ctx)))
    return ["```text", f"{full_name} {pieces}".rstrip(), "```"]


def _parameters(command) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        if param.param_type_name == "argument":
            name = f"`{param.metavar or param.name.upper()}`"
        else:
            name = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
        default = param.default
        if param.required:
            shown = "required"
        elif default is None or default == () or default is False or callable(default):
            shown = ""
        else:
            shown = f"`{default}`"
        help_text = _plain(getattr(param, "help", None) or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {name} | {shown} | {help_text} |")
    if not rows:
        return []
    return ["| parameter | default | what |", "| --- | --- | --- |", *rows, ""]


def _plain(text: str) -> str:
    """Typer help may carry rich markup ([bold]...) and click's \\b paragraph markers; Markdown wants neither."""
    return text.replace("\b\n", "").replace("\b", "").strip()


# --- the HTTP API -----------------------------------------------------------------------------------------------


def openapi_reference() -> list[tuple[str, str]]:
    from hhvaem.app.core.config import Settings
    from hhvaem.app.main import create_app

    with tempfile.TemporaryDirectory() as data_dir:  # building the application reads settings, starts nothing
        document = create_app(Settings(data_dir=data_dir)).openapi()
    lines = [
        "# HTTP endpoints",
        "",
        f"Generated from the service's OpenAPI document ({document['info']['title']} "
        f"{document['info']['version']}); the running service serves the same document at `/openapi.json` and",
        "browsable at `/docs`. The whole document: [openapi.json](openapi.json). How the API behaves (errors,",
        "limits, state, batching) is in [HTTP API](http-api.md).",
        "",
    ]
    for path, operations in document["paths"].items():
        for method in _HTTP_METHODS:
            if method in operations:
                lines += _operation(method, path, operations[method])
    lines += ["# Bodies", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        lines += _schema(name, schema)
    return [
        ("reference/openapi.md", "\n".join(lines) + "\n"),
        ("reference/openapi.json", json.dumps(document, indent=1) + "\n"),
    ]


def _operation(method: str, path: str, op: dict) -> list[str]:
    lines = [f"## `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [f"**{op['summary']}**", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | required | what |", "| --- | --- | --- | --- |"]
        for p in params:
            what = (p.get("description") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{p['name']}` | {p['in']} | {'yes' if p.get('required') else 'no'} | {what} |")
        lines.append("")
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        lines += [f"Body ({media}): {_schema_name(content.get('schema', {}))}", ""]
    responses = op.get("responses", {})
    if responses:
        lines += ["| status | meaning |", "| --- | --- |"]
        for status, response in responses.items():
            schema = next(iter(response.get("content", {}).values()), {}).get("schema", {})
            name = _schema_name(schema)
            detail = (response.get("description") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {status} | {detail}{' (' + name + ')' if name else ''} |")
        lines.append("")
    return lines


def _schema_name(schema: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[`{name}`](#{name.lower()})"
    if schema.get("type") == "array" and "$ref" in schema.get("items", {}):
        return f"list of {_schema_name(schema['items'])}"
    return ""


def _schema(name: str, schema: dict) -> list[str]:
    lines = [f"## {name}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", []))
        lines += ["| field | type | required | what |", "| --- | --- | --- | --- |"]
        for field, spec in properties.items():
            what = (spec.get("description") or "").replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{field}` | {_type(spec)} | {'yes' if field in required else 'no'} | {what} |")
        lines.append("")
    elif schema.get("enum"):
        lines += ["One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
    return lines


def _type(spec: dict) -> str:
    if "$ref" in spec or (spec.get("type") == "array" and "$ref" in spec.get("items", {})):
        return _schema_name(spec)
    if "anyOf" in spec:
        return " or ".join(t for t in (_type(s) for s in spec["anyOf"]) if t)
    if spec.get("type") == "array":
        return f"list of {_type(spec.get('items', {})) or 'any'}"
    if spec.get("type") == "object" and "additionalProperties" in spec:
        inner = spec["additionalProperties"]
        return f"map of {_type(inner) if isinstance(inner, dict) else 'any'}"
    return spec.get("type", "")


# --- configuration ----------------------------------------------------------------------------------------------


def configuration_reference() -> str:
    from hhvaem.app.core.config import configuration_table

    return (
        "# Configuration\n\n"
        "Environment variables (also read from a `.env` file in the working directory). Generated from the\n"
        "settings class (`app/core/config.py: Settings`), whose field descriptions are the text below.\n\n"
        + configuration_table()
    )
