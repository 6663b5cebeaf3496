"""The schema of every JSON member of a task bundle, checked before any value is used.

A bundle's hashes say its members are the ones its manifest lists, and its signature says who listed them;
neither says a value makes sense. A hand-edited ``"image_size": "abc"`` or ``"val_top1": "lots"`` (with the
manifest re-hashed) used to crash ``import`` with a traceback. Each member is checked here against a small
declarative schema (types, ranges, formats, required and allowed keys), and the first value that does not fit
is a one-line refusal naming the member, the field and what it should be.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

from snowhub.export.errors import BundleError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX128 = re.compile(r"^[0-9a-f]{128}$")


class _Bad(Exception):
    def __init__(self, where: str, want: str, value: object):
        super().__init__(where)
        self.where, self.want, self.value = where, want, value


def _int(lo: int = 0, hi: int = 1 << 62):
    def check(v, at):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad(at, f"an integer {lo}..{hi}", v)
    return check


def _num(lo: float = 0.0, hi: float = math.inf):
    def check(v, at):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise _Bad(at, f"a number {lo:g}..{hi:g}", v)
    return check


def _str(pattern: re.Pattern | None = None, what: str = "a string"):
    def check(v, at):
        if not isinstance(v, str) or not v or len(v) > 4096 or (pattern is not None and not pattern.match(v)):
            raise _Bad(at, what, v)
    return check


def _time(v, at):
    try:
        datetime.fromisoformat(v)
    except (TypeError, ValueError):
        raise _Bad(at, "an ISO 8601 time", v) from None


def _list(item, min_len: int = 0):
    def check(v, at):
        if not isinstance(v, list) or len(v) < min_len:
            raise _Bad(at, f"a list of at least {min_len}", v)
        for i, x in enumerate(v):
            item(x, f"{at}[{i}]")
    return check


def _map(value):
    def check(v, at):
        if not isinstance(v, dict) or not v:
            raise _Bad(at, "a non-empty object", v)
        for k, x in v.items():
            value(x, f"{at}.{k}")
    return check


def _obj(fields: dict, optional: tuple[str, ...] = (), extra: bool = False):
    def check(v, at):
        if not isinstance(v, dict):
            raise _Bad(at or "the member", "an object", v)
        for name, field in fields.items():
            if name not in v:
                if name in optional:
                    continue
                raise _Bad(f"{at}.{name}".lstrip("."), "present", "nothing")
            if v[name] is None and name in optional:
                continue
            field(v[name], f"{at}.{name}".lstrip("."))
        unknown = sorted(set(v) - set(fields))
        if unknown and not extra:
            raise _Bad(f"{at}.{unknown[0]}".lstrip("."), "absent (not a field of this member)", v[unknown[0]])
    return check


def _any_object(v, at):
    if not isinstance(v, dict):
        raise _Bad(at, "an object", v)


_SHA = _str(_HEX64, "a sha256 (64 lowercase hex digits)")
_SIZE = _int(1, 1 << 40)

MANIFEST = _obj({"format": _str(), "snowhub": _str(),
                 "members": _map(_obj({"size": _int(0, 1 << 40), "sha256": _SHA}))})
SOURCE = _obj({"name": _str(), "taps": _list(_any_object, 1), "weights_sha256": _SHA, "tensors_sha256": _SHA,
               "preprocessing": _obj({"image_size": _SIZE}, extra=True)})
TASK = _obj({
    "name": _str(), "version": _int(1), "seq": _int(1), "created_at": _time, "exported_at": _time, "hub": _str(),
    "class_names": _list(_str(), 1), "cp_indices": _map(_list(_int(0), 1)),
    "hyperparams": _obj({"image_size": _int(1, 4096), "delta_shape": _any_object}, extra=True),
    "delta_params": _int(0), "cp_params": _int(0), "val_top1": _num(0, 100), "val_top5": _num(0, 100),
    "val_loss": _num(0), "train_seconds": _num(0), "train_images_per_s": _num(0), "metrics": _any_object,
    "dataset_fingerprint": _str(), "dataset_summary": _any_object, "probe_environment": _any_object,
    "probe_size": _int(1), "probe_top1": _num(0, 100), "probe_logits_sha256": _SHA, "delta_sha256": _SHA,
    "probe_sha256": _SHA, "lineage": _any_object}, optional=("probe_environment", "lineage", "version"))
SIGNATURE = _obj({"algorithm": _str(re.compile(r"^ed25519$"), "ed25519"), "public_key": _SHA,
                  "signature": _str(_HEX128, "128 hex digits")})


def validate(member: str, value: dict, schema, where: Path) -> None:
    """Check one JSON member of the bundle at `where` against its schema (:data:`TASK`, :data:`SOURCE`, ...).

    Raises:
        BundleError: one line naming the member, the field, what it should be and what it holds.
    """
    try:
        schema(value, "")
    except _Bad as bad:
        shown = repr(bad.value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise BundleError(f"{where}: {member} field {bad.where} must be {bad.want}, not {shown}; the bundle was "
                          "edited or damaged, not imported") from None
