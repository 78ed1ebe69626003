"""Reading a federation TOML file into a `FederationConfig`: unknown keys and wrong types refused,
paths resolved, `--set section.key=value` overrides applied, and the whole checked, every error
naming the file and the field."""

from dataclasses import fields
from pathlib import Path
import tomllib
from typing import Any, get_type_hints

from meduniverse.core.arms import COMPETITORS
from meduniverse.core.config import (
    DEFAULT_INPUTS,
    LOCAL_TRAINING,
    LR_SCHEDULES,
    SCHEDULES,
    SELECTS,
    SITE_NAME,
    TEACHERS,
    TRANSFERS,
    VARIANTS,
    CompetitorsConfig,
    FederationConfig,
    FinetuneConfig,
    InputSpec,
    MethodConfig,
    ModelConfig,
    PoolConfig,
    PrivacyConfig,
    RuntimeConfig,
    SiteConfig,
    secure_aggregation_problem,
)
from meduniverse.core.device import DEVICES, PLACES, PRECISIONS
from meduniverse.core.errors import ConfigError
from meduniverse.core.tasks import GROUPS, TASK_TYPES


def _coerce(value: Any, hint: Any, where: str, base: Path) -> Any:
    """Check one TOML value against a dataclass field's type hint."""
    text = str(hint)
    if "Path" in text:
        if value is None:
            return None
        if "tuple" in text:
            return tuple(_resolve(v, base, where) for v in _as_list(value, where))
        return _resolve(value, base, where)
    if text.startswith("tuple"):
        items = _as_list(value, where)
        inner = int if "int" in text else (int, float) if "float" in text else str
        if not all(isinstance(v, inner) and not isinstance(v, bool) for v in items):
            kind = "number" if inner == (int, float) else inner.__name__
            raise ConfigError(f"{where}: expected a list of {kind}, got {value!r}")
        return tuple(float(v) for v in items) if "float" in text else tuple(items)
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool}
    for name, typ in expected.items():
        if text in (name, f"<class '{name}'>", f"{name} | None"):
            if value is None and "None" in text:
                return None
            if not isinstance(value, typ) or (name != "bool" and isinstance(value, bool)):
                raise ConfigError(f"{where}: expected {name}, got {value!r}")
            return float(value) if name == "float" else value
    return value


def _as_list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _resolve(value: Any, base: Path, where: str) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _build(cls: type, table: Any, where: str, base: Path) -> Any:
    """Make a dataclass from a TOML table, refusing unknown keys and wrong types."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {table!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(table) - names
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} (allowed: {sorted(names)})")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}", base) for k, v in table.items()})


def parse_config(raw: dict[str, Any], source: str, base: Path) -> FederationConfig:
    """Build and check a FederationConfig from a parsed TOML document."""
    raw = dict(raw)
    allowed = {
        "name",
        "data_root",
        "seed",
        "sites",
        "pool",
        "input",
        "model",
        "method",
        "finetune",
        "runtime",
        "competitors",
        "privacy",
    }
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key(s) {sorted(unknown)} (allowed: {sorted(allowed)})"
        )
    data_root = _resolve(raw.get("data_root", "."), base, f"{source}: data_root")
    site_tables = raw.get("sites")
    if not isinstance(site_tables, list) or not site_tables:
        raise ConfigError(f"{source}: needs at least one [[sites]] table")
    sites = tuple(
        _build(SiteConfig, t, f"{source}: sites[{i}]", data_root) for i, t in enumerate(site_tables)
    )
    inputs = dict(DEFAULT_INPUTS)
    for group, table in raw.get("input", {}).items():
        if group not in inputs:
            raise ConfigError(f"{source}: [input.{group}] unknown (allowed: {', '.join(GROUPS)})")
        inputs[group] = _build(InputSpec, table, f"{source}: input.{group}", base)
    config = FederationConfig(
        name=_coerce(raw.get("name", Path(source).stem), "str", f"{source}: name", base),
        sites=sites,
        pool=_build(PoolConfig, raw.get("pool", {}), f"{source}: pool", data_root),
        inputs=tuple(inputs.items()),
        model=_build(ModelConfig, raw.get("model", {}), f"{source}: model", base),
        method=_build(MethodConfig, raw.get("method", {}), f"{source}: method", base),
        finetune=_build(FinetuneConfig, raw.get("finetune", {}), f"{source}: finetune", base),
        runtime=_build(RuntimeConfig, raw.get("runtime", {}), f"{source}: runtime", base),
        competitors=_build(
            CompetitorsConfig, raw.get("competitors", {}), f"{source}: competitors", base
        ),
        privacy=_build(PrivacyConfig, raw.get("privacy", {}), f"{source}: privacy", base),
        seed=_coerce(raw.get("seed", 0), "int", f"{source}: seed", base),
        source=source,
    )
    check_config(config)
    return config


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
    if p.transfer == "outputs" and m.variant != "distil_only":
        raise ConfigError(
            f"{src}: privacy.transfer = 'outputs' needs method.variant = 'distil_only' (the other "
            "variant averages the site models' weights)"
        )
    if problem := secure_aggregation_problem(config):
        raise ConfigError(f"{src}: {problem}")
    if p.dp:
        if p.epsilon <= 0 or p.clip <= 0:
            raise ConfigError(f"{src}: privacy.epsilon and privacy.clip must be positive")
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


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply 'section.key=value' overrides (value in TOML syntax) to a parsed config document."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override '{item}': expected section.key=value")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        *sections, last = key.strip().split(".")
        table = raw
        for section in sections:
            table = table.setdefault(section, {})
        table[last] = parsed
    return raw


def load_config(path: Path | str, overrides: list[str] | None = None) -> FederationConfig:
    """Read a federation TOML file; paths in it are relative to the file (sites' to data_root)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    return parse_config(apply_overrides(raw, overrides or []), str(path), path.parent.resolve())


def config_from_dict(doc: dict[str, Any], source: str) -> FederationConfig:
    """A configuration as `FederationConfig.to_dict` wrote it (config.json, results.json), checked
    like a TOML file; settings that the document predates take their defaults."""

    def plain(table: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in table.items() if v is not None}

    raw = {k: doc[k] for k in ("name", "seed") if k in doc}
    raw["sites"] = [plain(s) for s in doc.get("sites", [])]
    raw["input"] = {group: spec for group, spec in doc.get("inputs", [])}
    for section in ("pool", "model", "method", "finetune", "runtime", "competitors", "privacy"):
        if section in doc:
            raw[section] = plain(doc[section])
    return parse_config(raw, source, Path("/"))
