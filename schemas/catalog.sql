-- The catalog's schema, version 8. Table and column names are a contract (DESIGN section 3):
-- columns may grow, names do not change. Older catalogs are upgraded by the forward
-- migrations in schemas/migrations.py.

CREATE TABLE IF NOT EXISTS meta (
    key   VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS models (
    id                  VARCHAR PRIMARY KEY,
    revision            VARCHAR NOT NULL DEFAULT 'main',
    created_at          TIMESTAMPTZ,
    author              VARCHAR,
    base_models         VARCHAR[] NOT NULL DEFAULT [],
    base_model_relation VARCHAR,
    license             VARCHAR,
    pipeline_tag        VARCHAR,
    size_bytes          BIGINT,
    status              VARCHAR NOT NULL DEFAULT 'discovered',
    reason              VARCHAR,
    attempts            INTEGER NOT NULL DEFAULT 0,  -- failed probes of this revision so far
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    downloads           BIGINT,  -- from the Hub's listing
    likes               BIGINT,
    priority            DOUBLE,  -- rank score: a queued model with a higher one is probed sooner
    weight_hashes       VARCHAR[],  -- sorted LFS sha256 of the root-level weight files (from the Hub)
    copy_of             VARCHAR,  -- the indexed model whose weight files are identical (an exact copy)
    gguf_file           VARCHAR,  -- a GGUF-only repository: the file chosen to probe
    adapter_of          VARCHAR  -- a PEFT/LoRA adapter: the base it was probed on (id@commit)
);

-- The models waiting for a cycle's probe budget, best first: `rank` orders by priority (the
-- `rank` queue order), `newest_rank` by upload time (the `newest` queue order).
CREATE OR REPLACE VIEW queue AS
    SELECT row_number() OVER (ORDER BY priority DESC NULLS LAST, created_at DESC NULLS LAST, id) AS rank,
           row_number() OVER (ORDER BY created_at DESC NULLS LAST, id) AS newest_rank,
           id, revision, created_at, priority, downloads, likes, size_bytes, base_models, updated_at AS queued_at
    FROM models WHERE status = 'queued';

-- One row per poll of the Hub: complete (the listing reached the watermark) or not, and why.
CREATE TABLE IF NOT EXISTS polls (
    poll_id     VARCHAR PRIMARY KEY,  -- the poll's start, as the job stamped it
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    complete    BOOLEAN NOT NULL,
    error       VARCHAR,
    new_models  INTEGER NOT NULL DEFAULT 0,  -- new on the Hub this poll
    taken       INTEGER NOT NULL DEFAULT 0,  -- sent to probing this cycle (the budget)
    queued      INTEGER NOT NULL DEFAULT 0   -- left waiting in the queue after this cycle
);

CREATE TABLE IF NOT EXISTS genomes (
    hash        VARCHAR PRIMARY KEY,
    name        VARCHAR NOT NULL,
    n_genes     INTEGER NOT NULL,
    source      VARCHAR,
    license     VARCHAR,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS genes (
    genome_hash VARCHAR NOT NULL,
    gene        INTEGER NOT NULL,
    text        VARCHAR NOT NULL,
    PRIMARY KEY (genome_hash, gene)
);

CREATE TABLE IF NOT EXISTS probes (
    probe_id        VARCHAR PRIMARY KEY,  -- hash of model, revision, genome, params, backend
    model_id        VARCHAR NOT NULL,
    revision        VARCHAR NOT NULL,
    genome_hash     VARCHAR NOT NULL,
    params_hash     VARCHAR NOT NULL,
    backend         VARCHAR NOT NULL,
    backend_version VARCHAR NOT NULL,
    n_samples       INTEGER NOT NULL,
    temperature     DOUBLE NOT NULL,
    top_p           DOUBLE NOT NULL,
    max_tokens      INTEGER NOT NULL,
    seed            BIGINT NOT NULL,
    seconds         DOUBLE NOT NULL,
    started_at      TIMESTAMPTZ NOT NULL,
    gguf_file       VARCHAR  -- the GGUF file probed (GGUF-only repositories)
);

-- One row per (probe, gene, allele), unique by construction: a probe's alleles are written
-- once, with the probe's row, in one transaction. No key index: on (probe, gene, allele) it
-- took 15 times the space of the rows themselves.
CREATE TABLE IF NOT EXISTS alleles (
    probe   VARCHAR NOT NULL,
    gene    INTEGER NOT NULL,
    allele  VARCHAR NOT NULL,
    count   INTEGER NOT NULL
);

-- One row per unordered pair (model_a < model_b); the view `distances` shows both directions.
CREATE TABLE IF NOT EXISTS distance_pairs (
    genome_hash VARCHAR NOT NULL,
    model_a     VARCHAR NOT NULL,
    model_b     VARCHAR NOT NULL,
    similarity  DOUBLE NOT NULL,
    distance    DOUBLE NOT NULL,
    PRIMARY KEY (genome_hash, model_a, model_b)
);

CREATE OR REPLACE VIEW distances AS
    SELECT genome_hash, model_a, model_b, similarity, distance FROM distance_pairs
    UNION ALL
    SELECT genome_hash, model_b AS model_a, model_a AS model_b, similarity, distance FROM distance_pairs;

CREATE SEQUENCE IF NOT EXISTS tree_snapshot_ids START 1;

CREATE TABLE IF NOT EXISTS tree_snapshots (
    snapshot_id    INTEGER PRIMARY KEY DEFAULT nextval('tree_snapshot_ids'),
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    genome_hash    VARCHAR NOT NULL,
    method         VARCHAR NOT NULL,  -- incremental | nj
    reason         VARCHAR NOT NULL,  -- insert | rebuild | bootstrap | publish (a sparse index's whole tree)
    inserted_model VARCHAR,
    n_leaves       INTEGER NOT NULL,
    newick         VARCHAR,  -- NULL: a placement record (sparse index: between full trees; see stats)
    stats          JSON
);

-- The tree as it stands, one row per genome, replaced (not appended) at each publish of a
-- sparse index: readers get every indexed model in the tree without a whole Newick appended
-- to tree_snapshots per publish (O(n) bytes each, O(n^2) over a backfill). `snapshot_id`:
-- the newest tree_snapshots row it includes.
CREATE TABLE IF NOT EXISTS current_tree (
    genome_hash VARCHAR PRIMARY KEY,
    snapshot_id INTEGER NOT NULL,
    n_leaves    INTEGER NOT NULL,
    newick      VARCHAR NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS scores (
    model_id  VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,
    value     DOUBLE NOT NULL,
    source    VARCHAR NOT NULL,
    PRIMARY KEY (model_id, benchmark, source)
);

CREATE TABLE IF NOT EXISTS estimates (
    model_id   VARCHAR NOT NULL,
    benchmark  VARCHAR NOT NULL,
    estimate   DOUBLE NOT NULL,
    low        DOUBLE NOT NULL,
    high       DOUBLE NOT NULL,
    method     VARCHAR NOT NULL,
    snapshot   INTEGER,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, benchmark, method)
);
