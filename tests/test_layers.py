"""The floors of the layout (DESIGN.md "Layout", docs/architecture.md): who may import whom, and
no module deciding anything by the name of a strategy or a task outside the registry."""

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("app", "clients", "ops", "protocol", "strategies", "tasks")
NAMES = ("fedu", "fedbyol", "fedema", "fedavg", "centralised", "standalone", "fedpav", "sdr", "ssl", "reid")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level packages a module imports (anywhere in it, functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("protocol", {"torch", "flwr", "strategies", "clients", "tasks", "app", "ops"}),
    ("strategies", {"torch", "clients", "tasks", "app", "ops"}),
    ("tasks", {"flwr", "strategies", "clients", "app", "ops"}),
    ("clients", {"strategies", "app", "ops"}),
    ("app", {"ops"}),
])
def test_arrows_only_go_down(package, forbidden):
    wrong = {str(p.relative_to(ROOT)): sorted(imported(p) & forbidden) for p in modules(package)}
    assert not {k: v for k, v in wrong.items() if v}


def test_no_decision_by_a_strategy_or_task_name_outside_the_registry_and_the_strategies():
    pattern = re.compile(r"""(==|!=|\bin\b)\s*\(?\s*["'](%s)["']""" % "|".join(NAMES))
    found = [f"{p.relative_to(ROOT)}:{i}" for package in ("app", "clients", "tasks", "protocol", "ops")
             for p in modules(package) if p.name != "registry.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found


def test_every_module_says_its_job_in_its_first_line_and_stays_small():
    for package in PACKAGES:
        for p in modules(package):
            doc = ast.get_docstring(ast.parse(p.read_text()))
            assert doc and doc.strip(), f"{p.relative_to(ROOT)}: no docstring"
            assert len(p.read_text().splitlines()) <= 320, f"{p.relative_to(ROOT)} is past about 300 lines"


def test_every_strategy_is_built_from_its_target():
    from omegaconf import OmegaConf

    for path in sorted((ROOT / "conf" / "strategy").glob("*.yaml")):
        node = OmegaConf.load(path)
        assert node.get("_target_", "").startswith("strategies."), path.name
