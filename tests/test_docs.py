"""The documentation stays true to the code: warnings, CLI options and examples."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
SOURCES = sorted((ROOT / "pinbackend").rglob("*.py"))


def slug(heading: str) -> str:
    """The anchor MkDocs' toc extension gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text)


def troubleshooting_anchors() -> set[str]:
    text = (DOCS / "troubleshooting.md").read_text()
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("## ")}


def balanced_call(source: str, open_paren: int) -> str:
    """The text of a call from its opening parenthesis to the matching closing one."""
    depth = 0
    for index in range(open_paren, len(source)):
        depth += {"(": 1, ")": -1}.get(source[index], 0)
        if depth == 0:
            return source[open_paren : index + 1]
    raise AssertionError("unbalanced call")


def test_every_warning_links_to_an_existing_troubleshooting_entry():
    anchors = troubleshooting_anchors()
    warn_sites = 0
    for path in SOURCES:
        source = path.read_text()
        for match in re.finditer(r"(?<![\w.])warnings\.warn\(|logger\.(?:warning|error)\(", source):
            warn_sites += 1
            call = balanced_call(source, match.end() - 1)
            if re.fullmatch(r"\(\s*\w+\s*\)", call):  # a message built just above
                call = source[max(0, match.start() - 600) : match.start()]
            assert "troubleshooting(" in call, f"{path.name}: a warning without a docs link"
        # Warnings printed by the command line, not through the warnings module.
        for match in re.finditer(r"print\(", source):
            call = balanced_call(source, match.end() - 1)
            if "warning:" in call and "{message}" not in call:
                warn_sites += 1
                assert "troubleshooting(" in call, f"{path.name}: a printed warning without a link"
        for anchor in re.findall(r"troubleshooting\(['\"]([\w-]+)['\"]\)", source):
            assert anchor in anchors, f"{path.name} links to a missing entry #{anchor}"
    assert warn_sites >= 3


def topics_named_in_the_code() -> dict[str, str]:
    """Every troubleshooting topic a message of the package names, with a file naming it.

    Three ways name one: ``troubleshooting("topic")`` in a message, a warning category's
    ``anchor = "topic"`` and ``warn(category, message, "topic")`` (notices.warn's third
    argument).
    """
    named = {}
    for path in SOURCES:
        source = path.read_text()
        found = re.findall(r"troubleshooting\(\s*['\"]([\w-]+)['\"]\s*\)", source)
        found += re.findall(r"^\s+anchor = ['\"]([\w-]+)['\"]$", source, flags=re.MULTILINE)
        for match in re.finditer(r"(?<!warnings\.)(?<!def )\bwarn\(", source):
            call = balanced_call(source, match.end() - 1)
            found += re.findall(r",\s*['\"]([a-z0-9-]+)['\"],?\s*\)$", call)
        for topic in found:
            named.setdefault(topic, path.name)
    return named


def test_every_topic_the_code_names_is_an_entry_that_explain_prints(monkeypatch, capsys):
    import warnings

    from pinbackend import _docs
    from pinbackend.cli import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() sets its own
    entries = _docs.entries()
    assert list(entries) == [slug(h) for h in re.findall(r"^## (.+)$", _page(), re.MULTILINE)]
    named = topics_named_in_the_code()
    assert {"workers-share-core-sets", "pool-resized", "dask-workers-closed"} <= set(named)
    assert len(named) >= 15
    for topic, where in sorted(named.items()):
        assert topic in entries, f"{where} names a missing troubleshooting entry #{topic}"
        assert main(["explain", topic]) == 0
        title = entries[topic].title
        assert capsys.readouterr().out.startswith(f"{title}\n{'=' * len(title)}\n\n"), topic


def _page() -> str:
    return (DOCS / "troubleshooting.md").read_text()


def test_every_warning_category_with_an_anchor_has_an_entry():
    from pinbackend.host.notices import PinbackendWarning
    from pinbackend.runner._warnings import ForkAfterOpenMPWarning

    categories = PinbackendWarning.__subclasses__()
    assert ForkAfterOpenMPWarning in categories and len(categories) >= 4
    for category in categories:
        assert category.anchor in troubleshooting_anchors(), category.__name__


def readme_python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(readme_python_snippets())))
def test_readme_python_snippets_run_as_written(index, tmp_path):
    snippet = readme_python_snippets()[index]
    result = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def subcommands() -> list[str]:
    from pinbackend.cli import SUBCOMMANDS

    return sorted(SUBCOMMANDS)


@pytest.mark.parametrize("command", subcommands())
def test_cli_help_and_docs_name_the_same_options(command):
    help_text = subprocess.run(
        [sys.executable, "-m", "pinbackend", command, "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options = set(re.findall(r"(--[a-z][a-z-]+)", help_text)) - {"--help"}
    docs = (DOCS / "cli.md").read_text()
    section = docs.split(f"## `{command}`", 1)
    assert len(section) == 2, f"docs/cli.md has no section for {command}"
    body = section[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"(--[a-z][a-z-]+)", body))
    # Old spellings kept for one release are hidden from --help; the docs may name them.
    from pinbackend.host._declare import declared
    from pinbackend.host.options import PinOptions

    hidden = {alias.flag for o in declared(PinOptions) for alias in o.aliases_at(command)}
    assert options == documented - hidden, f"help {sorted(options)} vs docs {sorted(documented)}"


def test_every_example_is_referenced_from_the_docs():
    docs = " ".join(p.read_text() for p in DOCS.rglob("*.md"))
    for example in (ROOT / "examples").glob("*.py"):
        assert f"examples/{example.name}" in docs, f"{example.name} is not in the docs"


def test_readme_quick_start_is_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, re.S)[0].strip().splitlines()
    assert len(commands) == 2, "the Quick start has exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines(), ".ci/run must run the README's test command"
    assert (DOCS / "index.md").read_text().count(commands[0]) == 1


def options_of(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+|-[a-zA-Z](?= ))", text))


def test_runner_help_and_docs_name_the_same_options():
    help_text = subprocess.run(
        [sys.executable, "-m", "pinbackend", "--help"], capture_output=True, text=True, check=True
    ).stdout
    runner_help = help_text.split("runner options:", 1)[1]
    table = (DOCS / "runner.md").read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    assert options_of(runner_help) - {"--help"} == options_of(table)
    top_level = help_text.split("subcommands:", 1)[0]
    assert "--version" in top_level
    assert "--version" in (DOCS / "cli.md").read_text()
