"""`phylolm demo`: the whole job, offline, on the bundled zoo of real models.

It builds the zoo (cached), serves an initially empty folder as a Hub on loopback, starts
the streaming ``phylolm watch`` against it as a separate process, and "uploads" the zoo's
models into that folder one at a time, oldest first, waiting for each to be indexed, so the
tree grows leaf by leaf; each upload's line says how it was placed (probed; an adapter on
its base; a GGUF re-upload from its file; an exact copy recognised, not downloaded). Then it stops the watch and prints the tree, each model's nearest
relatives and the lineage check; measures the zoo's scores (``zoo_scores``: bits per byte on
held-out text of each domain), imports them except one hidden model's, estimates that model
from its relatives and prints estimate, interval and measured value side by side; writes the
export (explorer, report, plots) last.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from indexer.adapters.catalog import open_read_only, snapshot_path
from indexer.errors import PhylolmError
from schemas.records import ModelStatus


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _status(catalog: Path, model_id: str) -> tuple[str, str | None] | None:
    try:
        with open_read_only(catalog) as reader:
            model = reader.get_model(model_id)
    except PhylolmError:
        return None
    return (model.status.value, model.reason) if model else None


def _upload(repo: Path, served: Path, model_id: str) -> None:
    """Make a repository appear in the served folder at once (copy aside, then rename)."""
    target = served / model_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = served / ".incoming" / model_id.replace("/", "--")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(repo, tmp, copy_function=os.link if _same_fs(repo, served) else shutil.copy2)
    os.rename(tmp, target)


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


HIDDEN = "zoo/smollm2-ft-poetry-shanties"  # the model whose scores the demo hides and estimates


def run_demo(workdir: Path, *, genes: int, samples: int, backend: str, interval: float,
             timeout_per_model: float, zoo_dir: Path | None = None, scores: bool = True,
             hide: str = HIDDEN) -> dict:
    from indexer.adapters.catalog import Catalog
    from indexer.adapters.publish import export, lineage_from_catalog
    from indexer.testbed import zoo as zoo_lib
    from indexer.testbed.hub import HubServer
    from indexer.core.tree import parse_newick
    from indexer.core.tree.render import to_ascii
    from indexer.core.tree.rooting import midpoint_root

    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    catalog, served, publish = workdir / "demo.duckdb", workdir / "hub", workdir / "publish"
    for p in (catalog, catalog.with_name(catalog.name + ".wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(snapshot_path(catalog), ignore_errors=True)
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir(parents=True)

    _say("== 1. the zoo: real models with known lineage (cached build) ==")
    t0 = time.perf_counter()
    build = zoo_lib.build_zoo(zoo_dir or workdir / "zoo", log=lambda s: _say(f"   {s}"))
    models = sorted(zoo_lib.ZOO, key=lambda m: m.created_at)
    _say(f"   {len(models)} models ready in {build.directory} ({time.perf_counter() - t0:.1f} s, "
         f"{build.bytes / 1e6:.0f} MB{', built now' if build.built else ', from the cache'})")
    for m in models:
        _say(f"   - {m.id:38s} {_how_made(m)}" + (f"  [planted: {m.planted}]" if m.planted else ""))

    _say("\n== 2. streaming watch on a loopback Hub; uploading the zoo one model at a time ==")
    paper = genes == 128 and samples == 32
    _say(f"   probing with the {backend} backend, {genes} genes x {samples} samples"
         + (" (the paper's genome size)" if paper else " (the paper uses 128 x 32)"))
    with HubServer(served) as url:
        cmd = [sys.executable, "-m", "indexer", "watch", "--hub", url, "--catalog", str(catalog),
               "--backend", backend, "--genes", str(genes), "--samples", str(samples),
               "--interval", str(interval), "--publish-dir", str(publish),
               # the zoo's upload dates are its originals' (2024-2025): the first poll must
               # look back that far (a real first watch looks back 24 h)
               "--first-window", str(_hours_since_oldest_upload())]
        env = {**os.environ, "PHYLOLM_CACHE_DIR": str(workdir / "cache")}
        watch = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        try:
            for m in models:
                t1 = time.perf_counter()
                _upload(build.directory / m.id, served, m.id)
                deadline = time.monotonic() + timeout_per_model
                st = None
                while time.monotonic() < deadline:
                    st = _status(catalog, m.id)
                    if st and st[0] in ("indexed", "skipped", "failed"):
                        break
                    if watch.poll() is not None:
                        raise PhylolmError(f"the watch stopped unexpectedly:\n{watch.stdout.read()[-2000:]}")
                    time.sleep(0.5)
                else:
                    raise PhylolmError(f"{m.id} was not indexed within {timeout_per_model:.0f} s")
                with open_read_only(catalog) as reader:
                    near = [(b, d) for b, d, _ in reader.nearest(m.id, 2)]
                    record = reader.get_model(m.id)
                shown = ", ".join(f"{b} ({d:.3f})" for b, d in near) or "(first leaf)"
                _say(f"   + {m.id:42s} {st[0]:8s} {time.perf_counter() - t1:5.1f} s   {_how_placed(record)}: {shown}")
        finally:
            os.killpg(watch.pid, signal.SIGTERM)
            try:
                watch.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(watch.pid, signal.SIGKILL)
                watch.wait()

    _say("\n== 3. the tree (incremental, as maintained) ==")
    with open_read_only(catalog) as reader:  # the watch has stopped: the catalog itself
        newick = reader.latest_tree()[1]
        _say(to_ascii(midpoint_root(parse_newick(newick))))
        _say("(drawn from the midpoint root; the index's trees are unrooted)")
        _say(f"\nNewick: {newick}")

        _say("\n== 4. nearest relatives ==")
        ids = [m.id for m in reader.models(ModelStatus.indexed)]
        nearest = {}
        for mid in ids:
            rows = [(b, d) for b, d, _ in reader.nearest(mid, 2)]
            nearest[mid] = rows
            _say(f"   {mid:42s} → " + ", ".join(f"{b} ({d:.3f})" for b, d in rows))

        _say("\n== 5. lineage check: declared base models against the phylogeny ==")
        lineage = lineage_from_catalog(reader)
        for f in lineage:
            _say(f"   [{f['kind']}] {f['model_id']}: {f['detail']}")

    side_by_side: list[dict] = []
    if scores:
        side_by_side = _scores_and_estimates(catalog, build.directory, hide, ids)
    else:
        _say("\n== 6. estimates: skipped (--no-scores) ==")
    heldout = [{"model_id": hide, **r} for r in side_by_side]
    with Catalog(catalog) as cat:
        export(cat, publish, lineage=lineage, heldout=heldout)

    _say("\n== 8. published (open index.html: the explorer; `phylolm view` serves it) ==")
    for f in sorted(publish.iterdir()):
        _say(f"   {f}")
    wall = time.perf_counter() - t_start
    _say(f"\ndemo finished in {wall:.0f} s; catalog {catalog} (query it: phylolm sql \"...\" --catalog {catalog})")
    return {"catalog": str(catalog), "models": ids, "newick": newick, "lineage": lineage,
            "hidden": hide if scores else None, "estimates_vs_measured": side_by_side,
            "publish": str(publish), "seconds": wall}


def _scores_and_estimates(catalog: Path, zoo_dir: Path, hide: str, ids: list[str]) -> list[dict]:
    """Measure the zoo scores, import all but ``hide``'s, estimate ``hide`` from its
    relatives; print and return estimate, interval and measured value per benchmark."""
    from indexer.adapters.catalog import Catalog
    from indexer.adapters.publish import estimates_from_catalog
    from indexer.testbed.zoo_scores import score_zoo
    from schemas.records import Score

    if hide not in ids:
        raise PhylolmError(f"--hide: {hide!r} is not an indexed zoo model; choose one of {', '.join(ids)}")
    _say("\n== 6. zoo scores: bits per byte on held-out text (indexer/data/zoo_heldout) ==")
    t0 = time.perf_counter()
    rows = score_zoo(zoo_dir, log=lambda s: _say(f"   {s}"))
    domains = list(dict.fromkeys(r["domain"] for r in rows))
    _say(f"   measured in {time.perf_counter() - t0:.0f} s; stored score = 2^-bpb (per-byte likelihood, "
         "higher is better)")
    _say("   " + f"{'model (bits per byte)':42s}" + "".join(f"{d:>9s}" for d in domains))
    for mid in dict.fromkeys(r["model_id"] for r in rows):
        vals = {r["domain"]: r["bits_per_byte"] for r in rows if r["model_id"] == mid}
        _say(f"   {mid:42s}" + "".join(f"{vals[d]:9.3f}" for d in domains) + ("   <- hidden" if mid == hide else ""))
    with Catalog(catalog) as cat:
        cat.import_scores([Score(model_id=r["model_id"], benchmark=r["benchmark"], value=r["value"], source=r["source"])
                           for r in rows if r["model_id"] != hide])
        estimates = estimates_from_catalog(cat)
        cat.replace_estimates(estimates)
    _say(f"\n== 7. {hide}'s scores hidden, estimated from its relatives (90% intervals) ==")
    measured = {r["benchmark"]: r for r in rows if r["model_id"] == hide}
    out = []
    _say(f"   {'benchmark':14s} {'estimate':>9s} {'interval':>17s} {'measured':>9s}  inside  (bits/byte: est, measured)")
    for e in sorted((e for e in estimates if e.model_id == hide), key=lambda e: e.benchmark):
        m = measured[e.benchmark]
        inside = e.low <= m["value"] <= e.high
        _say(f"   {e.benchmark:14s} {e.estimate:9.3f}   [{e.low:.3f}, {e.high:.3f}] {m['value']:9.3f}  "
             f"{'yes' if inside else 'no ':6s}  ({-math.log2(max(e.estimate, 1e-9)):.3f}, {m['bits_per_byte']:.3f})")
        out.append({"benchmark": e.benchmark, "estimate": e.estimate, "low": e.low, "high": e.high,
                    "measured": m["value"], "measured_bits_per_byte": m["bits_per_byte"], "inside": inside,
                    "method": e.method})
    _say(f"   ({sum(o['inside'] for o in out)} of {len(out)} measured values inside their interval; method "
         f"{out[0]['method'] if out else '-'})")
    return out


def _how_made(m) -> str:
    """A zoo model's recipe in a few words."""
    parents = " + ".join(m.parents)
    return {"gguf": "released model (from its GGUF package)", "quantize": f"int8-rounded copy of {parents}",
            "finetune": f"fine-tune of {parents}", "merge": f"weight average of {parents}",
            "lora": f"LoRA adapter (PEFT) of {parents}",
            "to_gguf": f"GGUF re-upload ({m.weights_file}) of {parents}",
            "copy": f"byte-identical re-upload of {parents}"}[m.make]


def _how_placed(record) -> str:
    """How the watch placed an upload: probed (and how), or recognised as an exact copy."""
    if record is None or record.status != ModelStatus.indexed:
        return "nearest"
    if record.copy_of:
        return f"recognised (same weights as {record.copy_of}, not downloaded), nearest"
    if record.adapter_of:
        return f"probed on its base {record.adapter_of.split('@')[0]}, nearest"
    if record.gguf_file:
        return f"probed from {record.gguf_file}, nearest"
    return "probed, nearest"


def _hours_since_oldest_upload() -> int:
    from datetime import datetime, timezone

    from indexer.testbed.zoo import ZOO

    oldest = min(datetime.fromisoformat(m.created_at.replace("Z", "+00:00")) for m in ZOO)
    return int((datetime.now(timezone.utc) - oldest).total_seconds() // 3600) + 48
