"""The application: the defaults, settings and the job's configuration, the Hub set-up, the
job's steps (list, probe, write), the single writer and its locks. It composes the core and
the adapters; the CLI and ``pipelines/`` call it.
"""
