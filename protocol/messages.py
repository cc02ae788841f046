"""Lists in messages kept short: the first few items, then how many more.

A federation of 1,000 clients must not put 1,000 ids on one error or console line.
"""

from __future__ import annotations

from collections.abc import Iterable

SHOWN = 8


def few(items: Iterable, shown: int = SHOWN) -> str:
    """`[0, 3, 7]`, or `[0, 1, 2, 3, 4, 5, 6, 7, ... and 992 more]` past `shown` items (as a list prints)."""
    items = list(items)
    if len(items) <= shown:
        return repr(items)
    return "[" + ", ".join(repr(i) for i in items[:shown]) + f", ... and {len(items) - shown} more]"


def grouped(pairs: Iterable[tuple[object, str]], shown: int = SHOWN) -> str:
    """`(id, text)` pairs as "client 0: oom; client 3: nan", or, when many, each distinct text once with
    the ids that gave it: "clients [0, 1, ... and 997 more]: oom" (at most `shown` texts)."""
    pairs = list(pairs)
    if len(pairs) <= shown:
        return "; ".join(f"client {who}: {text}" for who, text in pairs)
    by_text: dict[str, list] = {}
    for who, text in pairs:
        by_text.setdefault(text, []).append(who)
    parts = [f"client {ids[0]}: {text}" if len(ids) == 1 else f"clients {few(ids)}: {text}"
             for text, ids in list(by_text.items())[:shown]]
    rest = len(by_text) - shown
    return "; ".join(parts) + (f"; ... and {rest} other errors" if rest > 0 else "")
