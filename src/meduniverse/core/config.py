"""The federation's configuration: sites, server pool, inputs, model, method, fine-tune schedule,
runtime and comparison arms (`meduniverse.core.config_file` reads it from TOML)."""

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
import re
from typing import Any

from meduniverse.core.arms import Arm, selected_arms
from meduniverse.core.errors import ConfigError
from meduniverse.core.tasks import task_type

MEAN, STD = 0.5, 0.25  # every input: x/255, then (x - MEAN) / STD
# a site's name: it names files, keys and log lines, so letters, digits, '_' and '-' only
SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")

VARIANTS = ("distil_only", "average_then_distil")
SCHEDULES = ("mixed", "round_robin")
LOCAL_TRAINING = ("epochs", "early_stopping", "early_stopping_last")
LR_SCHEDULES = ("constant", "cosine")
TRANSFERS = ("weights", "outputs")
DP_TRAINS = ("all", "head")
TEACHERS = ("fresh", "best")
SELECTS = ("last", "agreement")


@dataclass(frozen=True)
class InputSpec:
    """What the model sees: square `size` px, `channels` (1 gray or 3 RGB), x/255, (x-mean)/std."""

    size: int
    channels: int = 3

    def card(self) -> dict:
        return {
            "size": self.size,
            "channels": self.channels,
            "scale": 1 / 255,
            "mean": MEAN,
            "std": STD,
        }


DEFAULT_INPUTS = {"classification": InputSpec(32), "segmentation": InputSpec(128)}


@dataclass(frozen=True)
class SiteConfig:
    """One hospital: its name, task, class names and where its data lies (exactly one source).

    `path` is an npz file or a folder of the hospital's own files (`meduniverse.data.folders`); for
    a folder, `size` is the side its images are stored at, `labels` a CSV labelling them, `axis` the
    NIfTI slice axis, and `split` the train/val/test shares of its patients (drawn with
    `split_seed`) unless it has train/, val/ and test/ folders."""

    name: str
    task: str
    classes: tuple[str, ...]
    path: Path | None = None
    size: int = 128
    labels: str | None = None
    axis: int = 2
    split: tuple[float, ...] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    medmnist: str | None = None
    medmnist_root: Path | None = None
    medmnist_size: int = 28
    synthetic: str | None = None

    @property
    def source(self) -> str:
        if self.synthetic:
            return f"synthetic:{self.synthetic}"
        if self.medmnist:
            return f"medmnist:{self.medmnist}"
        return str(self.path)


@dataclass(frozen=True)
class PoolConfig:
    """The server's unlabelled pool: a fraction of the listed sites' train images, extra files."""

    fraction: float = 0.2
    seed: int = 0
    sites: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    max_images: int = 4000
    near_duplicate: float = 0.999
    segmentation_max: int = 384


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "cnn"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    vit_dim: int = 192
    vit_depth: int = 6
    vit_heads: int = 6
    vit_patch: int = 8
    adapters: bool = False  # per-task residual 1x1 adapters after every encoder level


@dataclass(frozen=True)
class MethodConfig:
    """Stage 0 (MIM) and stages 1..S (local training + server distillation).

    `local_training`: 'epochs' (local_epochs passes over the site's train split), 'early_stopping'
    (the fine-tune schedule of [finetune], early stopping on the site's validation split: teachers
    trained to convergence) or 'early_stopping_last' (epochs in stages 1..S-1, early stopping in
    the last stage, whose teachers the released model is distilled from); every federated model
    gets the same. `distill_views`: the pool and
    views-1 augmented copies of it (random resized crop, flip, intensity) on which teachers and
    student are compared; `distill_dense_views`: the same for the pool of segmentation heads (0: as
    many as `distill_views`), whose few images need more crops; `distill_crop_area`: the smallest
    crop of a view, as a share of the image (crops at several scales);
    `distill_lr_schedule`: 'constant' or 'cosine' over the distillation; `distill_own_weight`: how
    much more the pool images a site lent weigh in its head's teacher term (1: as much as the
    others); `distill_dice_weight`: a soft Dice term between a segmentation head's and its
    teacher's foreground probabilities, added to the teacher term, so thin structures weigh as
    much as large ones (0: none). `teachers`: what a site sends as its teacher each stage, 'fresh'
    (the model it just trained from the global one) or 'best' (that model or the teacher it sent
    the stage before, whichever scores higher on the site's own validation split; the site keeps
    its teacher between stages, so a stage that makes a site's teacher worse is not distilled).
    `feature_weight`: feature-level distillation (`FeatureTargets`; 0: none). `distill_select`:
    'last' student or the one that agrees best with the teachers on `distill_holdout` of the pool
    ('agreement', `BestStudent`)."""

    stages: int = 3
    variant: str = "distil_only"
    mim_epochs: int = 10
    mask_ratio: float = 0.6
    mask_patch_fraction: float = 0.125
    local_training: str = "epochs"
    local_epochs: int = 2
    teachers: str = "fresh"
    min_steps_per_epoch: int = 12
    max_steps_per_epoch: int = 0  # 0: no cap (a cap makes quick smoke runs)
    distill_epochs: int = 4
    distill_schedule: str = "mixed"
    distill_views: int = 1
    distill_dense_views: int = 0
    distill_crop_area: float = 0.4
    distill_dice_weight: float = 0.0
    distill_own_weight: float = 1.0
    distill_lr_schedule: str = "constant"
    distill_select: str = "last"
    distill_holdout: float = 0.1
    retention: float = 0.5
    temperature: float = 2.0
    mim_weight: float = 0.0
    feature_weight: float = 0.0
    lr: float = 1e-3
    batch_size: int = 64
    seg_batch_size: int = 16
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class FinetuneConfig:
    """Per-task fine-tuning for evaluation arms: same optimiser and early stopping for every arm."""

    max_epochs: int = 12
    patience: int = 3
    max_steps_per_epoch: int = 24
    lr: float = 5e-4


