"""Command line: ``meduniverse demo | run | experiment | adapt | sites | predict | deploy ...``."""

from importlib import resources
import os
from pathlib import Path
import sys

from rich.text import Text
import typer

from meduniverse.core.config import FederationConfig
from meduniverse.core.config import leave_out as without_site
from meduniverse.core.config_file import load_config
from meduniverse.core.errors import ConfigError, MeduniverseError
from meduniverse.deploy.commands import app as deploy_app
from meduniverse.interfaces.console import fail, print_table, say, stderr
from meduniverse.interfaces.model_commands import register_model_commands
from meduniverse.results.document import format_table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # `main` turns an unexpected error into one line
    help="One universal medical imaging model from many hospitals' private data.",
)
app.add_typer(deploy_app, name="deploy")


def main(args: list[str] | None = None) -> None:
    """The `meduniverse` command (`args`: its arguments, default the process's): an unexpected
    error is one line naming it, not a traceback (MEDUNIVERSE_DEBUG=1 shows the traceback)."""
    try:
        app(args=args, prog_name="meduniverse")
    except Exception as exc:
        if os.environ.get("MEDUNIVERSE_DEBUG"):
            raise
        stderr.print(
            Text.assemble(
                ("error: ", "red"),
                f"unexpected {type(exc).__name__}: {exc} (MEDUNIVERSE_DEBUG=1 shows where)",
            )
        )
        sys.exit(2)


def demo_config_path() -> Path:
    return Path(str(resources.files("meduniverse") / "configs" / "demo.toml"))


def run_config(config: FederationConfig, out_dir: Path, seed: int | None, progress: bool) -> None:
    """Run a federation on the Simulation Engine and print its per-task table.

    Args:
        config: the federation.
        out_dir: the run directory.
        seed: the run's seed (None: the configuration's).
        progress: show progress bars.
    """
    from meduniverse.results.run import run  # imports torch and Flower: keep `--help` fast

    results = run(config, out_dir, seed, show_progress=progress)
    metrics = ", ".join(sorted({t["metric"] for t in results["tasks"].values()}))
    print_table(format_table(results), f"{config.name}: test {metrics} per task")
    say(
        f"results: {out_dir / 'results.json'}   model: {out_dir / 'model'}   log: "
        f"{out_dir / 'log.txt'}"
    )


