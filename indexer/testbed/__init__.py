"""What exists to run the job without the internet: the loopback Hub (``hub``: the server and
its fault injection), the zoo of real small models, the demo, and the zoo's known relations.

Nothing in the job's own path depends on this package: the CLI uses it for ``phylolm demo``
and ``phylolm hub serve``, the application to serve a ``--hub DIR`` folder
(``indexer.app.hub.open_hub``), the tests for their Hub and models.
"""
