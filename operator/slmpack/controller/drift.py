"""Does the cluster's copy of an object already hold what we would apply? Pure.

Server-side apply of an unchanged manifest is a no-op for the object but still a request (and
an audit-log entry, and with 1,000 SLMDeployments, a storm). So the controller first checks
that every field it owns already has its value; the apiserver's defaults and other managers'
fields are ignored.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

#: A Kubernetes quantity: number, then a binary or decimal suffix or an exponent.
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[eE][+-]?[0-9]+|[numkMGTPE])?$"
)
_MULTIPLIERS = {
    "": Decimal(1),
    **{f"{s}i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6))},
    **{s: Decimal(10) ** e for s, e in (("G", 9), ("T", 12), ("P", 15), ("E", 18))},
}


def _quantity(value: int | str) -> Decimal | None:
    match = _QUANTITY.match(str(value))
    if match is None:
        return None
    suffix = match["suffix"] or ""
    if suffix not in _MULTIPLIERS:  # an exponent
        return Decimal(f"{match['number']}{suffix}")
    return Decimal(match["number"]) * _MULTIPLIERS[suffix]


def _same_scalar(want: Any, have: Any) -> bool:
    # True == 1 in Python, but a bool and a number are different JSON values.
    if isinstance(want, bool) or isinstance(have, bool):
        return type(want) is type(have) and want == have
    if want == have:
        return True
    if isinstance(want, (int, str)) and isinstance(have, (int, str)):
        # The apiserver returns int-or-string fields as sent, but quantities in canonical
        # form: 8 comes back as "8", "0.5" as "500m", "1.5Gi" as "1536Mi".
        if str(want) == str(have):
            return True
        want_q, have_q = _quantity(want), _quantity(have)
        return want_q is not None and want_q == have_q
    return False


def contains(have: Any, want: Any) -> bool:
    """True when `have` holds every field of `want` with the same value."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        return all(k in have and contains(have[k], v) for k, v in want.items())
    if isinstance(want, list):
        if not isinstance(have, list) or len(have) != len(want):
            return False
        return all(contains(h, w) for h, w in zip(have, want, strict=True))
    return _same_scalar(want, have)
