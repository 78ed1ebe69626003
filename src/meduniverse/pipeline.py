"""A whole run: check the data, run the federation on Flower's Simulation Engine, write the model and results."""

import logging
from pathlib import Path
import time

from flwr.simulation import run_simulation

from meduniverse.checkpoints import Checkpoints
from meduniverse.config import FederationConfig
from meduniverse.evaluation import arms_for, git_commit, results_document
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.server_app import make_server_app
from meduniverse.errors import ConfigError
from meduniverse.files import read_json, write_json
from meduniverse.model_io import save_model
from meduniverse.models.universal import build_model
from meduniverse.progress import RunProgress, log
from meduniverse.sites import verify_disjoint


def attach_log_file(path: Path) -> logging.Handler:
    """Send the package's and Flower's log records to a file; keep Flower's console output to warnings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("meduniverse", "flwr"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    for h in logging.getLogger("flwr").handlers:
        if h is not handler and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)
    return handler


def simulate(config: FederationConfig, run_dir: Path, seed: int, progress: RunProgress, competitors: bool = False) -> None:
    """Run the ServerApp and one ClientApp per site in Flower's Simulation Engine (one CPU, one thread per site)."""
    errors: list[BaseException] = []
    server = make_server_app(config, run_dir, seed, progress, errors, competitors)
    client = make_client_app(lambda context: config)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": config.runtime.parallel_sites, "include_dashboard": False}}
    run_simulation(server, client, num_supernodes=len(config.sites), backend_config=backend)
    if errors:
        raise errors[0]


def evaluation_done(ckpt: Checkpoints, config: FederationConfig, competitors: bool = False) -> bool:
    last = ckpt.last_stage()
    done = ckpt.evaluation(config.method.stages)
    return last is not None and last >= config.method.stages and all(a.name in done for a in arms_for(config, competitors))


def check_same_run(run_dir: Path, config: FederationConfig) -> None:
    """Resuming needs the same configuration; only the stage count and the runtime may change."""
    path = run_dir / "config.json"
    if not path.is_file():
        return
    before, now = read_json(path), config.to_dict()
    for d in (before, now):
        d.pop("runtime", None)
        d.get("method", {}).pop("stages", None)
        d.pop("source", None)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{run_dir}: was run with a different configuration (differs in: {', '.join(changed)}); "
                          f"use a new --out directory")


def run(config: FederationConfig, run_dir: Path, seed: int | None = None, show_progress: bool = True,
        competitors: bool = False) -> dict:
    """Run (or resume) the whole method and write run_dir/{results.json, model/, log.txt, checkpoints/}.

    With `competitors`, the comparison arms run and are evaluated in the same federation (see run_federation).
    """
    run_dir = Path(run_dir)
    seed = config.seed if seed is None else seed
    handler = attach_log_file(run_dir / "log.txt")
    started, commit = time.perf_counter(), git_commit()  # the code that runs, not what HEAD is at the end
    try:
        pool_size = verify_disjoint(config)
        log.info("run %s: %d sites, pool of %d images disjoint from every private split", config.name, len(config.sites), pool_size)
        check_same_run(run_dir, config)
        write_json(run_dir / "config.json", config.to_dict())
        ckpt = Checkpoints(run_dir)
        if not evaluation_done(ckpt, config, competitors):
            with RunProgress(show_progress) as progress:
                simulate(config, run_dir, seed, progress, competitors)
        model = build_model(config)
        model.load_state_dict(ckpt.load_stage(config.method.stages))
        save_model(model, config, run_dir / "model", {"stage": config.method.stages, "seed": seed})
        progress_record = ckpt.progress()
        results = results_document(config, {str(seed): ckpt.evaluation(config.method.stages)}, [seed],
                                   {"stages": progress_record["stages"], "evaluation_seconds": ckpt.evaluation_seconds(),
                                    "run_seconds": time.perf_counter() - started}, commit)
        write_json(run_dir / "results.json", results)
        log.info("results written to %s", run_dir / "results.json")
        return results
    finally:
        for name in ("meduniverse", "flwr"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
