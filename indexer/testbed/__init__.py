"""What exists to run the job without the internet: the loopback Hub server and its fault
injection, the zoo of real small models, the demo, and the zoo's known relations.

Nothing in the job's own path depends on this package; the CLI uses it for ``phylolm demo``,
``phylolm hub serve`` and ``--hub DIR``, the tests for their Hub and models.
"""
