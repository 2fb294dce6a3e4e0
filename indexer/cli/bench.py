"""The `phylolm bench` group: benchmarks that print figures (never asserted in tests)."""
from __future__ import annotations

import typer

bench_app = typer.Typer(help="Benchmarks that print figures (index, probe, estimates).", no_args_is_help=True)
