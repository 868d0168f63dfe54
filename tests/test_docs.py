"""The newcomer's path holds together: the README is short, starts with the two commands, and every link and image
in it (and in docs/) resolves, anchors included; no tracked file points into the shared design folder beside the
repository (a user's clone has none); the key reference in docs/configuration.md is generated from
switchpoint/config.py and current."""

import os
import re
import subprocess

import pytest

from tests.conftest import REPO

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
PAGES = ["README.md"] + [
    os.path.join("docs", n) for n in sorted(os.listdir(os.path.join(REPO, "docs"))) if n.endswith(".md")
]


def _read(rel: str) -> str:
    with open(os.path.join(REPO, rel)) as f:
        return f.read()


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(rel: str) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", _read(rel), flags=re.M)}


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = _read("README.md").splitlines()
    assert len(lines) <= 150
    head = "\n".join(lines[:8])
    assert "make demo" in head and "make test" in head
    makefile = _read("Makefile")
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in _read(".ci/run")
    assert "## What the study found" in _read("README.md")


def test_readme_shows_the_diagram_and_two_result_images():
    images = [t for t in LINK.findall(_read("README.md")) if t.endswith(".png")]
    assert {"docs/img/architecture.png", "docs/img/run-plot.png", "docs/img/sweep-results.png"} <= set(images)


@pytest.mark.parametrize("page", PAGES)
def test_every_link_and_image_resolves(page):
    folder = os.path.dirname(os.path.join(REPO, page))
    for target in LINK.findall(_read(page)):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(folder, path)) if path else os.path.join(REPO, page)
        assert full.startswith(REPO + os.sep) and os.path.exists(full), f"{page}: {target} does not resolve"
        if anchor:
            rel = os.path.relpath(full, REPO)
            assert anchor in _anchors(rel), f"{page}: {target}: no heading #{anchor} in {rel}"


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (
        OSError,
        subprocess.CalledProcessError,
    ):  # no git (an unpacked archive): every file but the ignored
        skip = {".git", ".venv", "runs", "artifacts", "__pycache__", ".pytest_cache", ".ruff_cache"}
        return [
            os.path.relpath(os.path.join(root, n), REPO)
            for root, dirs, names in os.walk(REPO)
            if not dirs.__setitem__(slice(None), [d for d in dirs if d not in skip])
            for n in names
        ]


def test_no_file_points_to_the_shared_folder():
    needle = "../" + "shared/"
    hits = []
    for rel in _tracked_files():
        try:
            with open(os.path.join(REPO, rel), encoding="utf-8") as f:
                if needle in f.read():
                    hits.append(rel)
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
    assert hits == []


def test_the_key_reference_is_current():
    from docs.config_reference import render

    page = _read("docs/configuration.md")
    assert render(page) == page, "run: python docs/config_reference.py"
    for key in (
        "sft.eval_every",
        "rl.eval_every",
        "tune.checkpoint_every",
        "verifier.kind",
        "learner.gpus_per_rank",
    ):
        assert f"| `{key}` |" in page