@dataclass(frozen=True)
class RuntimeConfig:
    """How a process computes (device, precision, threads) and how the Simulation Engine runs (sites
    in parallel). `device`: auto (CUDA if present), cpu or cuda; `precision`: auto (bf16 autocast on
    CUDA and on CPUs with AMX or avx512_bf16, else fp32), fp32 or bf16; `teacher_outputs`: where a
    server step keeps the teachers' outputs on the pool, 'memory' or 'disk' (a scratch folder read a
    batch at a time: the server's memory then stays flat in the number of sites)."""

    device: str = "auto"
    precision: str = "auto"
    parallel_sites: int = 2
    threads_per_site: int = 1
    server_threads: int = 2
    teacher_outputs: str = "memory"
    min_sites: int = 0  # 0: every site must answer each stage
    update_norm_band: float = 10.0  # an update moving the encoder more than this x the median: out
    reply_timeout: float = 3600.0
    keep_site_models: bool = False  # checkpoint the site models the server receives (for audit)


@dataclass(frozen=True)
class CompetitorsConfig:
    """The comparison arms of `meduniverse experiment`, with the same stages and local epochs as the
    method."""

    federated: tuple[str, ...] = ("fedavg", "fedprox", "fedbn", "ditto", "fedrep")
    proximal_mu: float = 0.01
    ditto_lambda: float = 0.1
    probes: tuple[str, ...] = ("baseline", "universal", "fedavg")
    finetuned: tuple[str, ...] = ("fedavg", "fedprox", "fedbn", "centralized")
    centralized: bool = True


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy at the sites: with `dp`, every federated model's local training is
    DP-SGD (Opacus), clipping each example's gradient to `clip` and adding the noise that spends
    `epsilon` over the whole run at delta = 1/n (n: the site's train size). `transfer`: what a
    site sends the server after its stage of the universal model, 'weights' (its model's) or
    'outputs' (strict transfer: only its model's logits on the public pool images the server
    sends it, so no site weights ever reach the server; the federated competitors, which average
    weights, still send theirs). `secure_aggregation`: the competitors that average weights
    (`SECURE_MODELS`) send their encoder updates through Flower's SecAgg+, so the server learns
    only their sum and each site's head stays at the site; the universal model distils every site
    model (in both variants), which no sum can replace, so it needs `transfer = 'outputs'`, and
    Ditto's and FedRep's personal parts are not covered, so they must be left out of
    competitors.federated. `dp_trains`: what DP-SGD trains at a site, 'all' (the encoder and the
    site's head) or 'head' (the head only, on the encoder as received: the noise is shared by
    ~40k parameters for a decoder, ~1k for a classifier, against ~1.5M). `batch_scale`: DP-SGD's
    batch is this many times the method's, for the same steps per epoch (`local_steps`: at least
    `min_steps_per_epoch`, so a small site sees more passes) or fewer on a large site; its learning
    rate is `lr_scale` times the method's. `ema`: a DP-SGD stage ends with an exponential moving
    average of its iterates with this decay (0: the last iterate; post-processing, no privacy)."""

    dp: bool = False
    epsilon: float = 8.0
    clip: float = 1.0
    dp_trains: str = "all"
    batch_scale: int = 1
    lr_scale: float = 1.0
    ema: float = 0.0
    transfer: str = "weights"
    secure_aggregation: bool = False


@dataclass(frozen=True)
class FederationConfig:
    name: str
    sites: tuple[SiteConfig, ...]
    pool: PoolConfig = PoolConfig()
    inputs: tuple[tuple[str, InputSpec], ...] = tuple(DEFAULT_INPUTS.items())
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    competitors: CompetitorsConfig = CompetitorsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    seed: int = 0
    source: str = ""

    def input_spec(self, task: str) -> InputSpec:
        return dict(self.inputs)[task_type(task).group]

    def site(self, name: str) -> SiteConfig:
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(
            f"{self.source}: no site named '{name}' (sites: "
            f"{', '.join(s.name for s in self.sites)})"
        )

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def arms(self, competitors: bool) -> list[Arm]:
        """The arms of a run (`meduniverse.core.arms`): the method's, plus with `competitors` those
        of [competitors]."""
        c = self.competitors
        return selected_arms(c.federated, c.probes, c.finetuned, c.centralized, competitors)


SECURE_MODELS = ("fedavg", "fedprox", "fedbn")  # what privacy.secure_aggregation covers


def section_defaults() -> dict[str, dict[str, Any]]:
    """Each settings section of a `FederationConfig` ('method', 'privacy', ...) at its defaults, as
    `FederationConfig.to_dict` writes it."""
    return {
        f.name: _jsonable(asdict(f.default))
        for f in fields(FederationConfig)
        if is_dataclass(f.default)
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def leave_out(config: FederationConfig, name: str) -> FederationConfig:
    """The federation without one site nor its pool images (leave-one-site-out generalisation)."""
    site = config.site(name)
    rest = tuple(s for s in config.sites if s is not site)
    if not rest:
        raise ConfigError(f"{config.source}: leaving out '{name}' leaves no site")
    pool = replace(config.pool, sites=tuple(s for s in config.pool.sites if s != name))
    return replace(config, name=f"{config.name}-without-{name}", sites=rest, pool=pool)
