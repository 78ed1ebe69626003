"""The shared federation: the document every party of a deployment may read (sites' names, tasks and
classes, the input specs, the model, the method, the pool as files on the server), and the two
readings of it: the server's (no site's data) and a node's (its own site and its own data file
only).

`meduniverse deploy prepare` writes it (`shared_document`); the deployed ServerApp and ClientApp
read it (`server_config`, `site_config`).
"""

from dataclasses import asdict, replace
from pathlib import Path
import tomllib
from typing import Any

import tomli_w

from meduniverse.core.config import FederationConfig
from meduniverse.core.config_file import apply_overrides, parse_config
from meduniverse.core.errors import ConfigError, DataError, MeduniverseError

PRIVATE_SOURCES = ("path", "medmnist", "medmnist_root", "medmnist_size")
SHARED = "the shared federation (run config 'federation')"


def federation_document(text: str) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError(
            f"{SHARED} is empty: launch the run with 'meduniverse deploy run FEDERATION.toml ...'"
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{SHARED} is not valid TOML ({exc})") from exc


def _site_tables(raw: dict[str, Any]) -> list[dict[str, Any]]:
    sites = raw.get("sites")
    if not isinstance(sites, list) or not all(isinstance(s, dict) for s in sites):
        raise ConfigError(f"{SHARED}: needs [[sites]] tables")
    return sites


def server_config(text: str, check_files: bool = True) -> FederationConfig:
    """The federation as the server sees it: every site's name, task and classes, none of their
    data.

    A site's data source may only be `synthetic` (generated, nothing private on disk); sites without
    a source hold their data on their own node. The pool must come from files (or synthetic sites),
    which must exist (`check_files`) on the server machine.
    """
    raw = federation_document(text)
    private = []
    for table in _site_tables(raw):
        named = [k for k in PRIVATE_SOURCES if k in table]
        if named:
            raise ConfigError(
                f"{SHARED}: site '{table.get('name')}' names its data ({', '.join(named)}); in a "
                "deployment "
                f"only the site's own node names its file (--node-config \"data='...'\"); "
                f"'meduniverse deploy prepare' writes a shared federation without data paths"
            )
        if "synthetic" not in table:
            private.append(table.get("name"))
            table["path"] = (
                # satisfies the one-source check, removed below; never opened
                "held-by-the-site.npz"
            )
    files = raw.get("pool", {}).get("files", []) if isinstance(raw.get("pool"), dict) else []
    relative = [f for f in files if isinstance(f, str) and not Path(f).expanduser().is_absolute()]
    if relative:
        raise ConfigError(
            f"{SHARED}: pool.files must be absolute paths on the server machine, got {relative}"
        )
    config = parse_config(raw, SHARED, Path("/"))
    for name in config.pool.sites:
        if name in private:
            raise ConfigError(
                f"{SHARED}: pool.sites names '{name}', whose data only its own node holds; "
                f"export the pool to files (meduniverse deploy prepare) and list them in pool.files"
            )
    for path in config.pool.files if check_files else ():
        if not path.is_file():
            raise DataError(f"{path}: server pool file not found (pool.files of {SHARED})")
    return replace(
        config, sites=tuple(replace(s, path=None) if s.name in private else s for s in config.sites)
    )


def site_config(
    text: str, site: str, data: str | None, base: Path | None = None
) -> FederationConfig:
    """The federation as one node sees it: only its own site, reading only its own data file
    (`data`).

    Args:
        text: the shared federation's text.
        site: this node's site.
        data: this node's own data file (None: a synthetic site).
        base: what a relative data path is resolved against (default: the working directory).
    """
    raw = federation_document(text)
    tables = {str(t.get("name")): t for t in _site_tables(raw)}
    if site not in tables:
        raise ConfigError(
            f"this node's site '{site}' is not in {SHARED} (sites: {', '.join(tables)})"
        )
    own = dict(tables[site])
    if data is not None:
        for key in (*PRIVATE_SOURCES, "synthetic"):
            own.pop(key, None)
        path = Path(data).expanduser()
        path = path if path.is_absolute() else (base or Path.cwd()) / path
        if not path.exists():
            raise DataError(
                f"site '{site}': data file {path} not found (this node's --node-config data)"
            )
        own["path"] = str(path)
    elif "synthetic" not in own:
        raise ConfigError(
            f"site '{site}': this node was given no data file; start its SuperNode with "
            f"--node-config \"site='{site}' data='/path/to/{site}.npz'\""
        )
    raw["sites"] = [own]
    pool = dict(raw.get("pool", {}))
    pool["sites"] = [
        s for s in pool.get("sites", []) if s == site
    ]  # a pool site lends the same images as always
    pool["files"] = []  # the server's business
    raw["pool"] = pool
    raw.pop("data_root", None)
    return parse_config(raw, f"{SHARED} at site '{site}'", base or Path.cwd())


def shared_document(config: FederationConfig, pool_files: list[str]) -> dict[str, Any]:
    """The federation every party sees: sites' names, tasks and classes, and the pool as files; no
    data paths."""

    def plain(obj) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(obj).items()
            if v is not None
        }

    pool = plain(config.pool)
    pool.update({"sites": [], "files": pool_files})
    return {
        "name": config.name,
        "seed": config.seed,
        "input": {group: plain(spec) for group, spec in config.inputs},
        "pool": pool,
        "model": plain(config.model),
        "method": plain(config.method),
        "finetune": plain(config.finetune),
        "runtime": plain(config.runtime),
        "competitors": plain(config.competitors),
        "privacy": plain(config.privacy),
        "sites": [
            {"name": s.name, "task": s.task, "classes": list(s.classes)} for s in config.sites
        ],
    }


def federation_text(
    path: Path, overrides: list[str] | None = None, check_files: bool = True
) -> str:
    """A shared federation file as the run config carries it: overrides applied, pool files made
    absolute.

    It is checked as the server will read it (a site's data path in it is refused)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: federation file not found")
    try:
        raw = apply_overrides(tomllib.loads(path.read_text()), overrides or [])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    pool = raw.get("pool", {})
    if isinstance(pool, dict) and isinstance(pool.get("files"), list):
        pool["files"] = [
            str((path.parent / f).resolve()) if isinstance(f, str) else f for f in pool["files"]
        ]
    text = tomli_w.dumps(raw)
    try:
        server_config(text, check_files=check_files)
    except MeduniverseError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return text
