"""`phylolm hub ...`: serve a folder as a Hub-compatible endpoint, and look at what a Hub lists."""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Annotated

import typer

from indexer.app import defaults
from indexer.cli.common import HubOpt, JsonOpt, err, out, parse_date, print_json, print_rows
from indexer.errors import PhylolmError
from indexer.testbed.hub.api import DEFAULT_PAGE_SIZE
from indexer.testbed.hub.quotas import DEFAULT_RATE_WINDOW

hub_app = typer.Typer(help="The Hub-compatible endpoint and the Hub watcher.", no_args_is_help=True)


@hub_app.command("serve")
def serve(
    directory: Annotated[Path, typer.Argument(help="Folder of <owner>/<name>/ model repositories.")],
    port: Annotated[int, typer.Option(help="TCP port (0: a free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    page_size: Annotated[int, typer.Option(help="Listing page size when the client gives no limit.")] = DEFAULT_PAGE_SIZE,
    rate_window: Annotated[float, typer.Option(
        help="Seconds of a fixed rate-limit window, with the Hub's quotas (anonymous: 500 API and "
             "3,000 download requests per window); 0 turns rate limiting off.")] = DEFAULT_RATE_WINDOW,
) -> None:
    """Serve DIRECTORY as a Hub endpoint (listing, model info, file download) until interrupted.

    Point any huggingface_hub client at it: HfApi(endpoint=URL) or HF_ENDPOINT=URL. It answers
    as the public Hub does: RateLimit headers and 429s, 401/403 for gated files, 307 after a
    rename, the Hub's derived lineage (see indexer/testbed/hub/).
    """
    from indexer.testbed.hub import HubServer

    if not directory.is_dir():
        raise PhylolmError(f"not a directory: {directory}")
    if not 0 <= port <= 65535:
        raise PhylolmError(f"--port {port}: expected 0..65535")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    try:
        if rate_window < 0:
            raise PhylolmError(f"--rate-window {rate_window:g}: expected >= 0 (0: no rate limiting)")
        server = HubServer(directory, host=host, port=port, page_size=max(1, page_size),
                           rate_window=rate_window or None)
    except OSError as e:
        raise PhylolmError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if not loopback:
        err.print(f"warning: serving on {host}, reachable from other machines")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The URL goes to stdout, flushed, so that scripts can read it (with --port 0 especially).
    print(f"serving {directory} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@hub_app.command("list")
def list_new(
    hub: HubOpt = None,
    since: Annotated[str | None, typer.Option(help="Only models created at or after this date.")] = None,
    author: Annotated[str | None, typer.Option(help="Only this author's models.")] = None,
    search: Annotated[str | None, typer.Option(help="Only ids containing this text.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many (the oldest first).")] = None,
    max_gb: Annotated[float, typer.Option(help="Size budget for weights, in GB.")] = defaults.MAX_WEIGHTS_GB,
    json: JsonOpt = False,
) -> None:
    """List models new on a Hub since a date, screened as the watcher screens them
    (nothing is downloaded, nothing is recorded)."""
    from indexer.app.hub import hub_watcher, open_hub

    when = parse_date(since, "--since")
    if limit is not None and limit < 1:
        raise PhylolmError("--limit must be >= 1")
    with open_hub(hub) as url:
        watcher = hub_watcher(url, timeout=defaults.HUB_TIMEOUT, max_bytes=defaults.max_bytes(max_gb))
        records = list(watcher.list_new_models(when, author=author, limit=limit, search=search))
    if watcher.report.error:
        raise PhylolmError(f"the Hub could not be listed: {watcher.report.error}")
    if json:
        print_json([r.model_dump(mode="json") for r in records])
        return
    print_rows(["id", "created_at", "status", "reason", "size_bytes", "base_models"],
               [(r.id, r.created_at, r.status.value, r.reason, r.size_bytes, ", ".join(r.base_models))
                for r in records], title=f"{len(records)} models")
    if watcher.report.truncated or watcher.report.truncated_pages:
        out.print("note: more new models than one poll keeps; these are the oldest")


def register(app: typer.Typer) -> None:
    app.add_typer(hub_app, name="hub")
