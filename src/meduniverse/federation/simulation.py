"""Flower's Simulation Engine: the ServerApp and one ClientApp per site on this machine."""

import os
from pathlib import Path

from flwr.simulation import run_simulation

from meduniverse.core.config import FederationConfig
from meduniverse.core.device import Compute
from meduniverse.core.progress import RunProgress
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.server_app import make_server_app
from meduniverse.sites.pool import Pool


def simulate(
    config: FederationConfig,
    run_dir: Path,
    seed: int,
    pool: Pool,
    progress: RunProgress,
    competitors: bool = False,
) -> None:
    """Run the server flow and every site in Flower's Simulation Engine (`runtime.parallel_sites` at
    a time).

    Args:
        config: the federation; each simulated node is the site at its partition id.
        run_dir: where the server writes checkpoints.
        seed: the run's seed.
        pool: the server's pool, built once for the run.
        progress: progress bars.
        competitors: train and evaluate every arm of an experiment too.
    """
    errors: list[BaseException] = []
    server = make_server_app(config, run_dir, seed, pool, progress, errors, competitors)
    client = make_client_app(lambda context: config)
    gpus = 1 if Compute.of(config.runtime).device.type == "cuda" else 0
    backend = {  # with a GPU, `parallel_sites` sites share it
        "client_resources": {"num_cpus": 1, "num_gpus": gpus / config.runtime.parallel_sites},
        "init_args": {
            "num_cpus": config.runtime.parallel_sites,
            "num_gpus": gpus,
            "include_dashboard": False,
            "log_to_driver": False,  # the sites' processes print nothing on the console
        },
    }
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's tip, else a warning
    run_simulation(server, client, num_supernodes=len(config.sites), backend_config=backend)
    if errors:
        raise errors[0]
