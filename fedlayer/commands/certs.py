"""`fedlayer certs`: TLS certificates (and SuperNode auth keys) for Flower's deployment engine."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Make what a TLS deployment (one flower-superlink, one flower-supernode per client) needs, in OUT_DIR:
ca.crt (a private certificate authority: give it to every SuperNode and to the flwr CLI), ca.key,
server.pem and server.key (the SuperLink's certificate for every --host, signed by the CA), and with
--supernode-keys N the key pairs supernode-K / supernode-K.pub (K = 0..N-1) for SuperNode
authentication. Private keys are readable by their owner only. Existing files are kept unless --force.
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "certs", help="make TLS certificates and SuperNode keys for a deployment", description=DESCRIPTION
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder for the certificates and keys")
    p.add_argument(
        "--host",
        dest="hosts",
        action="append",
        metavar="HOST",
        help="IP address or DNS name the SuperNodes use to reach the SuperLink (repeatable; "
        "default: 127.0.0.1 and localhost)",
    )
    p.add_argument(
        "--supernode-keys",
        type=int,
        default=0,
        metavar="N",
        help="also make N SuperNode authentication key pairs (ECDSA P-384, OpenSSH format)",
    )
    p.add_argument("--days", type=int, help="validity of the certificates in days (default: 365)")
    p.add_argument("--force", action="store_true", help="replace existing certificates and keys")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedlayer.console import make_console
    from fedlayer.deploy import DEFAULT_DAYS, DEFAULT_HOSTS, make_certificates

    made = make_certificates(
        args.out_dir,
        args.hosts or DEFAULT_HOSTS,
        supernode_keys=args.supernode_keys,
        days=DEFAULT_DAYS if args.days is None else args.days,
        overwrite=args.force,
    )
    console = make_console()
    console.print(f"wrote {len(made.files())} files to {made.ca_cert.parent}:")
    for path in made.files():
        console.print(f"  {path.name}")
    console.print(
        "SuperLink:  flower-superlink --host 0.0.0.0 --disable-runtime-dependency-installation "
        f"--ssl-ca-certfile {made.ca_cert} --ssl-certfile {made.server_cert} --ssl-keyfile {made.server_key}"
        + (" --enable-supernode-auth" if made.supernode_keys else ""),
        soft_wrap=True,
    )
    console.print(
        f"SuperNode:  flower-supernode --root-certificates {made.ca_cert} --superlink HOST:8000 "
        '--node-config "partition-id=K num-partitions=N"'
        + (
            f" --auth-supernode-private-key {made.supernode_keys[0][0].parent}/supernode-K"
            if made.supernode_keys
            else ""
        ),
        soft_wrap=True,
    )
    if made.supernode_keys:
        console.print(
            "Register each SuperNode's public key first: flwr supernode register "
            f"{made.supernode_keys[0][1].parent}/supernode-K.pub CONNECTION",
            soft_wrap=True,
        )
    return 0
