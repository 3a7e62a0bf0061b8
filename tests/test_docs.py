"""The README stays in step with the code: its settings table with ``Settings``, its layout block with the tree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from service.config import ENV_PREFIX, Settings
from service.model import resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def shown_default(name: str) -> str:
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    if isinstance(default, list):
        return ",".join(default) if default else "(none)"
    return str(default)


def test_the_settings_table_lists_every_setting_with_its_flag_variable_and_default() -> None:
    rows = re.findall(r"^\| `--([a-z0-9-]+)` \| `([A-Z0-9_]+)` \| `?([^|`]*?)`? \|", section("Settings"), re.M)
    table = {flag.replace("-", "_"): (env, default) for flag, env, default in rows}
    assert set(table) == set(Settings.model_fields), "README settings table and service.config.Settings differ"
    for name, (env, default) in table.items():
        assert env == ENV_PREFIX + name.upper(), name
        assert default == shown_default(name), f"{name}: README says {default!r}, the code {shown_default(name)!r}"


def layout_block() -> str:
    match = re.search(r"^```\n(training/.*?)^```", README, re.M | re.S)
    assert match, "the README's layout block (the first code block, starting with training/) is gone"
    return match.group(1)


def test_the_layout_block_names_every_top_level_folder_and_only_existing_ones() -> None:
    block = layout_block()
    named = set()
    for line in block.splitlines():  # "folder/  what it holds" or "Dockerfile, docker/, k8s/    how it runs"
        items = line.split("    ")[0].split(", ") if line.split()[0].endswith(",") else [line.split()[0]]
        named |= {item.rstrip("/") for item in items if item.endswith("/")}
    for folder in named:
        assert (ROOT / folder).is_dir(), f"the README's layout block names {folder}/, which does not exist"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    assert folders <= named, f"top-level folders missing from the README's layout block: {sorted(folders - named)}"


def test_the_layout_block_names_the_shipped_model_version() -> None:
    version = resolve_model_dir(ROOT / "models" / "fer-cnn-48").name
    assert f"(fer-cnn-48, version {version})" in layout_block()


def test_the_domain_never_imports_the_web_layer_or_the_app() -> None:
    """docs/architecture.md: the domain modules of service/ import neither service.web nor service.app."""
    import ast

    above = ("service.web", "service.app", "service.server", "service.__main__", "fastapi", "starlette")
    for path in sorted((ROOT / "service").glob("*.py")):
        if path.stem in ("app", "server", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(above), f"service/{path.name} imports {name}, a layer above the domain"
