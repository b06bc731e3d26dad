"""Regenerate the README's generated sections from the code: flag tables and the model table.

Run `python scripts/gen_docs.py`; tests/test_readme.py fails when the README is stale.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nachbar.ai.registry import all_specs
from nachbar.server.config import ai_parser, db_parser

README = Path(__file__).resolve().parents[1] / "README.md"
ENV = re.compile(r"\s*\[env (NACHBAR_[A-Z_]+)[^\]]*\]")


def flag_table(parser: argparse.ArgumentParser) -> str:
    rows = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or action.help == argparse.SUPPRESS:
            continue
        help_text = (action.help or "").replace("%%", "%")  # argparse's escape for "%"
        env = ENV.search(help_text)
        meaning = ENV.sub("", help_text).replace("|", "\\|")
        flag = " / ".join(action.option_strings)
        default = action.default
        if isinstance(default, Path) and str(default).startswith(str(Path.home())):
            default = "~" + str(default)[len(str(Path.home())) :]
        if isinstance(default, list):
            default = ",".join(f"{k}={v}" for k, v in default) or "(none)"
        if action.choices:
            meaning = f"{meaning} ({' / '.join(map(str, action.choices))})"
        rows.append(
            f"| `{flag}` | `{env.group(1) if env else ''}` | `{default}` | {meaning.strip()} |"
        )
    return "\n".join(rows)


def model_table() -> str:
    rows = [
        "| model | kind | input | dim | space | source | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in all_specs():
        rows.append(
            f"| `{spec.name}` | {spec.kind} | {spec.modality} | {spec.dimension or '-'} | "
            f"{spec.space or '-'} | {spec.source_label} | {spec.precision} |"
        )
    return "\n".join(rows)


SECTIONS: dict[str, Callable[[], str]] = {
    "db-flags": lambda: flag_table(db_parser()),
    "ai-flags": lambda: flag_table(ai_parser()),
    "models": model_table,
}


@contextmanager
def documented_environment() -> Iterator[None]:
    """Defaults as a user with no NACHBAR_*/XDG_*/HF_* variables set sees them."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("NACHBAR_", "XDG_", "HF_")):
            del os.environ[key]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def render(text: str) -> str:
    with documented_environment():
        return _render(text)


def _render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- end:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(f"README.md lacks the markers for the {name!r} section")
        match = pattern.search(text)
        assert match is not None
        text = (
            text[: match.start()]
            + match.group(1)
            + make()
            + "\n"
            + match.group(2)
            + text[match.end() :]
        )
    return text


def main() -> None:
    current = README.read_text()
    fresh = render(current)
    if "--check" in sys.argv:
        sys.exit(0 if fresh == current else 1)
    README.write_text(fresh)


if __name__ == "__main__":
    main()
