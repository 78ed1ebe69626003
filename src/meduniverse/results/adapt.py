"""`meduniverse adapt`: how well the universal and the baseline encoder of one run adapt to a site
that never took part (domain generalisation), by linear probe and full fine-tune on a fraction of
its training labels."""

from dataclasses import dataclass
from pathlib import Path
import sys
import time

import numpy as np
import torch

from meduniverse.core.arms import FINETUNE, PROBE
from meduniverse.core.config import FinetuneConfig, InputSpec, MethodConfig, RuntimeConfig
from meduniverse.core.device import Compute
from meduniverse.core.errors import ConfigError, DataError
from meduniverse.core.files import read_json, read_tensors, write_json
from meduniverse.core.progress import RunProgress, log
from meduniverse.core.provenance import git_commit, machine_info
from meduniverse.core.tasks import TASK_TYPES, task_type
from meduniverse.data.npz import open_npz, read_array, read_labelled_npz
from meduniverse.data.splits import SPLITS, RawSplit, Split
from meduniverse.method.site import evaluate_arm
from meduniverse.models.io import load_model, model_from_card
from meduniverse.models.universal import TaskInfo, encoder_part
from meduniverse.results.document import arm_summary, task_entry
from meduniverse.results.statistics import paired_test
from meduniverse.sites.sources import to_split

ENCODERS = ("baseline", "universal")
MODES = (PROBE, FINETUNE)


@dataclass
class NewSite:
    """The unseen site: its name, task, class names and raw splits (train, val, test)."""

    name: str
    task: str
    classes: tuple[str, ...]
    raw: dict[str, RawSplit]


@dataclass
class SourceRun:
    """What adapt takes from a run: both encoders, the model settings, the input specs, the
    fine-tune schedule and where to compute (the run's runtime settings, resolved on this machine).
    """

    encoders: dict[str, dict[str, torch.Tensor]]
    card: dict
    method: MethodConfig
    finetune: FinetuneConfig
    compute: Compute


def site_from_file(path: Path, task: str, classes: tuple[str, ...] = ()) -> NewSite:
    """An unseen site from a labelled npz file; without class names, 'class 0'.. up to the largest
    label found."""
    if task not in TASK_TYPES:
        raise ConfigError(f"--task '{task}' unknown (allowed: {', '.join(TASK_TYPES)})")
    path = Path(path)
    if not classes:
        with open_npz(path) as npz:
            largest = max(
                int(np.max(read_array(npz, f"{s}_{task_type(task).target_key}", path)))
                for s in SPLITS
            )
        classes = tuple(
            f"class {c}" for c in range(max(largest + 1, 1 if task == "multilabel" else 2))
        )
    return NewSite(path.stem, task, tuple(classes), read_labelled_npz(path, task, len(classes)))


def read_source_run(path: Path) -> SourceRun:
    """A run directory (or its model/ folder): model/ (universal), checkpoints/stage_000_model
    (baseline), config.json."""
    path = Path(path)
    model_dir = path / "model" if (path / "model" / "card.json").is_file() else path
    run_dir = model_dir.parent
    stage0, config_path = (
        run_dir / "checkpoints" / "stage_000_model.safetensors",
        run_dir / "config.json",
    )
    for needed in (stage0, config_path):
        if not needed.is_file():
            raise DataError(
                f"{needed}: not found (adapt needs a run directory written by 'meduniverse run')"
            )
    model, card = load_model(model_dir)
    config = read_json(config_path)
    return SourceRun(
        {
            "baseline": encoder_part(read_tensors(stage0)),
            "universal": encoder_part(model.state_dict()),
        },
        card,
        MethodConfig(**config["method"]),
        FinetuneConfig(**config["finetune"]),
        Compute.of(RuntimeConfig(**config.get("runtime", {}))),
    )


def label_subset(targets: np.ndarray, fraction: float, task: str, seed: int) -> np.ndarray:
    """Indices of `fraction` of the train split: per class (at least one each) for classification,
    at random for masks.

    Args:
        targets: the train split's labels (N,) or masks.
        fraction: share of the examples to keep.
        task: the task type.
        seed: the draw's seed.
    """
    rng = np.random.default_rng(seed)
    if fraction >= 1:
        return np.arange(len(targets))
    if task_type(task).segmentation or targets.ndim != 1:
        return np.sort(rng.permutation(len(targets))[: max(1, round(fraction * len(targets)))])
    picks = [
        rng.permutation(np.flatnonzero(targets == c))[
            : max(1, round(fraction * (targets == c).sum()))
        ]
        for c in np.unique(targets)
    ]
    return np.sort(np.concatenate(picks))


