"""A run's lifecycle, the same under both of Flower's engines: the run directory, its log, the
same-run check, and the end of a run (the model with its card, and results.json)."""

from collections.abc import Iterator
from contextlib import contextmanager
import logging
from pathlib import Path
import time

from meduniverse.core.arms import computed_in_federation
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig, section_defaults
from meduniverse.core.device import Compute
from meduniverse.core.errors import ConfigError
from meduniverse.core.files import read_json, write_json
from meduniverse.core.progress import RunProgress, log
from meduniverse.core.provenance import git_commit, machine_info
from meduniverse.federation.simulation import simulate
from meduniverse.models.io import save_model
from meduniverse.models.universal import build_model
from meduniverse.results.analysis import seed_seconds
from meduniverse.results.document import privacy_spent, results_document
from meduniverse.results.model_card import write_model_card
from meduniverse.sites.pool import Pool, build_pool, verify_disjoint

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RunLogFile(logging.FileHandler):
    """run_dir/log.txt, opened (and run_dir created) only when the first record comes."""

    def __init__(self, path: Path):
        self.target = path
        super().__init__(path, delay=True)
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def _open(self):
        self.target.parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


@contextmanager
def run_log(run_dir: Path, deployed: bool = False) -> Iterator[None]:
    """The run's log file, RUN_DIR/log.txt, for the duration of the block.

    In a simulation the package's and Flower's records go there, and Flower's console output is
    kept to errors (its warnings about the Simulation Engine's own settings go to the file only); a
    deployed server also sends the package's records to Flower's own log (`flwr log RUN_ID`).
    """
    handler = _RunLogFile(Path(run_dir) / "log.txt")
    flower = logging.getLogger("flwr")
    attached = [(log, handler)]
    if deployed:
        attached += [(log, h) for h in flower.handlers if h not in log.handlers]
    else:
        attached.append((flower, handler))
        flower.setLevel(logging.INFO)
        for h in flower.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.ERROR)
    log.setLevel(logging.INFO)
    for logger, h in attached:
        logger.addHandler(h)
    try:
        yield
    finally:
        for logger, h in attached:
            logger.removeHandler(h)
        handler.close()


def check_same_run(run_dir: Path, config: FederationConfig) -> None:
    """Resuming needs the same configuration; only the stage count and the runtime may change. A
    setting added since the run started counts as at its default there."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return
    before, now = read_json(path), config.to_dict()
    for section, defaults in section_defaults().items():
        if isinstance(before.get(section), dict):
            before[section] = {**defaults, **before[section]}
    for d in (before, now):
        d.pop("runtime", None)
        d.get("method", {}).pop("stages", None)
        d.pop("source", None)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            f"{run_dir}: was run with a different configuration (differs in: "
            f"{', '.join(changed)}); "
            f"use a new --out directory"
        )


def finish_run(
    run_dir: Path,
    config: FederationConfig,
    seed: int,
    started: float,
    commit: str,
    extra: dict | None = None,
) -> dict:
    """The end of a run: the last stage's model with its card in RUN_DIR/model, and
    RUN_DIR/results.json.

    Args:
        run_dir: the run directory (its checkpoints hold every stage and evaluation).
        config: the federation.
        seed: the run's seed.
        started: time.perf_counter() at this attempt's start (for run_seconds: this attempt's
        wall time, or, for a resumed run, at least the work every attempt's checkpoints record).
        commit: the code's commit when the run started.
        extra: more top-level fields of results.json.
    """
    ckpt, last = Checkpoints(run_dir), config.method.stages
    model = build_model(config)
    model.load_state_dict(ckpt.load_stage(last))
    save_model(model, config, Path(run_dir) / "model", {"stage": last, "seed": seed})
    evaluation = ckpt.evaluation(last)
    sizes = {site: int(m["num-examples"]) for site, m in evaluation.get("baseline", {}).items()}
    results = results_document(
        config,
        {str(seed): evaluation},
        [seed],
        {
            "stages": ckpt.records(),
            "privacy": privacy_spent(config, ckpt.records()),
            "evaluation_seconds": ckpt.evaluation_seconds(),
            "run_seconds": max(time.perf_counter() - started, seed_seconds(ckpt)),
            "machine": machine_info(),
            "compute": Compute.of(config.runtime).describe(),
            "train_sizes": sizes,
            **(extra or {}),
        },
        commit,
    )
    write_json(Path(run_dir) / "results.json", results)
    write_model_card(Path(run_dir) / "model", results, config)
    log.info("results written to %s", Path(run_dir) / "results.json")
    return results


def evaluation_done(ckpt: Checkpoints, config: FederationConfig, competitors: bool = False) -> bool:
    last = ckpt.last_stage()
    done = ckpt.evaluation(config.method.stages)
    return (
        last is not None
        and last >= config.method.stages
        and all(a.name in done for a in filter(computed_in_federation, config.arms(competitors)))
    )


def run(
    config: FederationConfig,
    run_dir: Path,
    seed: int | None = None,
    show_progress: bool = True,
    competitors: bool = False,
    pool: Pool | None = None,
) -> dict:
    """Run (or resume) the whole method on the Simulation Engine and write
    run_dir/{results.json, model/, log.txt, config.json, checkpoints/}.

    Args:
        config: the federation.
        run_dir: the run directory (re-used: resumed after its last completed stage and arm).
        seed: the run's seed (default: the configuration's).
        show_progress: progress bars on the console.
        competitors: train and evaluate every arm of an experiment too (`meduniverse.core.arms`).
        pool: the server's pool when the caller already built it (an experiment builds it once for
        every seed).
    """
    run_dir = Path(run_dir)
    seed = config.seed if seed is None else seed
    started, commit = (
        time.perf_counter(),
        git_commit(),
    )  # the code that runs, not what HEAD is at the end
    with run_log(run_dir):
        pool = pool or build_pool(config)
        pool_size = verify_disjoint(config, pool)
        log.info(
            "run %s: %d sites, pool of %d images disjoint from every private split",
            config.name,
            len(config.sites),
            pool_size,
        )
        check_same_run(run_dir, config)
        write_json(run_dir / "config.json", config.to_dict())
        if not evaluation_done(Checkpoints(run_dir), config, competitors):
            with RunProgress(show_progress) as progress:
                simulate(config, run_dir, seed, pool, progress, competitors)
        return finish_run(run_dir, config, seed, started, commit)
