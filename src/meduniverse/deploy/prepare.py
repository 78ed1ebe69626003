"""Split a federation for deployment: the shared federation, the server's pool files and each site's
private file."""

from pathlib import Path
import re
import shutil

import numpy as np
import tomli_w

from meduniverse.core.config import FederationConfig
from meduniverse.core.errors import DeployError
from meduniverse.core.tasks import task_type
from meduniverse.deploy.environment import finish_dir, new_dir
from meduniverse.federation.shared import shared_document
from meduniverse.sites.pool import build_pool, verify_disjoint
from meduniverse.sites.sources import private_raw


def _slug(text: str) -> str:
    return (
        re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).stem if "/" in text else text).strip("_")[:60]
        or "pool"
    )


def prepare(config: FederationConfig, out: Path) -> Path:
    """Split a federation for deployment, into OUT:

        federation.toml   the shared federation (sites' names, tasks, classes; pool.files; no data
        paths)
        pool/*.npz        the server's unlabelled pool, one file per source (key 'images'): the same
        pool
                          a simulated run of `config` uses
        sites/SITE.npz    each site's private splits (without the images it lends to the pool), in
        the
                          MedMNIST-style layout: what that hospital holds; for a demo on one machine

    The pool and every private split are checked disjoint first (SHA-256 of each image).
    """
    pool = build_pool(config)
    verify_disjoint(config, pool)
    out = Path(out)
    tmp = new_dir(out)
    try:
        (tmp / "pool").mkdir()
        (tmp / "sites").mkdir()
        files = []
        for i, (source, images) in enumerate(pool.sources.items()):
            name = f"pool/{i:02d}-{_slug(source)}.npz"
            np.savez(tmp / name, images=images)
            files.append(name)
        for site in config.sites:
            arrays = {}
            for split, raw in private_raw(site, config.pool, config.seed).items():
                arrays[f"{split}_images"] = raw.images
                arrays[f"{split}_{task_type(site.task).target_key}"] = raw.targets
            target = tmp / "sites" / f"{site.name}.npz"
            if target.resolve().parent != (tmp / "sites").resolve():  # names are checked; still
                raise DeployError(f"site '{site.name}': its file would leave {out}")
            with target.open("wb") as private:  # only the owner may read a site's private data
                target.chmod(0o600)
                np.savez(private, **arrays)
        text = (
            "# The shared federation for a deployment (meduniverse deploy prepare): every party "
            "may read it.\n"
            "# No site's data path: each SuperNode names its own file (--node-config \"site='NAME' "
            "data='...'\").\n"
            "# pool.files: relative to this file, on the server machine.\n"
        )
        (tmp / "federation.toml").write_text(text + tomli_w.dumps(shared_document(config, files)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return finish_dir(tmp, out)
