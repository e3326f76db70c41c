"""``moorage``: set up a cloud, enroll nodes, and look at what they hold.

Modelled on keadm (init, gettoken, join, reset) and kubectl (get, delete).
Errors go to stderr with a non-zero exit and say what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from certs import CertError, pki
from certs.files import ensure_private_dir, write_private, write_public
from moorage import __version__, config, fields, kubeconfig, resources, tables, yamlio
from moorage.client import TABLE, AdminClient
from moorage.durations import parse_duration
from moorage.errors import APIError, ConfigError, ManifestError, MoorageError
from moorage.token import parse_token

DEFAULT_EDGE_DIR = "/var/lib/moorage/edge"
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
INSTALL_HELP = ("also write the systemd unit ($MOORAGE_SYSTEMD_DIR or /etc/systemd/system) and "
                "enable it when systemd runs this machine")


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
    config.save(cfg, cfg_path, "# Written by `moorage init`. Reference: docs/operators-guide.md")

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
    if args.install_service:
        from moorage import services

        services.install_cloud(cfg_path, data)
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


def cmd_renew_admin(args: argparse.Namespace) -> int:
    """A new admin key and certificate in <data-dir>/admin.kubeconfig (same server URL)."""
    from cloudcore import config as cloud_config

    data = Path(args.data_dir).resolve()
    cfg = cloud_config.load(data / "cloudcore.yaml")
    hub = cfg.modules.cloud_hub
    kube_path = data / "admin.kubeconfig"
    doc = yamlio.load_file(kube_path) if kube_path.exists() else None
    clusters = doc.get("clusters") if isinstance(doc, dict) else None
    server = (clusters[0].get("cluster", {}).get("server") if isinstance(clusters, list)
              and clusters and isinstance(clusters[0], dict) else None)
    if not isinstance(server, str) or not server.startswith("https://"):
        admin_host = hub.advertise_address[0]
        admin_host = admin_host if ":" not in admin_host else f"[{admin_host}]"
        server = f"https://{admin_host}:{cfg.modules.admin.port}"
    secret = _passphrase()
    ca = pki.load_pair(pki.PairPaths(Path(hub.tls_ca_file), Path(hub.tls_ca_key_file)), secret)
    admin = pki.issue(ca, pki.subject("moorage-admin", pki.ADMIN_ORGANIZATION),
                      lifetime=dt.timedelta(days=365), client=True)
    kubeconfig.write(kube_path, server, pki.cert_to_pem(ca.cert), pki.cert_to_pem(admin.cert),
                     pki.key_to_pem(admin.key))
    print(f"New admin certificate {pki.serial_hex(admin.cert.serial_number)} in {kube_path}, "
          f"valid until {pki.not_valid_after(admin.cert):%Y-%m-%d}. Copies of the old "
          "kubeconfig keep working until their certificate expires.")
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


def _table(header: list[str], rows: list[list[Any]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False))
                     .rstrip() for r in [header, *rows])


def _namespace(args: argparse.Namespace, kind: resources.Kind) -> str | None:
    if not kind.namespaced or getattr(args, "all_namespaces", False):
        return None
    return args.namespace or "default"


def _query(args: argparse.Namespace) -> str:
    params = {}
    if getattr(args, "selector", None):
        params["labelSelector"] = args.selector
    if getattr(args, "field_selector", None):
        params["fieldSelector"] = args.field_selector
    return ("?" + urlencode(params)) if params else ""


def _rows(table: dict[str, Any], wide: bool, all_namespaces: bool
          ) -> tuple[list[str], list[list[Any]]]:
    columns = [(i, c) for i, c in enumerate(table.get("columnDefinitions", []))
               if wide or c.get("priority", 0) == 0]
    header = [c["name"].upper() for _, c in columns]
    rows = []
    for row in table.get("rows", []):
        cells = [row["cells"][i] for i, _ in columns]
        if all_namespaces:
            cells.insert(0, row.get("object", {}).get("metadata", {}).get("namespace", ""))
        rows.append(cells)
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    return header, rows


def cmd_get(args: argparse.Namespace) -> int:
    kind = resources.lookup(args.kind)
    client = _client(args)
    namespace = _namespace(args, kind)
    path = kind.object_path(args.name, namespace) if args.name else \
        kind.collection_path(namespace)
    if args.output in ("json", "yaml"):
        whole = client.request("GET", path + _query(args))
        print(json.dumps(whole, indent=2) if args.output == "json" else yamlio.dump(whole),
              end="\n" if args.output == "json" else "")
        return 0
    table = client.request("GET", path + _query(args), accept=TABLE)
    header, rows = _rows(table, args.output == "wide", bool(getattr(args, "all_namespaces", 0)))
    if rows:
        print(_table(header, rows), flush=True)
    elif not args.watch:
        where = f" in {namespace} namespace" if namespace else ""
        print(f"No resources found{where}.", file=sys.stderr)
    if not args.watch:
        return 0
    rv = table.get("metadata", {}).get("resourceVersion", "")
    sep = "&" if _query(args) else "?"
    watch_path = kind.collection_path(namespace) + _query(args) + \
        f"{sep}watch=true&resourceVersion={rv}"
    if args.name:
        watch_path += f"&fieldSelector=metadata.name%3D{args.name}"
    widths_header = header
    for event in client.watch(watch_path):
        if event.get("type") == "ERROR":
            raise APIError(410, event.get("object", {}).get("message", "watch failed"))
        _, event_rows = _rows(event.get("object", {}), args.output == "wide",
                              bool(getattr(args, "all_namespaces", 0)))
        for row in event_rows:
            print(_table(widths_header, [row]).splitlines()[1], flush=True)
    return 0


def _documents(path: str) -> list[tuple[str, Any]]:
    """Every YAML document from a file, a directory of them, or stdin (``-``)."""
    sources: list[tuple[str, bytes]] = []
    if path == "-":
        sources.append(("stdin", sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)))
    else:
        target = Path(path)
        files = sorted(p for p in target.iterdir() if p.suffix in (".yaml", ".yml", ".json")) \
            if target.is_dir() else [target]
        for file in files:
            with open(file, "rb") as handle:
                sources.append((str(file), handle.read(MAX_MANIFEST_BYTES + 1)))
    docs = []
    for source, data in sources:
        for index, doc in enumerate(yamlio.load_all(data, source, MAX_MANIFEST_BYTES)):
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                docs.extend((f"{source}#{index}", item) for item in doc.get("items") or [])
            else:
                docs.append((f"{source}#{index}", doc))
    return docs


def _check_fields(args: argparse.Namespace, kind: resources.Kind, obj: dict[str, Any],
                  where: str) -> None:
    """``--validate``: strict (the default, like kubectl) refuses unknown fields; strict and
    warn print a warning for each field Moorage ignores (and warn for unknown ones)."""
    mode = getattr(args, "validate", "ignore")  # delete -f: fields do not matter
    if mode == "ignore":
        return
    report = fields.check_fields(kind.kind, obj)
    if mode == "strict" and report.unknown:
        raise resources.ValidationError(kind.kind, obj["metadata"].get("name", ""),
                                        report.unknown)
    for line in report.warnings():
        print(f"Warning: {where}: {line}", file=sys.stderr)


def _validated(args: argparse.Namespace) -> list[tuple[resources.Kind, dict[str, Any]]]:
    """All documents checked first: one bad document means nothing is applied."""
    checked, problems = [], []
    for where, doc in _documents(args.filename):
        try:
            kind, obj = resources.validate(doc, args.namespace or "default")
            _check_fields(args, kind, obj, where)
            size = len(json.dumps(obj))
            if size > resources.MAX_OBJECT_BYTES:
                raise ManifestError(f"{kind.kind} is {size} bytes, more than the "
                                    f"{resources.MAX_OBJECT_BYTES}-byte limit for one object")
            checked.append((kind, obj))
        except ManifestError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise ManifestError("nothing was applied; fix these first:\n  " + "\n  ".join(problems))
    return checked


def cmd_apply(args: argparse.Namespace) -> int:
    client = _client(args)
    for kind, obj in _validated(args):
        meta = obj["metadata"]
        namespace = meta.get("namespace") if kind.namespaced else None
        label = f"{kind.singular}/{meta['name']}"
        try:
            current = client.request("GET", kind.object_path(meta["name"], namespace))
        except APIError as exc:
            if exc.status != 404:
                raise
            client.request("POST", kind.collection_path(namespace), obj)
            print(f"{label} created")
            continue
        updated = client.request("PUT", kind.object_path(meta["name"], namespace), obj)
        same = updated["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]
        print(f"{label} {'unchanged' if same else 'configured'}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    client = _client(args)
    targets: list[tuple[resources.Kind, str, str | None]] = []
    if args.filename:
        for kind, obj in _validated(args):
            meta = obj["metadata"]
            targets.append((kind, meta["name"], meta.get("namespace") if kind.namespaced
                            else None))
    elif args.kind and args.name:
        kind = resources.lookup(args.kind)
        targets.append((kind, args.name, _namespace(args, kind)))
    else:
        raise ConfigError("say what to delete: `moorage delete KIND NAME` or `-f FILE`")
    for kind, name, namespace in targets:
        client.request("DELETE", kind.object_path(name, namespace))
        extra = " (its certificates are revoked)" if kind.plural == "nodes" else ""
        print(f'{kind.singular} "{name}" deleted{extra}')
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    params = {}
    if args.container:
        params["container"] = args.container
    if args.tail is not None:
        params["tailLines"] = str(args.tail)
    path = resources.lookup("pods").object_path(args.pod, args.namespace or "default") + \
        "/log" + ("?" + urlencode(params) if params else "")
    text = _client(args).request("GET", path, accept="text/plain")
    sys.stdout.write(text if isinstance(text, str) else json.dumps(text))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    """An HTTP request to an app on a node, through the cloud and the node's ServiceBus."""
    from urllib.parse import quote

    if not 0 < args.port < 65536:
        raise ConfigError(f"PORT: expected 1-65535, got {args.port}")
    data = None if args.data is None else Path(args.data[1:]).read_bytes() \
        if args.data.startswith("@") else args.data.encode()
    method = (args.request or ("POST" if data is not None else "GET")).upper()
    path = quote(args.path.lstrip("/"), safe="/?&=%:+,;@-._~")
    status, headers, body = _client(args).raw(
        method, f"/api/v1/nodes/{quote(args.node, safe='')}/proxy/{args.port}/{path}", data,
        args.content_type)
    if args.include:
        print(f"HTTP {status}")
        for name, value in headers:
            print(f"{name}: {value}")
        print()
    if status >= 400 and not args.include:
        sys.stderr.write(f"moorage call: HTTP {status}: "
                         f"{body.decode('utf-8', 'replace').strip()[:2000]}\n")
        return 1
    sys.stdout.buffer.write(body)
    sys.stdout.flush()
    return 0 if status < 400 else 1


