"""The netpoll benchmark: identical servers per contender, real load tools, a report.

Run ``python -m bench --help``. Layout: ``protocols`` (the shared request logic),
``server`` (one server process per contender and workload), ``handlers`` (netpoll's
``on_request`` for each workload), ``_net`` (loopback listening and accepting, shared by
the servers and the floors), ``loadgen.c`` (the C load generator), ``tools`` (load tools
and their output parsers), ``runner`` (processes, measurement, progress), ``report``
(JSON, table, chart, docs), ``cli`` (the entry point).

Beside the benchmark: ``request_cost`` and ``reader_calls`` (what one request and one
Reader call cost, without a load generator) and ``reference`` (the reference floors and the
LinkBuffer microbenchmark), the experiments docs/performance.md cites.
"""
