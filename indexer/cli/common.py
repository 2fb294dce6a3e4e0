"""Options and output helpers shared by every command module."""
from __future__ import annotations

import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from indexer.app import defaults
from indexer.errors import PhylolmError

# None means "from the settings": config file, then PHYLOLM_CATALOG, then ./phylolm.duckdb.
CatalogOpt = Annotated[Path | None, typer.Option(
    "--catalog", help=f"Catalog file [default: settings, PHYLOLM_CATALOG, ./{defaults.CATALOG}].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
HubOpt = Annotated[str | None, typer.Option(
    "--hub", help="Hub endpoint URL, or a folder of model repositories served on loopback "
                  "(default: HF_ENDPOINT or the public Hub).")]
BackendOpt = Annotated[str | None, typer.Option(
    "--backend", help="Prober: auto | vllm | transformers | openai | simulated (default from settings: "
                      "auto, i.e. vllm where a GPU and vLLM are present, else transformers).")]
DEFAULT_CATALOG = None  # resolved by catalog_path

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def catalog_path(catalog: Path | None) -> Path:
    """The catalog file: ``--catalog`` when given, else the settings' (config file,
    PHYLOLM_CATALOG, ``./phylolm.duckdb``)."""
    if catalog is not None:
        return Path(catalog)
    from indexer.app.settings import load_settings

    return load_settings()[0].catalog


def _default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=_default, indent=2, ensure_ascii=False) + "\n")


def print_rows(columns: list[str], rows: list[tuple], title: str | None = None) -> None:
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    out.print(table)


def parse_date(value: str | None, option: str) -> datetime | None:
    """An ISO date or datetime from the command line, or a clear error."""
    if value is None:
        return None
    try:
        d = datetime.fromisoformat(value)
    except ValueError:
        raise PhylolmError(f"{option}: {value!r} is not a date (use YYYY-MM-DD or an ISO datetime)") from None
    from datetime import timezone
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
