"""The `phylolm` command line: a thin Typer layer over the code the pipelines call.

Each ``*_cmds`` module registers its commands on ``app``; errors meant for users
(``PhylolmError``) are printed as one line on stderr with exit status 2, never a traceback.
"""
from __future__ import annotations

import importlib
import os
import sys

import typer

from indexer.errors import PhylolmError

app = typer.Typer(
    name="phylolm",
    help="A streaming, incremental PhyloLM index of language models: probe new Hub uploads, "
         "place them on a phylogenetic tree, and estimate their benchmark scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_COMMAND_MODULES = ("catalog_cmds", "hub_cmds", "estimate_cmds", "pipeline_cmds", "demo_cmds", "index_cmds",
                    "probe_cmds")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"indexer.cli.{_name}").register(app)

from indexer.cli.bench import bench_app  # noqa: E402  (after the command modules add to it)

app.add_typer(bench_app, name="bench")


def _one_line(message: str, word: int = 120, limit: int = 1000) -> str:
    """A message as one line of bounded length: hostile input (a 10 kB id, a newline) echoed
    in an error must not flood the terminal or forge extra lines. Over-long words are cut in
    their middle, so the message's own words stay readable."""
    words = [w if len(w) <= word else f"{w[:60]}...[{len(w) - 80} more]...{w[-20:]}" for w in message.split()]
    text = " ".join(words)
    return text if len(text) <= limit else text[:limit] + "..."


def main() -> None:
    try:
        app()
    except PhylolmError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: still one line unless asked for more
        if os.environ.get("PHYLOLM_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:400]
        print(f"error: unexpected {type(e).__name__}: {msg} (PHYLOLM_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        sys.exit(1)
