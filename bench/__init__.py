"""`make bench`: the router's performance harness (run as `python -m bench` from the repo root).

It starts the real router under gunicorn on 127.0.0.1 in each configuration, drives bounded
load (wrk closed-loop for throughput, a Python open-loop client for latency), interleaves the
configurations round by round and writes docs/performance.md with PNG plots. Figures are
reported, never asserted.
"""