def cmd_describe(args: argparse.Namespace) -> int:
    kind = resources.lookup(args.kind)
    obj = _client(args).request("GET", kind.object_path(args.name, _namespace(args, kind)))
    meta = obj.get("metadata", {})
    lines = [f"Name:         {meta.get('name')}"]
    if kind.namespaced:
        lines.append(f"Namespace:    {meta.get('namespace')}")
    for title, field in (("Labels", "labels"), ("Annotations", "annotations")):
        values = meta.get(field) or {}
        text = "\n              ".join(f"{k}={v}" for k, v in sorted(values.items()))
        lines.append(f"{title + ':':<14}{text or '<none>'}")
    lines.append(f"Created:      {meta.get('creationTimestamp')}")
    lines.append(f"Version:      {meta.get('resourceVersion')}")
    for section in ("spec", "data", "status"):
        if obj.get(section):
            body = yamlio.dump(obj[section]).rstrip().replace("\n", "\n  ")
            lines.append(f"{section.capitalize()}:\n  {body}")
    if kind.plural == "devices":
        status = obj.get("status") or {}
        lines.append(f"State:        {status.get('state') or 'unknown'}"
                     f" (last online: {status.get('lastOnlineTime') or 'never'})")
        rows = tables.device_properties(obj)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines.append("Properties:")
        lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                  .rstrip() for row in rows]
    print("\n".join(lines))
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
    if cfg_path.exists():  # --force: keep what the operator set; renew only what join owns
        from edgecore import config as edge_config

        try:
            cfg = edge_config.load(cfg_path)
            cfg.data_dir = str(data)
        except MoorageError as exc:
            print(f"The existing {cfg_path} cannot be read ({exc}); writing a fresh one.",
                  file=sys.stderr)
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
    if args.remote_runtime_endpoint:
        cfg.modules.edged.remote_runtime_endpoint = args.remote_runtime_endpoint
    config.save(cfg, cfg_path, "# Written by `moorage join`. It holds no token.")
    print(f"Node {node} enrolled: certificate valid until "
          f"{pki.not_valid_after(cert):%Y-%m-%d %H:%M UTC}, renewed automatically.")
    print("Next: start the edge daemon with")
    print(f"  edgecore --config {cfg_path}")
    if args.install_service:
        from moorage import services

        services.install_edge(cfg_path, data)
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
    p.add_argument("--install-service", action="store_true", help=INSTALL_HELP)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("certs", help="certificate chores on the cloud")
    certs_sub = p.add_subparsers(dest="certs_command", required=True)
    p = certs_sub.add_parser("renew-server", help="issue a new server certificate (SIGHUP "
                                                  "cloudcore to load it)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--advertise-address", help="replace the addresses the certificate names")
    p.set_defaults(func=cmd_renew_server)
    p = certs_sub.add_parser("renew-admin", help="issue a new admin certificate into "
                                                 "<data-dir>/admin.kubeconfig")
    p.add_argument("--data-dir", required=True)
    p.set_defaults(func=cmd_renew_admin)

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
    p.add_argument("--remote-runtime-endpoint",
                   help="the CRI socket edged uses (default unix:///run/containerd/"
                        "containerd.sock; checked: root-owned, not world-writable)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--install-service", action="store_true", help=INSTALL_HELP)
    p.set_defaults(func=cmd_join)

    p = cloud(sub.add_parser("get", help="list or show resources"))
    p.add_argument("kind")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["wide", "yaml", "json"])
    p.add_argument("-l", "--selector", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("--field-selector", help="e.g. spec.nodeName=edge-1")
    p.add_argument("-w", "--watch", action="store_true")
    p.set_defaults(func=cmd_get)

    p = cloud(sub.add_parser("apply", help="create or update resources from manifests"))
    p.add_argument("-f", "--filename", required=True, help="a file, a directory, or -")
    p.add_argument("-n", "--namespace")
    p.add_argument("--validate", choices=["strict", "warn", "ignore"], default="strict",
                   help="unknown fields: refuse them (default), warn, or ignore")
    p.set_defaults(func=cmd_apply)

    p = cloud(sub.add_parser("delete", help="delete resources (a node: revoke it too)"))
    p.add_argument("kind", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("-f", "--filename")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_delete)

    p = cloud(sub.add_parser("logs", help="print a container's log, fetched from its node"))
    p.add_argument("pod")
    p.add_argument("-c", "--container")
    p.add_argument("-n", "--namespace")
    p.add_argument("--tail", type=int)
    p.set_defaults(func=cmd_logs)

    p = cloud(sub.add_parser("call", help="an HTTP request to an app on a node (ServiceBus)"))
    p.add_argument("node")
    p.add_argument("port", type=int)
    p.add_argument("path", help="the path on the app, with any query: /status?verbose=1")
    p.add_argument("-X", "--request", help="the method (default GET, or POST with -d)")
    p.add_argument("-d", "--data", help="the request body, or @FILE")
    p.add_argument("--content-type", default="application/octet-stream",
                   help="the Content-Type of -d (default application/octet-stream)")
    p.add_argument("-i", "--include", action="store_true", help="print status and headers")
    p.set_defaults(func=cmd_call)

    p = cloud(sub.add_parser("describe", help="show one resource in detail"))
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-n", "--namespace")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("reset", help="remove this machine's Moorage state")
    p.add_argument("--data-dir", default=DEFAULT_EDGE_DIR)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_reset)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader went away (`moorage get ... | head`): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (MoorageError, CertError) as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"moorage: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