@app.command("demo")
def demo_command(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """The whole method on the embedded SYNTHETIC federation (offline, minutes on 2 cores)."""
    try:
        run_config(load_config(demo_config_path()), out_dir, None, progress)
    except MeduniverseError as exc:
        fail(exc)


@app.command("run")
def run_command(
    config: Path = typer.Argument(..., help="Federation TOML file"),
    out_dir: Path = typer.Option(..., "--out", help="Run directory (re-use it to resume)"),
    seed: int = typer.Option(None, help="Seed (default: the config's)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a setting, e.g. --set method.stages=2"
    ),
    leave_out: str = typer.Option(
        None, "--leave-out", help="Run without this site (for 'adapt --leave-out')"
    ),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """MIM baseline, S stages of local training + server distillation, evaluation of every task."""
    try:
        cfg = load_config(config, overrides)
        run_config(without_site(cfg, leave_out) if leave_out else cfg, out_dir, seed, progress)
    except MeduniverseError as exc:
        fail(exc)


@app.command("experiment")
def experiment_command(
    config: Path = typer.Argument(..., help="Federation TOML file"),
    seeds: int = typer.Option(3, help="Number of seeds (0, 1, ... N-1 added to the config's seed)"),
    out_dir: Path = typer.Option(..., "--out", help="Experiment directory (re-use it to resume)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a setting, e.g. --set method.stages=2"
    ),
    report: bool = typer.Option(True, help="Write DIR/report.html"),
    leave_out: str = typer.Option(None, "--leave-out", help="Run without this site"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Every arm for N seeds (method, federated, centralised, probes): CIs, tests, report."""
    from meduniverse.interfaces.report import build_report
    from meduniverse.results.experiment import run_experiment
    from meduniverse.sites.pool import build_pool

    if seeds < 1:
        fail(ValueError(f"--seeds must be at least 1, got {seeds}"))
    try:
        cfg = load_config(config, overrides)
        cfg = without_site(cfg, leave_out) if leave_out else cfg
        pool = build_pool(cfg)
        results = run_experiment(cfg, out_dir, [cfg.seed + k for k in range(seeds)], progress, pool)
        if report:
            build_report(out_dir, results, cfg, pool)
    except MeduniverseError as exc:
        fail(exc)
    print_table(format_table(results), f"{cfg.name}: test metric per task, mean of {seeds} seed(s)")
    for name, test in results["tests"].items():
        say(
            f"{name}: wins {test['wins']}, losses {test['losses']} of {test['n_pairs']} pairs, "
            f"mean difference {test['mean_difference']:+.4f}, Wilcoxon p = {test['wilcoxon_p']:.3g}"
        )
    say(
        f"results: {out_dir / 'results.json'}"
        + (f"   report: {out_dir / 'report.html'}" if report else "")
    )


@app.command("adapt")
def adapt_command(
    run_dir: Path = typer.Argument(
        ..., help="A run directory (or its model/ folder) of 'meduniverse run'"
    ),
    data: Path = typer.Option(None, help="The unseen site's labelled .npz file"),
    task: str = typer.Option(None, help="Its task type (with --data)"),
    classes: str = typer.Option(
        "", help="Its class names, comma-separated (with --data; default: inferred)"
    ),
    config: Path = typer.Option(
        None, help="With --leave-out: the federation TOML naming that site"
    ),
    leave_out: str = typer.Option(
        None, "--leave-out", help="Adapt to this site of --config, left out of the run"
    ),
    fractions: str = typer.Option("0.01,0.1,1.0", help="Fractions of the site's training labels"),
    seeds: int = typer.Option(3, help="Seeds per fraction"),
    out_dir: Path = typer.Option(..., "--out", help="Output directory (re-use it to resume)"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Probe and fine-tune the run's universal and baseline encoders on a site that took no part."""
    from meduniverse.results.adapt import NewSite, run_adapt, site_from_file
    from meduniverse.sites.sources import read_raw

    try:
        if (data is None) == (leave_out is None):
            raise ConfigError(
                "give either --data FILE --task TYPE, or --config CONFIG --leave-out SITE"
            )
        if leave_out is not None:
            if config is None:
                raise ConfigError(
                    "--leave-out needs --config, the federation TOML that names the site"
                )
            cfg = load_config(config)
            site = cfg.site(leave_out)
            new_site = NewSite(site.name, site.task, site.classes, read_raw(site, cfg.seed))
        else:
            if task is None:
                raise ConfigError("--data needs --task")
            new_site = site_from_file(
                data, task, tuple(c.strip() for c in classes.split(",") if c.strip())
            )
        try:
            levels = [float(f) for f in fractions.split(",")]
        except ValueError:
            raise ConfigError(
                f"--fractions must be comma-separated numbers, got '{fractions}'"
            ) from None
        results = run_adapt(run_dir, new_site, levels, list(range(seeds)), out_dir, progress)
    except MeduniverseError as exc:
        fail(exc)
    print_table(
        format_table(results),
        f"adapt to {new_site.name}: test {results['tasks'][new_site.name]['metric']}, mean of "
        f"{seeds} seed(s)",
    )
    for name, test in results["tests"].items():
        say(
            f"{name}: mean difference {test['mean_difference']:+.4f} (wins {test['wins']}, losses "
            f"{test['losses']})"
        )
    say(f"results: {out_dir / 'results.json'}")


@app.command("extend")
def extend_command(
    run_dir: Path = typer.Argument(..., help="A finished run directory"),
    config: Path = typer.Option(
        ..., help="The federation with the new sites (every old site kept)"
    ),
    out_dir: Path = typer.Option(..., "--out", help="New run directory (re-use it to resume)"),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Add new sites (new heads) to a trained federation and run further stages from its model."""
    from meduniverse.results.extend import extend

    try:
        results = extend(run_dir, load_config(config, overrides), out_dir, progress)
    except MeduniverseError as exc:
        fail(exc)
    print_table(format_table(results), f"{results['config']['name']}: after the extension")
    for site, m in results["extension"]["old_tasks"].items():
        say(f"{site}: universal {m['before']:.3f} before, {m['after']:.3f} after")
    say(f"results: {out_dir / 'results.json'}")


@app.command("sites")
def sites_command(
    config: Path = typer.Argument(..., help="Federation TOML file"),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting"),
) -> None:
    """Validate every site's data and the pool; print one row per site."""
    from meduniverse.sites.pool import build_pool, verify_disjoint
    from meduniverse.sites.sources import class_warnings, load_site

    warnings = []
    try:
        cfg = load_config(config, overrides)
        rows = [["site", "task", "classes", "stored", "input", "train", "val", "test"]]
        for site in cfg.sites:
            data = load_site(site, cfg.pool, cfg.input_spec(site.task), cfg.seed)
            shape = data.native_shape
            colour = "RGB" if len(shape) == 3 and shape[2] == 3 else "gray"
            warnings += class_warnings(data)
            rows.append(
                [
                    site.name,
                    site.task,
                    str(len(site.classes)),
                    f"{shape[0]}x{shape[1]} {colour}",
                    f"{data.spec.size}px",
                    *(str(len(data.splits[s])) for s in ("train", "val", "test")),
                ]
            )
        pool = verify_disjoint(cfg, build_pool(cfg))
    except MeduniverseError as exc:
        fail(exc)
    print_table(rows, f"{cfg.name}: {len(cfg.sites)} sites")
    for line in warnings:
        stderr.print(Text.assemble(("warning: ", "yellow"), line))
    say(
        f"server pool: {pool} unlabelled images, disjoint from every site's private data (checked "
        "by SHA-256)"
    )


register_model_commands(app)
