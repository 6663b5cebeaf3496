"""The keys a hub trusts to sign task bundles: sealed, append-only rows of the ``trusted_key`` table (schema 0006).

:func:`trust_key` appends one (``snowhub trust add``); :func:`trusted_keys` reads them back, each seal checked,
so a key slipped into the table behind snowhub's back (``INSERT INTO trusted_key ...`` without a valid seal) is
never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from snowhub.errors import ConfigError, IntegrityError
from snowhub.store.integrity import record_problem, seal
from snowhub.store.models import TrustedKeyRow
from snowhub.store.registry import Registry


@dataclass(frozen=True)
class TrustedKey:
    """A trusted public key: its place in the append order, the raw Ed25519 key (64 hex), its fingerprint, the
    comment given when it was added, and when (UTC)."""

    seq: int
    public_key: str
    fingerprint: str
    comment: str
    created_at: datetime

    def to_dict(self) -> dict:
        return {"seq": self.seq, "public_key": self.public_key, "fingerprint": self.fingerprint,
                "comment": self.comment, "created_at": self.created_at.isoformat()}


def trusted_keys(registry: Registry) -> dict[str, TrustedKey]:
    """Every trusted key, public key (hex) → :class:`TrustedKey`, in the order they were added.

    Raises:
        IntegrityError: a row whose seal does not hold (edited or inserted behind snowhub's back).
    """
    with registry._reading() as session:
        rows = registry._rows(session, "trusted_key")
        keys = {}
        for raw in rows:
            if problem := record_problem(raw, "trusted_key"):
                raise IntegrityError(f"trusted key {raw.get('seq')} of {registry.location} cannot be trusted: "
                                     f"{problem}; restore the registry from a backup")
            row = session.get(TrustedKeyRow, raw["seq"])
            keys[row.public_key] = TrustedKey(row.seq, row.public_key, row.fingerprint, row.comment, row.created_at)
    return keys


def trust_key(registry: Registry, public_key: str, fingerprint: str, comment: str = "") -> TrustedKey:
    """Append `public_key` (64 hex digits) to the keys the hub trusts, as a sealed row in one transaction.

    Raises:
        ConfigError: the key is trusted already. HubReadOnlyError: the registry cannot be written.
    """
    with registry._writing() as session:
        if session.scalar(select(TrustedKeyRow).where(TrustedKeyRow.public_key == public_key)) is not None:
            raise ConfigError(f"the key {fingerprint} is trusted already")
        seq = (session.scalar(select(func.max(TrustedKeyRow.seq))) or 0) + 1
        row = TrustedKeyRow(seq=seq, public_key=public_key, fingerprint=fingerprint, comment=comment)
        session.add(row)
        session.flush()
        seal(session.connection(), "trusted_key", seq)
        return TrustedKey(seq, public_key, fingerprint, comment, row.created_at)
