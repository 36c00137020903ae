"""Fleet triage: crash signatures, buckets of dumps that crashed the same way, a
database of results that lasts between runs, and a distributed engine (Dask).

signature.py  the crash signature (kind, normalized message, top frames)
hashing.py    a dump's content hash: quick (size + head/tail) and full when needed
analyze.py    one dump -> a compact result (what a worker sends back)
db.py         the SQLite database of results, keyed by content hash
engine.py     discovery, hashing, local or Dask analysis, buckets
render.py     JSON, Markdown, HTML and terminal renderings of a triage
"""

from .signature import Facts, Signature, signature

__all__ = ["Facts", "Signature", "signature"]
