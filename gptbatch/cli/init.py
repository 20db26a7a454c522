"""`gptbatch init [DIR]`: start a project with a commented batch.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gptbatch.commands.init import EXAMPLE_INPUT, init_project
from gptbatch.config.yaml_source import DEFAULT_CONFIG
from gptbatch.errors import UsageError


def target_directory(arg: str, force: bool) -> Path:
    """The directory to initialise; `init batch.yaml` (a file, not a directory) means its own."""
    target = Path(arg)
    if not (target.is_file() or target.suffix in (".yaml", ".yml")):
        return target
    if target.name != DEFAULT_CONFIG:
        raise UsageError(
            f"{arg}: init writes {DEFAULT_CONFIG} into a directory: pass the directory "
            f"(gptbatch init {target.parent})"
        )
    if target.is_file() and not force:
        raise UsageError(
            f"{arg} already exists: edit it, or pass --force to replace it (keeping its "
            "project id, so the batches it submitted are still found)"
        )
    return target.parent


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        epilog="example: gptbatch init my-project && cd my-project && gptbatch validate",
        help="write a commented batch.yaml and .gitignore lines",
        description="Write DIR/batch.yaml: every key commented with its default, a new "
        "random project id, and a first line naming the schema for editors. Append the "
        "output directories to DIR/.gitignore. Refuses to replace a batch.yaml without "
        "--force, which keeps what identifies the project (its project id, written out "
        "if it was derived, output_dir and inputs) and says what it resets.",
    )
    p.add_argument("directory", nargs="?", default=".", help="where to write (default: .)")
    p.add_argument("--force", action="store_true", help="replace an existing batch.yaml")
    p.add_argument(
        "--data",
        metavar="FILE",
        help="scaffold a data target over this table (CSV with a header row, or JSONL "
        "records): each row becomes a request, rendered through a template written to "
        "prompts/<name>.yaml",
    )
    p.add_argument(
        "--id", dest="id_column", metavar="COLUMN", help="with --data: the column naming each row"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.id_column is not None and args.data is None:
        raise UsageError("--id names the id column of --data FILE: pass --data too")
    made = init_project(
        target_directory(args.directory, args.force),
        force=args.force,
        data=Path(args.data) if args.data else None,
        id_column=args.id_column,
    )
    print(f"wrote {made.config} (project {made.project})")
    if made.target is not None:
        t = made.target
        template = made.config.parent / t.template
        print(f"  target {t.name}: one request per row of {t.data}, custom_id from column {t.id}")
        print(f"  {'wrote' if made.template_written else 'kept the existing'} template {template}")
        if made.ignored:
            print(f"added {', '.join(made.ignored)} to {made.gitignore}")
        print(
            f"next: edit {template} into your prompt, then `gptbatch validate {made.config}` "
            f"and `gptbatch build {made.config} --simulate`"
        )
        return 0
    for change in made.changes:
        print(f"  {change}")
    if made.ignored:
        print(f"added {', '.join(made.ignored)} to {made.gitignore}")
    if made.changes:  # --force: the project's inputs stay as they were
        print(f"next: `gptbatch validate {made.config}`")
        return 0
    print(
        f"next: put requests in {made.config.parent / EXAMPLE_INPUT}, then "
        f"`gptbatch validate {made.config}` and `gptbatch build {made.config} --simulate`"
    )
    return 0
