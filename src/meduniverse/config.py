"""The federation's configuration: a TOML file naming the sites, the server pool, the model and the method."""

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
import tomllib
from typing import Any, get_type_hints

from meduniverse.errors import ConfigError
from meduniverse.tasks import TASK_TYPES, is_segmentation
from meduniverse.transforms import InputSpec

FEDERATED_COMPETITORS = ("fedavg", "fedprox", "fedbn")
VARIANTS = ("distil_only", "average_then_distil")
SCHEDULES = ("mixed", "round_robin")


@dataclass(frozen=True)
class SiteConfig:
    """One hospital: its name, task, class names and where its data lies (exactly one source)."""

    name: str
    task: str
    classes: tuple[str, ...]
    path: Path | None = None
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
    """The server's unlabelled pool: a fraction of the listed sites' train images plus extra image files."""

    fraction: float = 0.2
    seed: int = 0
    sites: tuple[str, ...] = ()
    files: tuple[Path, ...] = ()
    max_images: int = 4000
    segmentation_max: int = 384


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "cnn"
    widths: tuple[int, ...] = (32, 64, 128, 256)
    vit_dim: int = 192
    vit_depth: int = 6
    vit_heads: int = 6
    vit_patch: int = 8


@dataclass(frozen=True)
class MethodConfig:
    """Stage 0 (MIM) and stages 1..S (local training + server distillation)."""

    stages: int = 3
    variant: str = "distil_only"
    mim_epochs: int = 10
    mask_ratio: float = 0.6
    mask_patch_fraction: float = 0.125
    local_epochs: int = 2
    min_steps_per_epoch: int = 12
    max_steps_per_epoch: int = 0  # 0: no cap (a cap makes quick smoke runs)
    distill_epochs: int = 4
    distill_schedule: str = "mixed"
    retention: float = 0.5
    temperature: float = 2.0
    mim_weight: float = 0.0
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
    """How the Simulation Engine runs: sites in parallel, threads each."""

    parallel_sites: int = 2
    threads_per_site: int = 1
    server_threads: int = 2
    min_sites: int = 0  # 0: every site must answer each stage
    reply_timeout: float = 3600.0


@dataclass(frozen=True)
class CompetitorsConfig:
    """The comparison arms of `meduniverse experiment`, with the same stages and local epochs as the method."""

    federated: tuple[str, ...] = ("fedavg", "fedprox", "fedbn")
    proximal_mu: float = 0.01
    probes: tuple[str, ...] = ("baseline", "universal", "fedavg")
    centralized: bool = True


@dataclass(frozen=True)
class FederationConfig:
    name: str
    sites: tuple[SiteConfig, ...]
    pool: PoolConfig = PoolConfig()
    inputs: tuple[tuple[str, InputSpec], ...] = (("classification", InputSpec(32)), ("segmentation", InputSpec(128)))
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    competitors: CompetitorsConfig = CompetitorsConfig()
    seed: int = 0
    source: str = ""

    def input_spec(self, task: str) -> InputSpec:
        return dict(self.inputs)["segmentation" if is_segmentation(task) else "classification"]

    def site(self, name: str) -> SiteConfig:
        for s in self.sites:
            if s.name == name:
                return s
        raise ConfigError(f"{self.source}: no site named '{name}' (sites: {', '.join(s.name for s in self.sites)})")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


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
        inner = int if "int" in text else str
        if not all(isinstance(v, inner) and not isinstance(v, bool) for v in items):
            raise ConfigError(f"{where}: expected a list of {inner.__name__}, got {value!r}")
        return tuple(items)
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
    allowed = {"name", "data_root", "seed", "sites", "pool", "input", "model", "method", "finetune", "runtime", "competitors"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)} (allowed: {sorted(allowed)})")
    data_root = _resolve(raw.get("data_root", "."), base, f"{source}: data_root")
    site_tables = raw.get("sites")
    if not isinstance(site_tables, list) or not site_tables:
        raise ConfigError(f"{source}: needs at least one [[sites]] table")
    sites = tuple(_build(SiteConfig, t, f"{source}: sites[{i}]", data_root) for i, t in enumerate(site_tables))
    inputs = {"classification": InputSpec(32), "segmentation": InputSpec(128)}
    for group, table in raw.get("input", {}).items():
        if group not in inputs:
            raise ConfigError(f"{source}: [input.{group}] unknown (allowed: classification, segmentation)")
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
        competitors=_build(CompetitorsConfig, raw.get("competitors", {}), f"{source}: competitors", base),
        seed=_coerce(raw.get("seed", 0), "int", f"{source}: seed", base),
        source=source,
    )
    check_config(config)
    return config


