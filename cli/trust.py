"""``snowhub keys generate`` and ``snowhub trust add|list``: the Ed25519 keys that sign task bundles, and the ones
a hub trusts (:mod:`snowhub.export.signing`, docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from snowhub import Hub
from snowhub.export.signing import fingerprint, generate_key
from snowhub_cli import render
from snowhub_cli.options import HubOption, JsonOption, RegistryOption, one_line_errors

keys = typer.Typer(help="Ed25519 keys that sign task bundles (`snowhub export task --sign KEYFILE`).",
                   no_args_is_help=True)
trust = typer.Typer(help="The public keys whose signed task bundles this hub imports.", no_args_is_help=True)


@keys.command("generate")
def generate(
    keyfile: Annotated[Path, typer.Argument(help="The new private key file (PEM); its public key goes to KEYFILE.pub.")],
    as_json: JsonOption = False,
) -> None:
    """Make an Ed25519 key pair (the same files as `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`)."""
    with one_line_errors():
        private, public, key = generate_key(keyfile)
        if as_json:
            render.print_json({"private_key": str(private), "public_key_file": str(public), "public_key": key,
                               "fingerprint": fingerprint(key)})
        else:
            render.line(f"wrote {private} (keep it secret) and {public}; public key {key} ({fingerprint(key)}); "
                        f"hubs that should import your bundles run `snowhub trust add {public}`")


@trust.command("add")
def add(
    public_key: Annotated[str, typer.Argument(help="A public key file (PEM) or the key's 64 hex digits.")],
    comment: Annotated[str, typer.Option("--comment", help="Whose key this is (recorded with it).")] = "",
    hub: HubOption = None,
    registry: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Trust bundles signed by this key from now on: a sealed, append-only row in the hub's registry."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        key = h.trust_key(public_key, comment)
        if as_json:
            render.print_json(key.to_dict())
        else:
            render.line(f"trusted key {key.seq}: {key.fingerprint} ({key.public_key}){' ' + comment if comment else ''}")


@trust.command("list")
def list_keys(hub: HubOption = None, registry: RegistryOption = None, as_json: JsonOption = False) -> None:
    """The keys this hub trusts, in the order they were added."""
    with one_line_errors(), Hub.open(hub, registry=registry) as h:
        found = h.trusted_keys()
        if as_json:
            render.print_json([k.to_dict() for k in found])
            return
        if not found:
            render.line("no trusted keys; `snowhub trust add PUBKEY` adds one")
        for k in found:
            render.line(f"{k.seq}  {k.fingerprint}  {k.public_key}  {k.created_at:%Y-%m-%d %H:%M} UTC  {k.comment}")
