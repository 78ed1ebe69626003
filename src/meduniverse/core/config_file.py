"""Reading a federation TOML file into a `FederationConfig`: unknown keys and wrong types refused,
paths resolved, `--set section.key=value` overrides applied, and the whole checked, every error
naming the file and the field."""

from dataclasses import fields
from pathlib import Path
import tomllib
from typing import Any, get_type_hints

from meduniverse.core.config import (
    DEFAULT_INPUTS,
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
)
from meduniverse.core.config_checks import check_config
from meduniverse.core.errors import ConfigError
from meduniverse.core.tasks import GROUPS


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