def adapt_once(
    source: SourceRun, encoder: str, mode: str, site: NewSite, splits: dict[str, Split], seed: int
) -> dict[str, float]:
    """One encoder, probe or fine-tune, one label subset ('train' of `splits`), one seed: scores on
    val and test.

    Args:
        source: the run's encoders and schedule.
        encoder: 'baseline' or 'universal'.
        mode: probe or finetune.
        site: the unseen site.
        splits: its splits at the run's input spec ('train' is the label subset).
        seed: the fine-tune's seed.
    """
    torch.manual_seed(seed)
    model = model_from_card(source.card, [TaskInfo(site.name, site.task, site.classes)])
    model.load_state_dict(source.encoders[encoder], strict=False)
    with source.compute.autocast():
        return evaluate_arm(
            model.to(source.compute.device),
            site.name,
            splits,
            mode,
            source.method,
            source.finetune,
            seed,
        )


def arm_name(encoder: str, mode: str, fraction: float) -> str:
    return f"{encoder}_{mode}@{fraction:g}"


def run_adapt(
    run_path: Path,
    site: NewSite,
    fractions: list[float],
    seeds: list[int],
    out_dir: Path,
    show_progress: bool = True,
) -> dict:
    """Every encoder x mode x fraction x seed; writes out_dir/results.json (resumable: done runs are
    kept).

    Args:
        run_path: a run directory (or its model/ folder).
        site: the unseen site.
        fractions: fractions of its training labels, each in (0, 1].
        seeds: seeds per fraction.
        out_dir: where runs.json and results.json go.
        show_progress: progress bars.
    """
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ConfigError(f"--fractions must lie in (0, 1], got {fractions}")
    source = read_source_run(run_path)
    if site.name in {t["name"] for t in source.card["tasks"]}:
        raise ConfigError(
            f"site '{site.name}' took part in the run at {run_path}: it is not an unseen site"
        )
    group = task_type(site.task).group
    spec_card = source.card["inputs"].get(group)
    if spec_card is None:
        raise ConfigError(f"{run_path}: the run has no {group} input spec for a '{site.task}' site")
    spec = InputSpec(spec_card["size"], spec_card["channels"])
    splits = {
        name: to_split(raw, spec, site.task).to(source.compute.device)
        for name, raw in site.raw.items()
    }
    out_dir = Path(out_dir)
    partial_path = out_dir / "runs.json"
    runs: dict[str, dict] = read_json(partial_path) if partial_path.is_file() else {}
    started, commit = time.perf_counter(), git_commit()
    jobs = [(e, m, f, s) for f in fractions for s in seeds for e in ENCODERS for m in MODES]
    with RunProgress(show_progress) as progress:
        on_step = progress.phase(f"adapt to {site.name}: {len(jobs)} fine-tunes", len(jobs))
        for done, (encoder, mode, fraction, seed) in enumerate(jobs, 1):
            key = f"{arm_name(encoder, mode, fraction)}/seed_{seed}"
            if key not in runs:
                idx = label_subset(site.raw["train"].targets, fraction, site.task, seed)
                subset = {**splits, "train": splits["train"].subset(idx)}
                runs[key] = adapt_once(source, encoder, mode, site, subset, seed)
                write_json(partial_path, runs)  # a crash keeps every finished fine-tune
            on_step(done, len(jobs))
    results = adapt_results(site, fractions, seeds, runs, commit)
    results.update(
        {
            "source_run": str(run_path),
            "command": " ".join(["meduniverse", *sys.argv[1:]]),
            "machine": machine_info(),
            "seconds": time.perf_counter() - started,
        }
    )
    write_json(out_dir / "results.json", results)
    log.info("adapt results written to %s", out_dir / "results.json")
    return results


def adapt_results(
    site: NewSite, fractions: list[float], seeds: list[int], runs: dict[str, dict], commit: str
) -> dict:
    """The experiment's results layout for one task, arms ENCODER_MODE@FRACTION, plus tests and the
    label curves.

    Args:
        site: the unseen site.
        fractions: the label fractions.
        seeds: the seeds.
        runs: per 'ARM/seed_K', the metrics of that fine-tune.
        commit: the code's commit.
    """
    kind = task_type(site.task)
    key, second = kind.primary, kind.secondary
    arms = {
        arm_name(e, m, f): arm_summary(
            [runs[f"{arm_name(e, m, f)}/seed_{s}"] for s in seeds], key, second
        )
        for f in fractions
        for e in ENCODERS
        for m in MODES
    }
    tests = {
        f"universal_{m}_vs_baseline_{m}@{f:g}": paired_test(
            arms[arm_name("universal", m, f)]["per_seed"],
            arms[arm_name("baseline", m, f)]["per_seed"],
        )
        for m in MODES
        for f in fractions
    }
    curves = {
        f"{e}_{m}": {
            "stages": list(fractions),
            "mean": [arms[arm_name(e, m, f)]["mean"] for f in fractions],
        }
        for e in ENCODERS
        for m in MODES
    }
    return {
        "name": f"adapt to {site.name}",
        "tasks": {site.name: task_entry(site.task, arms)},
        "fractions": fractions,
        "seeds": seeds,
        "commit": commit,
        "tests": tests,
        "adapt": {site.name: curves},
    }
