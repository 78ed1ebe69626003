"""`meduniverse audit`: membership inference against a run's released universal model, per site.

Each site's train examples (members) are set against its test examples (non-members: never trained
on by anyone), an equal number of each drawn with a seed. Two attacks score every example:

- **loss threshold** (Yeom et al., 2018): the released model's loss; lower means "member".
- **reference-calibrated, LiRA-style offline** (Carlini et al., 2022): how far below its usual loss
  the example's loss is, measured against reference models that never saw it: `references` copies of
  the run's stage-0 model (MIM encoder, public data only) fine-tuned, each on a random half of the
  site's validation split and early-stopped on the other half. The score is
  (mean reference loss - released loss) / (spread of the reference losses), per example.

The attacks' AUC is 0.5 when membership cannot be told apart. The audit runs where the site's data
is; only the AUCs and counts are reported.
"""

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
import torch

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.config_file import config_from_dict
from meduniverse.core.errors import ConfigError, DataError
from meduniverse.core.files import read_json, read_tensors, write_json
from meduniverse.core.progress import RunProgress, log
from meduniverse.core.provenance import git_commit
from meduniverse.core.seeds import derive_seed
from meduniverse.core.tasks import task_type
from meduniverse.data.splits import Split
from meduniverse.data.transforms import normalize
from meduniverse.method.site import finetune
from meduniverse.models.io import load_model
from meduniverse.models.universal import UniversalModel
from meduniverse.sites.sources import load_site

ATTACKS = ("loss", "reference")


@torch.no_grad()
def example_losses(
    model: UniversalModel, task_name: str, data: Split, batch: int = 64
) -> np.ndarray:
    """The task's loss on every example of `data` alone, in eval mode: (N,) float64."""
    model.eval()
    kind = task_type(model.tasks[task_name].task)
    out = []
    for start in range(0, len(data), batch):
        logits = model(normalize(data.images[start : start + batch]), task_name).float()
        targets = data.targets[start : start + batch]
        out += [float(kind.loss(logits[i : i + 1], targets[i : i + 1])) for i in range(len(logits))]
    return np.asarray(out, dtype=np.float64)


def membership_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """AUC of telling members from non-members by a score (higher: more likely a member)."""
    if len(members) == 0 or len(non_members) == 0:
        raise DataError("membership audit needs members and non-members")
    labels = np.r_[np.ones(len(members)), np.zeros(len(non_members))]
    return float(roc_auc_score(labels, np.r_[members, non_members]))


def calibrated_scores(target: np.ndarray, references: np.ndarray) -> np.ndarray:
    """LiRA-style offline score per example: (mean reference loss - target loss) / spread, with one
    spread over all examples (LiRA's fixed variance, the robust choice with few reference models).

    Args:
        target: (N,) losses under the audited model.
        references: (K, N) losses under K models that never trained on these examples.
    """
    return (references.mean(axis=0) - target) / (references.std() + 1e-6)


def balanced_draw(members: int, non_members: int, limit: int, seed: int) -> tuple:
    """Equal numbers of member and non-member indices (at most `limit` each), drawn with `seed`."""
    n = min(members, non_members, limit)
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(members)[:n]), np.sort(rng.permutation(non_members)[:n])


@dataclass
class AuditSettings:
    """How the audit runs.

    Args:
        references: reference models per site for the calibrated attack (0: loss attack only).
        limit: most members (and as many non-members) audited per site.
        seed: the draws and the reference models' training.
        site_models: attack the last stage's site models the server received (kept with
            `runtime.keep_site_models`), each at its own site, instead of the released model.
    """

    references: int = 4
    limit: int = 500
    seed: int = 0
    site_models: bool = False

    def __post_init__(self) -> None:
        if self.references < 0 or self.references == 1:
            raise ConfigError("--references must be 0 (loss attack only) or at least 2")
        if self.limit < 10:
            raise ConfigError("--limit must be at least 10 examples")


