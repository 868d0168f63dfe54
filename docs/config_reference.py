"""Write the key reference of docs/configuration.md from switchpoint/config.py: every key with its default and
its docstring (the one source), between the page's `<!-- keys:start -->` and `<!-- keys:end -->` lines.

    python docs/config_reference.py          # rewrite the section
    python docs/config_reference.py --check  # exit 1 when the page is out of date (tests/test_docs.py checks it)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from switchpoint import config as config_module  # noqa: E402

PAGE = os.path.join(HERE, "configuration.md")
START, END = "<!-- keys:start -->", "<!-- keys:end -->"


def field_docs() -> dict[str, dict[str, str]]:
    """{class name: {field: docstring}} from the string literal that follows each field in config.py."""
    with open(config_module.__file__) as f:
        tree = ast.parse(f.read())
    out: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs, body = {}, node.body
        for a, b in zip(body, body[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
        out[node.name] = docs
    return out


def _default(value) -> str:
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        return f"`{value}`".replace("'", "")
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    docs = field_docs()
    cfg = config_module.Config()
    lines = []
    for section in dataclasses.fields(config_module.Config):
        obj = getattr(cfg, section.name)
        section_doc = docs["Config"].get(section.name, "")
        lines += [
            "",
            f"### `{section.name}:` {section_doc}",
            "",
            "| key | default | what |",
            "| --- | --- | --- |",
        ]
        for f in dataclasses.fields(obj):
            key = f"{section.name}.{f.name}"
            value = getattr(obj, f.name)
            text = docs.get(type(obj).__name__, {}).get(f.name, "")
            if key in config_module.CHOICES:
                text += " Choices: " + ", ".join(f"`{c}`" for c in config_module.CHOICES[key]) + "."
            if dataclasses.is_dataclass(value):  # model.tiny: one row per sub-key
                sub_docs = docs.get(type(value).__name__, {})
                for g in dataclasses.fields(value):
                    sub = getattr(value, g.name)
                    lines.append(
                        f"| `{key}.{g.name}` | {_default(sub)} | {_cell(sub_docs.get(g.name, ''))} |"
                    )
                continue
            lines.append(f"| `{key}` | {_default(value)} | {_cell(text)} |")
    return "\n".join(lines[1:]) + "\n"


def render(page: str) -> str:
    head, rest = page.split(START + "\n", 1)
    _, tail = rest.split(END, 1)
    return head + START + "\n" + reference() + END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check that the page is up to date")
    args = parser.parse_args(argv)
    with open(PAGE) as f:
        page = f.read()
    new = render(page)
    if args.check:
        if new != page:
            print(f"{PAGE} is out of date: run python docs/config_reference.py", file=sys.stderr)
            return 1
        return 0
    with open(PAGE, "w") as f:
        f.write(new)
    print(PAGE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
