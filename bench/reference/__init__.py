"""Measurement experiments kept as references, apart from the benchmark proper.

The benchmark (``python -m bench``) compares netpoll with other libraries. The modules here
answer narrower questions that docs/performance.md cites, and are kept so that its figures
can be reproduced:

- ``floors``: the reference floors ``floor-api``, ``floor-api-safe`` and
  ``floor-api-owned``, netpoll's handler API served with as little as possible around it
  (run by ``bench.server`` when ``--contenders`` names them);
- ``linkbuffer_frames``: ``LinkBuffer`` against the bytearray way of parsing frames
  (``python -m bench.reference.linkbuffer_frames``).

``bench.request_cost`` and ``bench.reader_calls``, the per-request and per-call cost
tools, stay in ``bench``.
"""
