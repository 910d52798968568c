"""`python -m pinbackend explain`: every message's troubleshooting entry, read offline.

The entries come from the installed package (the wheel carries docs/troubleshooting.md), so a
pip user reads them without the docs site; these tests run the command as a user does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest
from _helpers import PYTHON, pinbackend_cli

from pinbackend import _docs
from pinbackend.cli.explain import render, topic_of, unknown_topic

ROOT = Path(__file__).parent.parent
PAGE = ROOT / "docs" / "troubleshooting.md"


def headings() -> list[str]:
    return re.findall(r"^## (.+)$", PAGE.read_text(), flags=re.MULTILINE)


def words(text: str) -> str:
    """``text`` with its whitespace collapsed: explain rewraps paragraphs."""
    return " ".join(text.split())


def test_explain_prints_the_heading_and_the_body_of_a_known_topic():
    result = pinbackend_cli("explain", "pool-resized", check=True)
    assert result.stdout.startswith("Pool resized\n============\n\n")
    assert result.stderr == ""
    body = PAGE.read_text().split("## Pool resized\n", 1)[1].split("\n## ", 1)[0]
    for paragraph in body.strip().split("\n\n"):
        assert words(paragraph) in words(result.stdout)
    assert result.stdout.endswith(f" {_docs.troubleshooting_url('pool-resized')})\n")


def test_explain_lists_every_heading_with_its_topic():
    listed = pinbackend_cli("explain", "--list", check=True).stdout
    assert pinbackend_cli("explain", check=True).stdout == listed
    rows = listed.splitlines()[1:]
    assert len(rows) == len(headings()) >= 19
    for row, heading in zip(rows, headings(), strict=True):
        topic, title = row.split(maxsplit=1)
        assert title == heading
        assert topic == _docs.slug(heading)


def test_an_unknown_topic_exits_2_naming_it_the_closest_topics_and_the_list():
    result = pinbackend_cli("explain", "pool-resize")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "pinbackend: error: no troubleshooting topic 'pool-resize'; did you mean pool-resized? "
        "python -m pinbackend explain --list lists them all\n"
    )
    nothing_close = pinbackend_cli("explain", "zzz")
    assert nothing_close.returncode == 2
    assert "did you mean" not in nothing_close.stderr
    assert "explain --list" in nothing_close.stderr


def test_json_gives_the_entry_and_the_list():
    entry = json.loads(pinbackend_cli("explain", "fork-after-openmp", "--json", check=True).stdout)
    assert entry["topic"] == "fork-after-openmp"
    assert entry["title"] == "Fork after OpenMP"
    assert entry["markdown"].startswith("`ForkAfterOpenMPWarning: ")
    assert entry["url"].endswith("/troubleshooting/#fork-after-openmp")
    listed = json.loads(pinbackend_cli("explain", "--list", "--json", check=True).stdout)
    assert [item["title"] for item in listed] == headings()


def test_a_topic_may_be_given_as_a_heading_or_a_pasted_url():
    assert topic_of("Pool resized") == "pool-resized"
    assert topic_of(_docs.troubleshooting_url("no-core-for-a-pool")) == "no-core-for-a-pool"
    assert pinbackend_cli("explain", "Fork after OpenMP", check=True).stdout.startswith(
        "Fork after OpenMP\n"
    )


def test_unknown_topic_suggests_topics_that_contain_the_word():
    message = unknown_topic("dask", ["pool-resized", "dask-workers-closed", "dask-worker-x"])
    assert "did you mean dask-workers-closed, dask-worker-x?" in message


def test_render_spells_links_rewraps_paragraphs_and_keeps_code():
    entry = _docs.Entry(
        "an-entry",
        "An entry",
        "First line\nof a paragraph, see [another](#other-topic) and [Dask](dask.md#shapes).\n"
        "\n```text\nkeep   this\n\n  as is\n```\n\n- one item\n  goes on\n- two",
    )
    assert render(entry, width=88) == (
        "An entry\n========\n\n"
        "First line of a paragraph, see another (`python -m pinbackend explain other-topic`) "
        f"and\nDask ({_docs.DOCS_ROOT}/dask/#shapes).\n\n"
        "    keep   this\n\n      as is\n\n"
        "- one item goes on\n- two\n\n"
        f"(online, once published: {_docs.troubleshooting_url('an-entry')})"
    )


def test_render_never_breaks_a_code_span():
    # Without care, the line would break after "`python", 57 characters in.
    entry = _docs.Entry("x", "X", "word " * 10 + "`python -m pinbackend status` " + "word " * 12)
    lines = render(entry, width=60).splitlines()
    assert lines[3] == ("word " * 10).strip()
    assert lines[4].startswith("`python -m pinbackend status` word")


def test_slugs_are_those_mkdocs_gives():
    # Python-Markdown's toc: markup dropped, accents folded, punctuation removed, runs of
    # spaces and hyphens joined into one hyphen.
    assert _docs.slug("Pool stopped: a worker could not claim its cores") == (
        "pool-stopped-a-worker-could-not-claim-its-cores"
    )
    assert _docs.slug("`fork()` after OpenMP / GNU") == "fork-after-openmp-gnu"
    assert _docs.slug("Café  --  x_y 2.0") == "cafe-x_y-20"


def test_two_entries_with_one_slug_are_refused():
    with pytest.raises(ValueError, match="#pool-resized"):
        _docs.parse_entries("# T\n\n## Pool resized\n\na\n\n## Pool: resized\n\nb\n")


def test_a_heading_inside_a_code_block_is_not_an_entry():
    entries = _docs.parse_entries("## One\n\n```\n## not a heading\n```\n\n## Two\n\nb\n")
    assert list(entries) == ["one", "two"]
    assert "## not a heading" in entries["one"].body


def test_a_real_warning_names_the_command_that_prints_its_entry(tmp_path):
    # One allowed CPU and a private lease registry: the pool of 2 is resized to 1 worker,
    # whatever the machine and whatever other jobs hold.
    code = (
        "import json, os, warnings\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from joblib import Parallel, delayed\n"
        "import pinbackend\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    Parallel(n_jobs=2, backend='pinned')(delayed(abs)(i) for i in range(2))\n"
        "print(json.dumps([[w.category.__name__, str(w.message)] for w in caught]))\n"
    )
    result = subprocess.run(
        [PYTHON, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PINBACKEND_RUNTIME_DIR": str(tmp_path / "registry")},
    )
    assert result.returncode == 0, result.stderr
    ((category, message),) = json.loads(result.stdout)
    assert category == "PoolResizedWarning"
    assert message.endswith(
        ". See python -m pinbackend explain pool-resized "
        "(https://pinbackend.readthedocs.io/en/latest/troubleshooting/#pool-resized)"
    )
    command = re.search(r"python -m pinbackend explain \S+", message)[0].split()
    explained = subprocess.run(
        [PYTHON, *command[1:]], capture_output=True, text=True, timeout=60, check=True
    )
    assert explained.stdout.startswith("Pool resized\n")
    assert "`PoolResizedWarning: Parallel(n_jobs=8)" in explained.stdout


@pytest.mark.slow
def test_a_wheel_carries_the_page_and_explain_reads_it_from_there(tmp_path):
    # What a pip user gets: build the wheel, unpack it (a pure-Python install), run explain
    # from it with the checkout out of reach.
    subprocess.run(
        [PYTHON, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=150,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pinbackend-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    packaged = site / "pinbackend" / "_data" / "troubleshooting.md"
    assert packaged.read_bytes() == PAGE.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [PYTHON, "-c", "from pinbackend import _docs; print(_docs.page_source())"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=True,
    ).stdout.strip()
    assert where == str(packaged)
    explained = subprocess.run(
        [PYTHON, "-m", "pinbackend", "explain", "lease-registry-unusable"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=True,
    )
    assert explained.stdout.startswith("Lease registry unusable\n")


def test_a_checkout_reads_the_docs_folder_and_an_installed_wheel_its_copy():
    # An editable install or a checkout on sys.path has no pinbackend/_data: the page is
    # docs/troubleshooting.md itself, never a stale copy. Under tox the package is a wheel.
    import pinbackend

    package = Path(pinbackend.__file__).resolve().parent
    if package == ROOT.resolve() / "pinbackend":
        assert _docs.page_source() == PAGE.resolve()
        assert not (package / "_data").exists()
    else:
        assert Path(str(_docs.page_source())) == package / "_data" / "troubleshooting.md"
