"""The semantically rich graph (SRG) as tooling sees it.

Each captured node carries its op (``name.overload``), semantics (``op_class``:
compute- or memory-bound; ``phase``: prefill, decode or none) and lifecycle
(``persistent`` if the client still held its output when the fragment was flushed,
else ``ephemeral``).
"""

from . import _C


def snapshot():
    """The last flushed fragment as a list of ``(op, semantics, lifecycle)`` tuples."""
    nodes, _ = _C._srg()
    return nodes


def fingerprint():
    """Hex XXH3-128 of the last flushed fragment (op ids, shapes, dtypes, scalars, wiring)."""
    return _C._srg()[1]
