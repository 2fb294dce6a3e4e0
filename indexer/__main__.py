"""`python -m indexer` is the `phylolm` command."""
from indexer.cli import main

if __name__ == "__main__":  # not when a spawned worker process (a dask worker) re-imports it
    main()
