"""A per-model cache of compiled builds that keeps only the most recently used ones.

`coherence.compiled_for` and `exact_fallback`'s eager functions key their builds on objects a
caller may create afresh on every call (a loss object, the per-example loss decomposition); each
build holds traced graphs (and, for `measure`, parameter-sized float64 sums), so an unbounded
cache grows with every such call for as long as the model lives.
"""

from typing import Any, Hashable

MAX_BUILDS_PER_MODEL = 8


def put_recent(cache: dict, key: Hashable, entry: Any, bound: int = MAX_BUILDS_PER_MODEL) -> Any:
    """Stores `entry` under `key` as the most recently used (dict order: oldest first) and drops
    the least recently used entries beyond `bound`; returns `entry`."""
    cache.pop(key, None)
    cache[key] = entry
    while len(cache) > bound:
        del cache[next(iter(cache))]
    return entry
