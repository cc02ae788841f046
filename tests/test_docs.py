"""The documentation holds: README.md and docs/*.md link only to files and headings that exist, and
every `python main.py ...` (and `python -m ops.local_federation ...`) command they show composes with
conf/, so that a typo in a documented key or choice fails here. Fast (no Ray, no training)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_YET_WRITTEN = {ROOT / "docs" / "algorithms.md"}  # written alongside; links into it are checked once it exists

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")
# a command: optional VAR=value prefixes, then python (or .venv/bin/python) main.py / -m ops.local_federation
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?python3?\s+(main\.py|-m\s+ops\.local_federation)(?=\s|$)")
INLINE_COMMAND = re.compile(r"`((?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?python3?\s+(?:main\.py|-m\s+ops\.local_federation)(?=[\s`])[^`]*)`")


def code_lines(text: str) -> list[str]:
    """The lines inside code blocks (fenced, or indented by 4 after a blank line), continuations
    (`\\` at the end) joined and `&&` chains split into their commands."""
    block, fenced, in_indented, previous_blank = [], False, False, True
    for line in text.splitlines():
        if FENCE.match(line):
            fenced, previous_blank = not fenced, False
            continue
        if fenced:
            block.append(line)
        elif line.startswith("    ") and (in_indented or previous_blank):
            in_indented = True
            block.append(line)
        elif line.strip():
            in_indented = False
        previous_blank = not line.strip()
    joined, current = [], ""
    for line in block:
        part = line.strip()
        if part.endswith("\\"):
            current += part[:-1] + " "
            continue
        joined.extend(c.strip() for c in (current + part).split("&&"))
        current = ""
    return joined


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, `_`, `-` and
    spaces kept), each space a `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    """Every link target in the page's prose (code blocks and code spans left out)."""
    text = page.read_text(encoding="utf-8")
    prose = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            prose.append(line)
    return LINK.findall(INLINE_CODE.sub("``", "\n".join(prose)))


def test_every_relative_link_points_to_an_existing_file_and_heading():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if dest in NOT_YET_WRITTEN and not dest.exists():
                continue
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading '#{anchor}' in {dest.relative_to(ROOT)})")
    assert not broken, "\n".join(broken)


def test_the_pages_named_by_others_exist():
    for name in ("methods", "clustering", "reid", "sdr", "detection", "deployment", "runs_that_survive", "speed",
                 "results", "configuration", "using_the_model", "architecture"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


def documented_commands() -> list[tuple[str, str]]:
    """(page, command line) of every main.py / ops.local_federation command the pages show: in code
    blocks, and in code spans of the prose."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for line in code_lines(text):
            if COMMAND.match(line):
                found.append((page.name, line))
        prose = "\n".join(l for l in text.splitlines() if not l.startswith("    "))
        for span in INLINE_COMMAND.findall(prose):
            found.append((page.name, " ".join(span.split())))
    return found


PLACEHOLDER = re.compile(r"<[^<>]*>")


def arguments(command: str) -> tuple[str, list[str], bool]:
    """(program, its arguments, whether the line is concrete) of a documented command line:
    placeholders (`<run>`) become a word, optional `[key=value]` arguments are unwrapped; a line
    with either, or with `$VAR`, is not concrete (its values are only composed, not type-checked)."""
    concrete = not PLACEHOLDER.search(command) and "$" not in command
    words = shlex.split(PLACEHOLDER.sub("placeholder", command), comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    words.pop(0)  # python
    program = words.pop(0)
    if program == "-m":
        program = words.pop(0)
    args = []
    for w in words:
        if re.fullmatch(r"\[[\w.]+=[^\]]*\]", w):  # an optional argument of the usage notation
            concrete = False
            w = w[1:-1]
        args.append(w)
    return program, args, concrete


def test_the_documented_commands_are_found():
    commands = [c for _, c in documented_commands()]
    assert len(commands) >= 30, commands
    readme = [c for page, c in documented_commands() if page == "README.md"]
    assert any("experiment=cpu_learn" in c for c in readme), readme  # the tour
    assert any("ops.local_federation" in c for c in readme), readme


def test_every_documented_command_composes_with_the_config():
    from app.commands import sweep
    from app.config import ConfigError, compose, to_plain
    from app.registry import task_of
    from app.schema import validate

    failures = []
    for page, command in documented_commands():
        if "..." in command:  # elided arguments: `python main.py ...`
            continue
        program, args, concrete = arguments(command)
        flags = [a for a in args if a.startswith("-")]
        overrides = [a for a in args if not a.startswith("-")]
        if program == "ops.local_federation":
            from ops.local_federation import parse

            parsed = parse(args)
            flags, overrides = [], [*parsed.overrides, f"num_clients={parsed.nodes}"]
        elif "--help" in flags or "-h" in flags:
            continue
        from app.config import GROUPS

        overrides = [o for o in overrides if not (o.split("=", 1)[0] in GROUPS and o.endswith("=placeholder"))]
        try:
            for job in sweep(overrides) if ("-m" in flags or "--multirun" in flags) else [overrides]:
                cfg = to_plain(compose(job))
                if concrete and "fraction_fit=abc" not in job:  # the documented example of a refused value
                    validate(cfg)
                    task_of(cfg)
        except ConfigError as err:
            failures.append(f"{page}: {command}\n    {err}")
    assert not failures, "\n".join(failures)


def test_the_documented_refusal_reads_as_documented():
    """configuration.md: `python main.py fraction_fit=abc` prints
    `error: fraction_fit must be a number in (0, 1], got 'abc'`."""
    from app.config import ConfigError, compose, to_plain
    from app.schema import validate

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    documented = "`error: fraction_fit must be a number in (0, 1], got 'abc'`"
    assert "`python main.py fraction_fit=abc`" in page and documented in page
    with pytest.raises(ConfigError) as err:
        validate(to_plain(compose(["fraction_fit=abc"])))
    assert f"`error: {err.value}`" == documented


def test_the_tours_config_check_runs(capsys):
    """The README tour's `--cfg` command, as written (main.py's own entry, in this process: no Ray,
    nothing trained): it prints the composed config of the preset it names."""
    import main

    line = next(c for page, c in documented_commands() if page == "README.md" and " --cfg " in c)
    program, args, concrete = arguments(line)
    assert program == "main.py" and concrete, line
    main.main(args)
    printed = capsys.readouterr().out
    preset = next(a.split("=", 1)[1] for a in args if a.startswith("experiment="))
    assert f"preset: {preset}" in printed and "num_rounds:" in printed, printed[-2000:]
