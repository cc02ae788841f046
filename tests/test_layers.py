"""The floors of the layout (docs/architecture.md#the-floors): who may import whom, no module
deciding anything by the name of a strategy or a task outside the registry, and a repository that
stands alone (docs/architecture.md#conventions-and-where-they-come-from, convention 12)."""

import ast
import re
import subprocess
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


def name_decisions(source: str) -> list[int]:
    """Lines of `source` that decide by a strategy's or task's name: a comparison (==, !=, in, not in,
    is) or a `match` case whose operand is such a name, a tuple/list/set literal holding one, or a
    variable or attribute bound to a collection of names only (`WEIGHTED_MEAN = ("fedavg", "fedu")`
    ... `if name in WEIGHTED_MEAN`). A collection that merely includes a name among other words (the
    config groups, "ssl" among them) is not one; dicts are registries, not decisions."""
    tree = ast.parse(source)

    def literal(node, only: bool = False) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in NAMES
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("set", "frozenset", "tuple", "list"):
            return len(node.args) == 1 and literal(node.args[0], only)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
            return (all if only else any)(literal(e) for e in node.elts)
        return False

    held = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and literal(n.value, only=True) \
                and not isinstance(n.value, ast.Constant):
            for target in n.targets if isinstance(n, ast.Assign) else [n.target]:
                held.add(getattr(target, "id", getattr(target, "attr", None)))

    def names(node) -> bool:
        return literal(node) or getattr(node, "id", getattr(node, "attr", None)) in held - {None}

    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Compare) and any(names(o) for o in (n.left, *n.comparators)):
            found.append(n.lineno)
        elif isinstance(n, ast.match_case) and any(isinstance(p, ast.MatchValue) and names(p.value)
                                                   for p in ast.walk(n.pattern)):
            found.append(n.pattern.lineno)
    return sorted(found)


@pytest.mark.parametrize("source, lines", [
    ('if cfg["strategy"]["name"] == "fedu":\n    pass', [1]),
    ('ok = "fedavg" != name', [1]),
    ('ok = name in ("fedavg", "fedbyol")', [1]),
    ('ok = name not in {"other", "sdr"}', [1]),
    ('ok = name in ["standalone"]', [1]),
    ('ok = name in frozenset(("fedpav", "fedema"))', [1]),
    ('MEAN = ("fedavg", "fedbyol", "fedu")\n\ndef f(s):\n    return s["strategy"] in MEAN', [4]),
    ('class A:\n    MEAN = ["fedu"]\n\n    def f(self, s):\n        return s in self.MEAN', [5]),
    ('match task:\n    case "reid":\n        pass', [2]),
    ('GROUPS = ("strategy", "dataset", "ssl")\nok = key in GROUPS', []),
    ('ok = cfg["strategy"]["aggregates_by"] == "weighted_mean"', []),
    ('ROWS = {"ssl": 1, "reid": 2}\nrow = ROWS["ssl"]', []),
])
def test_name_decisions_are_found(source, lines):
    assert name_decisions(source) == lines


def test_no_decision_by_a_strategy_or_task_name_outside_the_registry_and_the_strategies():
    found = [f"{p.relative_to(ROOT)}:{i}" for package in ("app", "clients", "tasks", "protocol", "ops")
             for p in modules(package) if p.name != "registry.py" for i in name_decisions(p.read_text())]
    assert not found



def config_reads(source: str) -> list[int]:
    """Lines of `source` that read a run's config dict: `cfg[...]`, `cfg.get(...)`, `r.cfg...`."""
    def is_cfg(node) -> bool:
        return getattr(node, "id", None) == "cfg" or getattr(node, "attr", None) == "cfg"

    found = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Subscript) and is_cfg(n.value):
            found.append(n.lineno)
        elif isinstance(n, ast.Attribute) and is_cfg(n.value) and n.attr == "get":
            found.append(n.lineno)
    return sorted(found)


def test_every_task_reads_the_config_in_its_settings_module_only():
    from app.registry import TASKS

    assert set(TASKS) == {"ssl", "reid", "sdr", "detection"}
    assert config_reads('x = cfg["seed"]\ny = r.cfg.get("device")\nz = settings.sites') == [1, 2]
    for name, row in TASKS.items():
        package = ROOT / "tasks" / name
        home = ROOT / (row.settings.__module__.replace(".", "/") + ".py")
        found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted(package.rglob("*.py")) if p != home
                 for i in config_reads(p.read_text())]
        assert not found, f"task {name} reads the config outside {home.relative_to(ROOT)}: {found}"

# Documents outside the repository that nothing in it may cite (a clone has none of them); the data
# folder beside the repository (../shared/data) is where the datasets live, and may be named.
OUTSIDE = re.compile(r"SPEC\.md|SPEC \u00a7|DESIGN\.md|\.\./shared(?!/data\b)|shared/data/[R]EADME")


def test_no_tracked_file_cites_a_document_outside_the_repository():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no list of tracked files")
    found = []
    for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binaries
        found += [f"{name}:{i}: {line.strip()[:100]}" for i, line in enumerate(text.splitlines(), 1)
                  if OUTSIDE.search(line)]
    assert not found, "cite docs/algorithms.md or docs/architecture.md instead:\n" + "\n".join(found)


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
