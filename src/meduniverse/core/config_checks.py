"""Checking a `FederationConfig` as a whole: settings that cannot run together are refused, each
error naming the file and the field (`meduniverse.core.config_file` calls it on every config it
reads)."""

from meduniverse.core.arms import COMPETITORS
from meduniverse.core.config import (
    DP_TRAINS,
    LOCAL_TRAINING,
    LR_SCHEDULES,
    SCHEDULES,
    SECURE_MODELS,
    SELECTS,
    SITE_NAME,
    TEACHERS,
    TRANSFERS,
    VARIANTS,
    FederationConfig,
)
from meduniverse.core.device import DEVICES, PLACES, PRECISIONS
from meduniverse.core.errors import ConfigError
from meduniverse.core.tasks import TASK_TYPES


def secure_aggregation_problem(config: FederationConfig) -> str:
    """Why `privacy.secure_aggregation` cannot run with this configuration ('' if it can)."""
    p, uncovered = config.privacy, sorted(set(config.competitors.federated) - set(SECURE_MODELS))
    if not p.secure_aggregation:
        return ""
    if p.transfer != "outputs":
        return (
            "privacy.secure_aggregation needs privacy.transfer = 'outputs': the universal model "
            "distils each site's own model (method.variant 'distil_only' and "
            "'average_then_distil' alike), which a secure sum cannot replace, so without strict "
            "transfer its site weights would still reach the server"
        )
    if uncovered:
        return (
            f"privacy.secure_aggregation covers {', '.join(SECURE_MODELS)} only; leave "
            f"{uncovered} out of competitors.federated (their personal parts are not summed)"
        )
    return ""


