"""The netpoll benchmark: identical servers per contender, real load tools, a report.

Run ``python -m bench --help``. Layout: ``protocols`` (the shared request logic),
``server`` (one server process per contender and workload), ``loadgen.c`` (the C load
generator), ``tools`` (load tools and their output parsers), ``runner`` (processes,
measurement, progress), ``report`` (JSON, table, chart, docs), ``cli`` (the entry point).
"""