def reference_losses(
    stage0: UniversalModel,
    task_name: str,
    val: Split,
    audited: Split,
    config: FederationConfig,
    settings: AuditSettings,
) -> np.ndarray:
    """(K, N) losses on `audited` of K reference models, each fine-tuned from the stage-0 model on
    a random half of `val` (early-stopped on the other half)."""
    out = []
    for k in range(settings.references):
        model = copy.deepcopy(stage0)
        order = np.random.default_rng(derive_seed(settings.seed, k)).permutation(len(val))
        half = len(val) // 2
        seed = derive_seed(settings.seed, 100 + k)
        finetune(
            model,
            task_name,
            val.subset(order[:half]),
            val.subset(order[half:]),
            config.method,
            config.finetune,
            seed,
        )
        out.append(example_losses(model, task_name, audited))
    return np.stack(out)


def audit_site(
    released: UniversalModel,
    stage0: UniversalModel,
    task_name: str,
    splits: dict[str, Split],
    config: FederationConfig,
    settings: AuditSettings,
) -> dict:
    """Both attacks at one site: {'members', 'non_members', 'loss_auc', 'reference_auc'}."""
    members, non_members = balanced_draw(
        len(splits["train"]), len(splits["test"]), settings.limit, settings.seed
    )
    audited = Split(
        torch.cat([splits["train"].images[members], splits["test"].images[non_members]]),
        torch.cat([splits["train"].targets[members], splits["test"].targets[non_members]]),
    )
    n = len(members)
    losses = example_losses(released, task_name, audited)
    out = {"members": n, "non_members": n, "loss_auc": membership_auc(-losses[:n], -losses[n:])}
    if settings.references:
        scores = calibrated_scores(
            losses, reference_losses(stage0, task_name, splits["val"], audited, config, settings)
        )
        out["reference_auc"] = membership_auc(scores[:n], scores[n:])
    return out


def audit_run(run_dir: Path, settings: AuditSettings, show_progress: bool = True) -> dict:
    """Audit every site of a run against its released model (or, with `settings.site_models`, the
    site model the server received from it at the last stage); writes RUN_DIR/audit.json and adds
    `audit` to RUN_DIR/results.json (`audit_site_models.json` and `audit_site_models`).

    Args:
        run_dir: a finished run directory (config.json, model/, checkpoints/, results.json).
        settings: references, limit and seed.
        show_progress: a progress bar over the sites.

    Returns:
        {'attacks', 'settings', 'privacy' (the run's DP block, or None), 'sites': {site: ...}}.
    """
    run_dir = Path(run_dir)
    results_path, config_path = run_dir / "results.json", run_dir / "config.json"
    stage0_path = Checkpoints(run_dir).weights_path(0)
    for needed in (results_path, config_path, stage0_path):
        if not needed.is_file():
            raise DataError(
                f"{needed}: not found (audit needs a run finished by 'meduniverse run')"
            )
    config = config_from_dict(read_json(config_path), str(config_path))
    released, _ = load_model(run_dir / "model")
    stage0 = copy.deepcopy(released)
    stage0.load_state_dict(Checkpoints(run_dir).load_stage(0))
    sites = {}
    with RunProgress(show_progress) as progress:
        on_step = progress.phase("membership audit", total=len(config.sites))
        for k, site in enumerate(config.sites):
            data = load_site(site, config.pool, config.input_spec(site.task), config.seed)
            target = (
                site_model(run_dir, config, released, site.name)
                if settings.site_models
                else released
            )
            sites[site.name] = audit_site(target, stage0, site.name, data.splits, config, settings)
            log.info("audit %s: %s", site.name, sites[site.name])
            on_step(k + 1, len(config.sites))
    results = read_json(results_path)
    audit = {
        "target": "site models received at the last stage"
        if settings.site_models
        else "released model",
        "attacks": list(ATTACKS if settings.references else ATTACKS[:1]),
        "settings": vars(settings),
        "commit": git_commit(),
        "privacy": results.get("privacy"),
        "sites": sites,
    }
    key = "audit_site_models" if settings.site_models else "audit"
    write_json(run_dir / f"{key}.json", audit)
    write_json(results_path, {**results, key: audit})
    return audit


def site_model(
    run_dir: Path, config: FederationConfig, released: UniversalModel, site: str
) -> UniversalModel:
    """The released model with the encoder and head a site sent at the last stage."""
    path = Checkpoints(run_dir).weights_path(config.method.stages, Checkpoints.site_part(site))
    if not path.is_file():
        raise DataError(
            f"{path}: not found (the run did not keep its site models: runtime.keep_site_models)"
        )
    model = copy.deepcopy(released)
    model.load_state_dict(read_tensors(path), strict=False)
    return model
