"""Benchmarks behind ``phylolm bench``: each prints figures (ratios against a baseline run
side by side), none asserts a time. ``index`` (the incremental index on a simulated
ecosystem), ``estimates`` (leave-one-family-out on the paper's data), ``probe`` (seconds per
model of a backend), and ``nj_peers`` (our NJ beside quicktree and clearcut, for the
agreement test and its timing script). Long measurements are scripts in ``benchmarks/``.
"""
