"""`phylolm bench probe --by-kind`: the rows that need no engine, for real (the zoo, the
loopback Hub, the simulated backend). Figures are printed, not asserted; what is asserted is
that each kind ran what the job runs for it: the exact copy was recognised by its weight
hashes, the GPTQ re-upload was deferred by the screen, the others are said not measured."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def test_bench_by_kind_on_the_simulated_backend(cli, zoo_dir):
    r = cli("bench", "probe", "--by-kind", "--backends", "simulated", "--genes", "4", "--samples", "4", "--json",
            "--zoo", str(zoo_dir))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    rows = {row["kind"]: row for row in result["rows"]}
    assert set(rows) == {"full", "adapter", "gguf", "exact_copy", "deferred"}
    assert rows["exact_copy"]["recognised_as"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert rows["deferred"]["status"] == "deferred" and "gptq" in rows["deferred"]["reason"]
    assert rows["full"]["seconds_per_model"] > 0 and rows["full"]["models_per_hour"] > 0
    assert "not_measured" in rows["adapter"] and "not_measured" in rows["gguf"]
    assert "vllm_engine_reuse" not in result


def test_bench_by_kind_refuses_an_unknown_backend(cli):
    r = cli("bench", "probe", "--by-kind", "--backends", "simulated,nope")
    assert r.returncode != 0 and "nope" in r.stderr
