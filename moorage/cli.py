"""``moorage``: set up a cloud, enroll nodes, and look at what they hold.

Modelled on keadm (init, gettoken, join, reset) and kubectl (get, delete).
Errors go to stderr with a non-zero exit and say what to do.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from certs import CertError, pki
from certs.files import ensure_private_dir, write_private, write_public
from moorage import __version__, config, kubeconfig, yamlio
from moorage.client import AdminClient
from moorage.durations import format_age, parse_duration
from moorage.errors import ConfigError, MoorageError
from moorage.token import parse_token

DEFAULT_EDGE_DIR = "/var/lib/moorage/edge"
KINDS = {"node": "nodes", "nodes": "nodes", "no": "nodes"}


def _passphrase() -> bytes | None:
    from moorage.logs import passphrase

    return passphrase()


# ---------------------------------------------------------------- init

def cmd_init(args: argparse.Namespace) -> int:
    from cloudcore.config import CloudCoreConfig, Listener

    data = Path(args.data_dir).resolve()
    cfg_path = data / "cloudcore.yaml"
    if cfg_path.exists() and not args.force:
        raise ConfigError(f"{cfg_path} already exists: this cloud is set up. Use --force to "
                          "start over (this replaces the CA: every node must join again)")
    addresses = [a.strip() for a in args.advertise_address.split(",") if a.strip()]
    if not addresses:
        raise ConfigError("--advertise-address: give at least one address edges use to reach "
                          "the cloud")
    pki_dir = ensure_private_dir(data / "pki")
    ensure_private_dir(data)
    secret = _passphrase()
    ca = pki.create_ca("moorage-ca", key=pki.generate_key(args.key_algorithm))
    pki.save_pair(ca, pki.PairPaths(pki_dir / "ca.crt", pki_dir / "ca.key"), secret)
    server = pki.issue(ca, pki.subject("moorage-cloudcore"), lifetime=dt.timedelta(days=730),
                       server=True, sans=[*addresses, "localhost"])
    pki.save_pair(server, pki.PairPaths(pki_dir / "server.crt", pki_dir / "server.key"), secret)
    admin = pki.issue(ca, pki.subject("moorage-admin", pki.ADMIN_ORGANIZATION),
                      lifetime=dt.timedelta(days=365), client=True)
    write_private(pki_dir / "token.key", pki.random_secret(32))

    cfg = CloudCoreConfig(data_dir=str(data))
    hub = cfg.modules.cloud_hub
    hub.advertise_address = addresses
    hub.tls_ca_file, hub.tls_ca_key_file = str(pki_dir / "ca.crt"), str(pki_dir / "ca.key")
    hub.tls_cert_file = str(pki_dir / "server.crt")
    hub.tls_private_key_file = str(pki_dir / "server.key")
    hub.websocket = Listener(address=args.bind_address, port=args.websocket_port)
    hub.https = Listener(address=args.bind_address, port=args.https_port)
    cfg.modules.admin.address, cfg.modules.admin.port = args.bind_address, args.admin_port
    config.save(cfg, cfg_path, "# Written by `moorage init`. Reference: docs/configuration.md")

    kube_path = data / "admin.kubeconfig"
    admin_host = addresses[0] if ":" not in addresses[0] else f"[{addresses[0]}]"
    kubeconfig.write(kube_path, f"https://{admin_host}:{args.admin_port}",
                     pki.cert_to_pem(ca.cert), pki.cert_to_pem(admin.cert),
                     pki.key_to_pem(admin.key))
    kubeconfig.remember_default(kube_path)
    print(f"Cloud set up in {data}:")
    print(f"  CA hash        {pki.ca_hash(ca.cert)}")
    print(f"  server cert    valid for {', '.join(addresses)}")
    print(f"  config         {cfg_path}")
    print(f"  admin access   {kube_path} (also for kubectl --kubeconfig)")
    print("Next: start the cloud with")
    print(f"  cloudcore --config {cfg_path}")
    print("then get a join token for each edge node with `moorage gettoken`.")
    return 0


def cmd_renew_server(args: argparse.Namespace) -> int:
    """A new server key and certificate, for new addresses or before the old one expires."""
    from cloudcore import config as cloud_config

    cfg_path = Path(args.data_dir).resolve() / "cloudcore.yaml"
    cfg = cloud_config.load(cfg_path)
    hub = cfg.modules.cloud_hub
    if args.advertise_address:
        hub.advertise_address = [a.strip() for a in args.advertise_address.split(",")
                                 if a.strip()]
        config.save(cfg, cfg_path, "# Written by `moorage init`. Reference: docs/")
    secret = _passphrase()
    ca = pki.load_pair(pki.PairPaths(Path(hub.tls_ca_file), Path(hub.tls_ca_key_file)), secret)
    server = pki.issue(ca, pki.subject("moorage-cloudcore"), lifetime=dt.timedelta(days=730),
                       server=True, sans=[*hub.advertise_address, "localhost"])
    pki.save_pair(server, pki.PairPaths(Path(hub.tls_cert_file), Path(hub.tls_private_key_file)),
                  secret)
    print(f"New server certificate {pki.serial_hex(server.cert.serial_number)} for "
          f"{', '.join(hub.advertise_address)}, valid until "
          f"{pki.not_valid_after(server.cert):%Y-%m-%d}.")
    print("Load it without dropping nodes: `systemctl reload cloudcore` (or send SIGHUP).")
    return 0


# ---------------------------------------------------------------- cloud-facing

def _client(args: argparse.Namespace) -> AdminClient:
    path = Path(args.kubeconfig) if args.kubeconfig else None
    return AdminClient(kubeconfig.load(path))


def cmd_gettoken(args: argparse.Namespace) -> int:
    parse_duration(args.ttl, "--ttl")
    answer = _client(args).request("POST", "/apis/moorage.io/v1/jointokens", {"ttl": args.ttl})
    print(answer["status"]["token"])
    return 0


def _node_row(node: dict[str, Any], wide: bool) -> list[str]:
    meta, status = node.get("metadata", {}), node.get("status", {})
    ready = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
    state = "Ready" if ready.get("status") == "True" else "NotReady"
    created = meta.get("creationTimestamp")
    age = "<unknown>"
    if created:
        born = dt.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        age = format_age(time.time() - born.timestamp())
    info = status.get("nodeInfo", {})
    ip = next((a.get("address", "") for a in status.get("addresses", [])
               if a.get("type") == "InternalIP"), "<none>")
    row = [meta.get("name", ""), state, age, info.get("kubeletVersion", ""), ip]
    if wide:
        row += [info.get("osImage", ""), info.get("kernelVersion", ""),
                info.get("architecture", "")]
    return row


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
             for r in [header, *rows]]
    return "\n".join(lines)


def _kind(name: str) -> str:
    try:
        return KINDS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown resource type {name!r}: this version knows "
                          f"{', '.join(sorted(set(KINDS.values())))}") from None


def cmd_get(args: argparse.Namespace) -> int:
    _kind(args.kind)
    client = _client(args)
    if args.name:
        items = [client.request("GET", f"/api/v1/nodes/{args.name}")]
        whole: Any = items[0]
    else:
        whole = client.request("GET", "/api/v1/nodes")
        items = whole.get("items", [])
    if args.output == "json":
        print(json.dumps(whole, indent=2))
    elif args.output == "yaml":
        print(yamlio.dump(whole), end="")
    elif not items:
        print("No resources found", file=sys.stderr)
    else:
        header = ["NAME", "STATUS", "AGE", "VERSION", "INTERNAL-IP"]
        if args.output == "wide":
            header += ["OS-IMAGE", "KERNEL-VERSION", "ARCH"]
        print(_table(header, [_node_row(n, args.output == "wide") for n in items]))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _kind(args.kind)
    _client(args).request("DELETE", f"/api/v1/nodes/{args.name}")
    print(f'node "{args.name}" deleted (its certificates are revoked)')
    return 0


# ---------------------------------------------------------------- edge side

def cmd_join(args: argparse.Namespace) -> int:
    from edgecore.config import EdgeCoreConfig
    from moorage.enroll import Endpoint, fetch_ca, request_certificate

    data = Path(args.data_dir).resolve()
    cfg_path = data / "edgecore.yaml"
    node = (args.node_name or socket.gethostname()).lower()
    if cfg_path.exists() and not args.force:
        print(f"This machine is already enrolled ({cfg_path}); nothing changed. Use --force to "
              "enroll again (for example after its certificate expired).", file=sys.stderr)
        return 1
    token = parse_token(args.token)
    host, sep, port = args.cloudcore_ipport.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--cloudcore-ipport: expected HOST:PORT, got {args.cloudcore_ipport!r}")
    host = host.strip("[]")
    endpoint = Endpoint(host, args.certport)
    ca_pem = fetch_ca(endpoint, token)
    key = pki.generate_key()
    csr = pki.make_csr(key, pki.node_subject(node))
    cert_pem = request_certificate(endpoint, ca_pem, node, pki.csr_to_der(csr), token=token)
    cert = pki.cert_from_bytes(cert_pem)

    pki_dir = ensure_private_dir(data / "pki")
    secret = _passphrase()
    write_public(pki_dir / "ca.crt", ca_pem)
    pki.save_pair(pki.Issued(key, cert), pki.PairPaths(pki_dir / "edge.crt",
                                                       pki_dir / "edge.key"), secret)
    cfg = EdgeCoreConfig(data_dir=str(data))
    hub = cfg.modules.edge_hub
    bracket = f"[{host}]" if ":" in host else host
    hub.websocket.server = f"{bracket}:{port}"
    hub.http_server = f"https://{bracket}:{args.certport}"
    hub.tls_ca_file = str(pki_dir / "ca.crt")
    hub.tls_cert_file, hub.tls_private_key_file = str(pki_dir / "edge.crt"), str(
        pki_dir / "edge.key")
    cfg.modules.edged.hostname_override = node
    if args.node_ip:
        cfg.modules.edged.node_ip = args.node_ip
    config.save(cfg, cfg_path, "# Written by `moorage join`. It holds no token.")
    print(f"Node {node} enrolled: certificate valid until "
          f"{pki.not_valid_after(cert):%Y-%m-%d %H:%M UTC}, renewed automatically.")
    print("Next: start the edge daemon with")
    print(f"  edgecore --config {cfg_path}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    data = Path(args.data_dir).resolve()
    if not (data / "edgecore.yaml").exists() and not (data / "cloudcore.yaml").exists():
        print(f"{data} holds no Moorage node or cloud; nothing to reset.", file=sys.stderr)
        return 1
    if not args.force:
        print(f"This deletes {data} and everything in it (certificates, local store). "
              "Run again with --force to do it.", file=sys.stderr)
        return 1
    shutil.rmtree(data)
    print(f"Removed {data}. Delete the node at the cloud too: `moorage delete node NAME`.")
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moorage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"moorage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def cloud(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--kubeconfig", help="admin kubeconfig (default: $MOORAGE_KUBECONFIG, "
                                            "else the one `moorage init` wrote)")
        return p

    p = sub.add_parser("init", help="set up a cloud: CA, certificates, cloudcore.yaml")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--advertise-address", required=True,
                   help="comma-separated IPs or names edges use to reach the cloud")
    p.add_argument("--bind-address", default="0.0.0.0")  # noqa: S104
    p.add_argument("--websocket-port", type=int, default=10000)
    p.add_argument("--https-port", type=int, default=10002, help="enrollment service port")
    p.add_argument("--admin-port", type=int, default=6443)
    p.add_argument("--key-algorithm", choices=["ecdsa-p256", "rsa"], default="ecdsa-p256")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("certs", help="certificate chores on the cloud")
    certs_sub = p.add_subparsers(dest="certs_command", required=True)
    p = certs_sub.add_parser("renew-server", help="issue a new server certificate (SIGHUP "
                                                  "cloudcore to load it)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--advertise-address", help="replace the addresses the certificate names")
    p.set_defaults(func=cmd_renew_server)

    p = cloud(sub.add_parser("gettoken", help="print a join token"))
    p.add_argument("--ttl", default="24h", help="lifetime, e.g. 2h or 24h (at most 168h)")
    p.set_defaults(func=cmd_gettoken)

    p = sub.add_parser("join", help="enroll this machine as an edge node")
    p.add_argument("--cloudcore-ipport", required=True, help="the hub's HOST:PORT")
    p.add_argument("--token", required=True)
    p.add_argument("--node-name")
    p.add_argument("--node-ip", help="InternalIP to report (default: the address used to "
                                     "reach the cloud)")
    p.add_argument("--data-dir", default=DEFAULT_EDGE_DIR)
    p.add_argument("--certport", type=int, default=10002)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_join)

    p = cloud(sub.add_parser("get", help="list or show resources"))
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-o", "--output", choices=["wide", "yaml", "json"])
    p.set_defaults(func=cmd_get)

    p = cloud(sub.add_parser("delete", help="delete a resource (a node: revoke it too)"))
    p.add_argument("kind")
    p.add_argument("name")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("reset", help="remove this machine's Moorage state")
    p.add_argument("--data-dir", default=DEFAULT_EDGE_DIR)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_reset)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (MoorageError, CertError) as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"moorage: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
