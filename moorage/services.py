"""``--install-service``: systemd units for the daemons, rendered from the templates that
ship in this package (``moorage/units/``, also reachable as ``systemd/`` in the source).

A template names ``@BINDIR@`` (where the console scripts are), ``@CONFIG@`` and
``@DATADIR@``; :func:`render` fills them in. :func:`install` writes the unit to
``/etc/systemd/system`` (``$MOORAGE_SYSTEMD_DIR`` overrides it, for tests and image
builds) and, when systemd runs this machine, reloads it and enables the unit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from moorage.errors import ConfigError

SYSTEMD_DIR = "/etc/systemd/system"
CLOUDCORE, EDGECORE, MAPPER = "cloudcore.service", "edgecore.service", "modbus-mapper@.service"
BINARIES = {CLOUDCORE: "cloudcore", EDGECORE: "edgecore", MAPPER: "modbus-mapper"}
# ProtectHome= and PrivateTmp= hide these from the daemons: a program, config or data dir
# there is not what the daemon sees.
_HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")  # noqa: S108


def template(unit: str) -> str:
    return (resources.files("moorage") / "units" / unit).read_text(encoding="utf-8")


def escape(value: str) -> str:
    """A path as one word of a unit file: specifiers and variables literal, quoted if it
    has spaces."""
    value = value.replace("%", "%%").replace("$", "$$")
    if any(c in value for c in " \t\"'\\"):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


def bin_dir(binary: str) -> Path:
    """Where ``binary`` (a console script of this installation) is."""
    for candidate in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        if (Path(candidate) / binary).is_file():
            return Path(candidate)
    found = shutil.which(binary)
    if found:
        return Path(found).parent
    raise ConfigError(f"cannot find the {binary} program next to {sys.executable}: install "
                      "moorage with pip first")


def render(unit: str, *, bindir: Path, config: Path | None = None,
           data_dir: Path | None = None) -> str:
    text = template(unit).replace("@BINDIR@", escape(str(bindir)))
    if config is not None:
        text = text.replace("@CONFIG@", escape(str(config)))
    if data_dir is not None:
        text = text.replace("@DATADIR@", escape(str(data_dir)))
    missing = sorted(set(re.findall(r"@[A-Z]+@", text)))
    if missing:
        raise ConfigError(f"{unit}: nothing given for {', '.join(missing)}")
    return text


def target_dir() -> Path:
    return Path(os.environ.get("MOORAGE_SYSTEMD_DIR") or SYSTEMD_DIR)


def systemd_running() -> bool:
    """sd_booted(3): this machine was booted with systemd as its init."""
    return Path("/run/systemd/system").is_dir()


def install(units: dict[str, str], enable: str, say: Callable[[str], None] = print) -> bool:
    """Write ``units`` (file name -> text), then reload systemd and enable ``enable``.

    Returns False, after saying why and what to run, when it could not enable it."""
    directory = target_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        path = directory / name
        existed = path.exists()
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
        say(f"{'Replaced' if existed else 'Wrote'} {path}")
        hidden = sorted({word.strip('"') for line in text.splitlines()
                         if line.startswith(("ExecStart=", "ReadWritePaths="))
                         for word in line.partition("=")[2].split()
                         if word.strip('"').startswith(_HIDDEN)})
        if hidden:
            say(f"  warning: {', '.join(hidden)}: under a directory the unit's sandbox hides "
                "(ProtectHome=, PrivateTmp=); use system-wide paths (/usr/local, /var/lib)")
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", enable]]
    how = " && ".join(" ".join(c) for c in commands)
    reason = ""
    if not systemd_running():
        reason = "systemd is not running on this machine (no /run/systemd/system)"
    elif "MOORAGE_SYSTEMD_DIR" in os.environ:
        reason = f"{directory} ($MOORAGE_SYSTEMD_DIR) is not where systemd looks for units"
    if reason:
        say(f"Not enabled: {reason}. On a machine booted with systemd, with the unit in "
            f"{SYSTEMD_DIR}, run: {how}")
        return False
    for command in commands:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            say(f"Not enabled: `{' '.join(command)}` failed: "
                f"{(result.stderr or result.stdout).strip()}. Fix that, then run: {how}")
            return False
        say(f"Ran {' '.join(command)}")
    return True


def install_cloud(config: Path, data_dir: Path, say: Callable[[str], None] = print) -> bool:
    unit = render(CLOUDCORE, bindir=bin_dir(BINARIES[CLOUDCORE]), config=config, data_dir=data_dir)
    enabled = install({CLOUDCORE: unit}, CLOUDCORE, say)
    if enabled:
        say(f"Start the cloud with: systemctl start {CLOUDCORE} (logs: journalctl -u cloudcore)")
    return enabled


def install_edge(config: Path, data_dir: Path, say: Callable[[str], None] = print) -> bool:
    units = {EDGECORE: render(EDGECORE, bindir=bin_dir(BINARIES[EDGECORE]), config=config,
                              data_dir=data_dir),
             MAPPER: render(MAPPER, bindir=bin_dir(BINARIES[MAPPER]))}
    enabled = install(units, EDGECORE, say)
    if enabled:
        say(f"Start the node with: systemctl start {EDGECORE} (logs: journalctl -u edgecore)")
    say("A Modbus mapper runs as modbus-mapper@NAME with /etc/moorage/mappers/NAME.yaml: "
        "systemctl enable --now modbus-mapper@NAME")
    return enabled
