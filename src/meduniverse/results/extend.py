"""`meduniverse extend`: new sites join a trained federation. Their heads are added to the run's
universal model and the federation runs further stages from it, every site taking part, instead of a
rerun from scratch; the old tasks' metrics before and after show what the extension cost them
(forgetting)."""

from pathlib import Path
import shutil

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.config_file import config_from_dict
from meduniverse.core.errors import ConfigError
from meduniverse.core.files import read_json, write_json
from meduniverse.core.progress import log
from meduniverse.models.universal import build_model
from meduniverse.results.run import run


def check_extension(old: FederationConfig, new: FederationConfig) -> list[str]:
    """The new sites; ConfigError unless `new` keeps every old site (name, task, classes), the
    model, the inputs and the pool settings, and runs more stages than `old` did."""
    kept = {s.name: s for s in new.sites}
    for site in old.sites:
        if site.name not in kept:
            raise ConfigError(f"{new.source}: site '{site.name}' of the run is missing")
        if (kept[site.name].task, kept[site.name].classes) != (site.task, site.classes):
            raise ConfigError(f"{new.source}: site '{site.name}' changed its task or classes")
    for part in ("model", "inputs"):
        if getattr(new, part) != getattr(old, part):
            raise ConfigError(f"{new.source}: [{part}] must stay as the run had it")
    if new.method.stages <= old.method.stages:
        raise ConfigError(
            f"{new.source}: method.stages must exceed the run's {old.method.stages} "
            "(the extension runs the stages after them)"
        )
    added = [s.name for s in new.sites if s.name not in {o.name for o in old.sites}]
    if not added:
        raise ConfigError(f"{new.source}: names no new site")
    return added


def extend(run_dir: Path, new: FederationConfig, out_dir: Path, show_progress: bool = True) -> dict:
    """Run the stages after the run's last with the new sites, from its universal model.

    Args:
        run_dir: a finished run directory (its config.json and checkpoints).
        new: the federation with the new sites (every old site kept; method.stages in all).
        out_dir: a new run directory; it starts with the run's stage-0 and last-stage checkpoints,
            the latter with fresh heads for the new sites.
        show_progress: progress bars.

    Returns:
        The new run's results.json, with `extension`: the new sites and, per old task, its
        universal model's test metric before and after.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config_path, results_path = run_dir / "config.json", run_dir / "results.json"
    if not results_path.is_file():
        raise ConfigError(f"{results_path}: not found (extend needs a finished run)")
    old = config_from_dict(read_json(config_path), str(config_path))
    added = check_extension(old, new)
    before = read_json(results_path)
    last, source = old.method.stages, Checkpoints(run_dir)
    target = Checkpoints(out_dir)
    if target.last_stage() is None:
        target.dir.mkdir(parents=True, exist_ok=True)
        for part in ("model", "mim_decoder"):
            if source.weights_path(0, part).is_file():
                shutil.copy(source.weights_path(0, part), target.weights_path(0, part))
        state = build_model(new, seed=new.seed).state_dict()  # fresh heads for the new sites
        state.update(source.load_stage(last))
        target.save_stage(0, {}, source.stage_record(0))
        target.save_stage(last, {"model": state}, {"extended_from": str(run_dir), "seconds": 0.0})
        log.info("extending %s with %s from its stage %d", run_dir, ", ".join(added), last)
    results = run(new, out_dir, show_progress=show_progress)
    results["extension"] = {
        "from": str(run_dir),
        "new_sites": added,
        "stages_before": last,
        "old_tasks": {
            site: {
                "before": before["tasks"][site]["arms"]["universal"]["mean"],
                "after": results["tasks"][site]["arms"]["universal"]["mean"],
            }
            for site in before["tasks"]
            if site in results["tasks"] and "universal" in before["tasks"][site]["arms"]
        },
    }
    write_json(out_dir / "results.json", results)
    return results
