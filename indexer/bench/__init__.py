"""Benchmarks behind ``phylolm bench``: each prints figures (ratios against a baseline run
side by side), none asserts a time. Long measurements are scripts in ``benchmarks/``.
"""
