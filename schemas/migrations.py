"""Forward migrations of the catalog schema.

``SCHEMA_VERSION`` is the version ``schemas/catalog.sql`` creates. Opening a catalog of an
older version applies the steps from its version up, in one transaction; a catalog of a
newer version is refused (this build does not know its tables).
"""
from __future__ import annotations

SCHEMA_VERSION = 8

# version reached -> statements that take a catalog from (version - 1) to it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # v2: lineage metadata on models (base_model_relation, weights size for the budget)
    # and per-snapshot statistics (timings, rebuild decisions, support cost).
    2: (
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS base_model_relation VARCHAR",
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS size_bytes BIGINT",
        "ALTER TABLE tree_snapshots ADD COLUMN IF NOT EXISTS stats JSON",
    ),
    # v3: failed probes are retried on later polls, up to a limit: count the attempts.
    3: (
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS attempts INTEGER DEFAULT 0",
    ),
    # v4: a probe budget per cycle: what waits is `queued` with its priority (the `queue` view
    # ranks it), from the listing's downloads and likes; the `polls` table (created by the
    # schema) records each poll, complete or failed, for `phylolm status` and schedulers.
    4: (
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS downloads BIGINT",
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS likes BIGINT",
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS priority DOUBLE",
    ),
    # v5: exact copies: the weight files' content hashes per model, and which indexed model
    # a re-upload with identical weights copies (recorded without download or probe); GGUF-only
    # repositories: the file chosen to probe, on the model and on its probe.
    5: (
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS weight_hashes VARCHAR[]",
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS copy_of VARCHAR",
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS gguf_file VARCHAR",
        "ALTER TABLE IF EXISTS probes ADD COLUMN IF NOT EXISTS gguf_file VARCHAR",  # absent: the schema creates it
    ),
    # v6: PEFT/LoRA adapters are probed on their base: which base model (id@commit) was used.
    6: (
        "ALTER TABLE models ADD COLUMN IF NOT EXISTS adapter_of VARCHAR",
    ),
    # v7: the sparse (Hub-scale) index stores a full tree every so many inserts and, for the
    # inserts between, a placement record: a tree snapshot without a Newick. The alleles lose
    # their key index (15 times the rows' own size; uniqueness holds by construction), which
    # DuckDB can only drop by copying the table.
    7: (
        "ALTER TABLE tree_snapshots ALTER COLUMN newick DROP NOT NULL",
        "CREATE TABLE IF NOT EXISTS alleles (probe VARCHAR, gene INTEGER, allele VARCHAR, count INTEGER)",  # absent: made here
        "CREATE TABLE alleles_v7 (probe VARCHAR NOT NULL, gene INTEGER NOT NULL, allele VARCHAR NOT NULL, "
        "count INTEGER NOT NULL)",
        "INSERT INTO alleles_v7 SELECT probe, gene, allele, count FROM alleles ORDER BY probe, gene, allele",
        "DROP TABLE alleles",
        "ALTER TABLE alleles_v7 RENAME TO alleles",
    ),
    # v8: `current_tree`, the tree as it stands, replaced at each publish of a sparse index
    # (before, each publish appended a whole Newick to tree_snapshots). The schema creates
    # the table; an older catalog's newest whole tree stays readable where it is.
    8: (),
}