def check_config(config: FederationConfig) -> None:
    """Refuse configurations that cannot run, naming the file and the field."""
    src = config.source
    names = [s.name for s in config.sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: site names must be unique, got {names}")
    for s in config.sites:
        where = f"{src}: site '{s.name}'"
        if s.task not in TASK_TYPES:
            raise ConfigError(f"{where}: task '{s.task}' unknown (allowed: {', '.join(TASK_TYPES)})")
        minimum = 1 if s.task == "multilabel" else 2
        if len(s.classes) < minimum:
            raise ConfigError(f"{where}: needs at least {minimum} class names, got {list(s.classes)}")
        if s.task == "binary" and len(s.classes) != 2:
            raise ConfigError(f"{where}: a binary task has exactly 2 classes, got {list(s.classes)}")
        if sum(x is not None for x in (s.path, s.medmnist, s.synthetic)) != 1:
            raise ConfigError(f"{where}: give exactly one of 'path', 'medmnist' or 'synthetic'")
        if s.medmnist and s.medmnist_root is None:
            raise ConfigError(f"{where}: 'medmnist' needs 'medmnist_root', the folder holding the files")
    for name in config.pool.sites:
        if name not in names:
            raise ConfigError(f"{src}: pool.sites names '{name}', which is not a site")
    if not 0 < config.pool.fraction < 1 and config.pool.sites:
        raise ConfigError(f"{src}: pool.fraction must lie in (0,1), got {config.pool.fraction}")
    m = config.method
    if m.variant not in VARIANTS:
        raise ConfigError(f"{src}: method.variant '{m.variant}' unknown (allowed: {', '.join(VARIANTS)})")
    if m.distill_schedule not in SCHEDULES:
        raise ConfigError(f"{src}: method.distill_schedule '{m.distill_schedule}' unknown (allowed: {', '.join(SCHEDULES)})")
    c = config.competitors
    for arm in c.federated:
        if arm not in FEDERATED_COMPETITORS:
            raise ConfigError(f"{src}: competitors.federated '{arm}' unknown (allowed: {', '.join(FEDERATED_COMPETITORS)})")
    for encoder in c.probes:
        if encoder not in ("baseline", "universal", *c.federated):
            raise ConfigError(f"{src}: competitors.probes '{encoder}' is not baseline, universal or a federated competitor")
    if m.stages < 1:
        raise ConfigError(f"{src}: method.stages must be at least 1")
    if config.model.encoder not in ("cnn", "vit"):
        raise ConfigError(f"{src}: model.encoder '{config.model.encoder}' unknown (allowed: cnn, vit)")
    sizes = {spec.size for _, spec in config.inputs}
    if config.model.encoder == "vit" and len(sizes) != 1:
        raise ConfigError(f"{src}: the ViT encoder needs one input size for all tasks, got {sorted(sizes)}")
    channels = {spec.channels for _, spec in config.inputs}
    if len(channels) != 1:
        raise ConfigError(f"{src}: every input spec needs the same number of channels, got {sorted(channels)}")


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



def leave_out(config: FederationConfig, name: str) -> FederationConfig:
    """The federation without one site (nor its images in the pool): for leave-one-site-out generalisation."""
    site = config.site(name)
    rest = tuple(s for s in config.sites if s is not site)
    if not rest:
        raise ConfigError(f"{config.source}: leaving out '{name}' leaves no site")
    pool = replace(config.pool, sites=tuple(s for s in config.pool.sites if s != name))
    return replace(config, name=f"{config.name}-without-{name}", sites=rest, pool=pool)