def _choice(value: str, allowed: tuple[str, ...], where: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{where} '{value}' unknown (allowed: {', '.join(allowed)})")


def check_config(config: FederationConfig) -> None:
    """Refuse configurations that cannot run, naming the file and the field."""
    src = config.source
    names = [s.name for s in config.sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: site names must be unique, got {names}")
    for s in config.sites:
        if not SITE_NAME.fullmatch(s.name):
            raise ConfigError(
                f"{src}: site name {s.name!r}: use letters, digits, '_' and '-' only "
                "(at most 64), starting with a letter or digit"
            )
        where = f"{src}: site '{s.name}'"
        _choice(s.task, tuple(TASK_TYPES), f"{where}: task")
        kind = TASK_TYPES[s.task]
        if len(s.classes) < kind.min_classes:
            raise ConfigError(
                f"{where}: needs at least {kind.min_classes} class names, got {list(s.classes)}"
            )
        if kind.max_classes and len(s.classes) > kind.max_classes:
            raise ConfigError(
                f"{where}: a {s.task} task has exactly {kind.max_classes} classes, got "
                f"{list(s.classes)}"
            )
        if sum(x is not None for x in (s.path, s.medmnist, s.synthetic)) != 1:
            raise ConfigError(f"{where}: give exactly one of 'path', 'medmnist' or 'synthetic'")
        if len(s.split) != 3 or min(s.split) < 0 or sum(s.split) <= 0:
            raise ConfigError(
                f"{where}: split needs three shares (train, val, test), got {list(s.split)}"
            )
        if s.size < 8 or s.axis not in (0, 1, 2):
            raise ConfigError(f"{where}: size must be at least 8 and axis 0, 1 or 2")
        if s.medmnist and s.medmnist_root is None:
            raise ConfigError(
                f"{where}: 'medmnist' needs 'medmnist_root', the folder holding the files"
            )
    for name in config.pool.sites:
        if name not in names:
            raise ConfigError(f"{src}: pool.sites names '{name}', which is not a site")
    if not 0 < config.pool.fraction < 1 and config.pool.sites:
        raise ConfigError(f"{src}: pool.fraction must lie in (0,1), got {config.pool.fraction}")
    m = config.method
    _choice(m.variant, VARIANTS, f"{src}: method.variant")
    _choice(m.distill_schedule, SCHEDULES, f"{src}: method.distill_schedule")
    _choice(m.local_training, LOCAL_TRAINING, f"{src}: method.local_training")
    _choice(m.distill_lr_schedule, LR_SCHEDULES, f"{src}: method.distill_lr_schedule")
    _choice(m.teachers, TEACHERS, f"{src}: method.teachers")
    _choice(m.distill_select, SELECTS, f"{src}: method.distill_select")
    if not 0 < m.distill_holdout <= 0.5:
        raise ConfigError(f"{src}: method.distill_holdout must lie in (0, 0.5]")
    if m.distill_views < 1 or m.distill_dense_views < 0:
        raise ConfigError(
            f"{src}: method.distill_views must be at least 1 and distill_dense_views at least 0"
        )
    if not 0 < m.distill_crop_area <= 1 or m.distill_dice_weight < 0:
        raise ConfigError(
            f"{src}: method.distill_crop_area must lie in (0, 1] and distill_dice_weight be at "
            "least 0"
        )
    if m.feature_weight < 0 or (m.feature_weight > 0 and config.privacy.transfer != "weights"):
        raise ConfigError(
            f"{src}: method.feature_weight must be at least 0, and 0 unless privacy.transfer is "
            "'weights' (it needs the site encoders)"
        )
    _choice(config.runtime.device, DEVICES, f"{src}: runtime.device")
    _choice(config.runtime.precision, PRECISIONS, f"{src}: runtime.precision")
    _choice(config.runtime.teacher_outputs, PLACES, f"{src}: runtime.teacher_outputs")
    c = config.competitors
    for arm in c.federated:
        _choice(arm, COMPETITORS, f"{src}: competitors.federated")
    for encoder in c.probes:
        if encoder not in ("baseline", "universal", *c.federated):
            raise ConfigError(
                f"{src}: competitors.probes '{encoder}' is not baseline, universal or a federated "
                "competitor"
            )
    for model in c.finetuned:
        _choice(model, (*COMPETITORS, "centralized"), f"{src}: competitors.finetuned")
    p = config.privacy
    _choice(p.transfer, TRANSFERS, f"{src}: privacy.transfer")
    _choice(p.dp_trains, DP_TRAINS, f"{src}: privacy.dp_trains")
    if p.transfer == "outputs" and m.variant != "distil_only":
        raise ConfigError(
            f"{src}: privacy.transfer = 'outputs' needs method.variant = 'distil_only' (the other "
            "variant averages the site models' weights)"
        )
    if problem := secure_aggregation_problem(config):
        raise ConfigError(f"{src}: {problem}")
    if p.dp:
        if min(p.epsilon, p.clip, p.lr_scale) <= 0 or p.batch_scale < 1 or not 0 <= p.ema < 1:
            raise ConfigError(
                f"{src}: privacy.epsilon, privacy.clip and privacy.lr_scale must be positive, "
                "privacy.batch_scale at least 1 and privacy.ema in [0, 1)"
            )
        if m.local_training != "epochs" or m.teachers != "fresh":
            raise ConfigError(
                f"{src}: privacy.dp needs method.local_training = 'epochs' (a fixed number of "
                "steps to spend the budget over) and method.teachers = 'fresh' (no choice on the "
                "validation split, which the accountant does not cover)"
            )
        not_private = [a for a in c.federated if a in ("fedprox", "ditto", "fedrep")]
        if not_private:
            raise ConfigError(
                f"{src}: privacy.dp cannot run {not_private} (their local training is not DP-SGD "
                "yet); leave them out of competitors.federated"
            )
    if m.stages < 1:
        raise ConfigError(f"{src}: method.stages must be at least 1")
    _choice(config.model.encoder, ("cnn", "vit"), f"{src}: model.encoder")
    sizes = {spec.size for _, spec in config.inputs}
    if config.model.encoder == "vit" and len(sizes) != 1:
        raise ConfigError(
            f"{src}: the ViT encoder needs one input size for all tasks, got {sorted(sizes)}"
        )
    channels = {spec.channels for _, spec in config.inputs}
    if len(channels) != 1:
        raise ConfigError(
            f"{src}: every input spec needs the same number of channels, got {sorted(channels)}"
        )
