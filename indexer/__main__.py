"""`python -m indexer` is the `phylolm` command."""
from indexer.cli import main

main()
