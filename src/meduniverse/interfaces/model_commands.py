"""The commands that use a trained model: `report`, `serve`, `predict` and `audit`."""

from pathlib import Path

import typer

from meduniverse.core.errors import ConfigError, MeduniverseError
from meduniverse.interfaces.console import fail, say


def register_model_commands(app: typer.Typer) -> None:
    """Add the commands to the `meduniverse` app."""

    @app.command("report")
    def report_command(
        run_dir: Path = typer.Argument(
            ..., help="A run or experiment directory (with results.json)"
        ),
    ) -> None:
        """(Re)build DIR/report.html from a run's or experiment's results and checkpoints."""
        from meduniverse.core.config_file import config_from_dict
        from meduniverse.core.files import read_json
        from meduniverse.interfaces.report import build_report

        try:
            path = run_dir / "results.json"
            if not path.is_file():
                raise ConfigError(
                    f"{path}: not found (is {run_dir} a run or experiment directory?)"
                )
            results = read_json(path)
            config = config_from_dict(results["config"], str(path)) if "config" in results else None
            page = build_report(run_dir, results, config)
        except MeduniverseError as exc:
            fail(exc)
        say(f"report: {page}")

    @app.command("serve")
    def serve_command(
        model_dir: Path = typer.Argument(..., help="A run's model/ directory"),
        host: str = typer.Option("127.0.0.1", help="Address to listen on"),
        port: int = typer.Option(8080, help="Port"),
        device: str = typer.Option("auto", help="auto (CUDA if present), cpu or cuda"),
    ) -> None:
        """A web page to try the model on an image: class probabilities, or the mask over it."""
        from meduniverse.core.device import resolve_device
        from meduniverse.interfaces.serve import make_app
        from meduniverse.models.io import load_model
        from meduniverse.results.model_card import card_page

        try:
            model, card = load_model(model_dir)
            app = make_app(model.to(resolve_device(device)), card, card_page(model_dir, card))
        except MeduniverseError as exc:
            fail(exc)
        say(f"serving {model_dir} on http://{host}:{port} (Ctrl-C stops)")
        app.run(host=host, port=port)

    @app.command("predict")
    def predict_command(
        model_dir: Path = typer.Argument(..., help="A run's model/ directory"),
        task: str = typer.Option(..., help="Task (site) name"),
        images: list[Path] = typer.Argument(
            ..., help="Image files or folders (PNG/JPEG/BMP/TIFF, DICOM, NIfTI, .npy)"
        ),
        out_dir: Path = typer.Option(Path("."), "--out-dir", help="Where masks are written"),
        frame: int = typer.Option(
            None, help="Only this frame (DICOM) or slice (NIfTI) of each file"
        ),
        axis: int = typer.Option(2, help="NIfTI slice axis"),
        masks: str = typer.Option("png", help="Segmentation masks: png (per frame) or nifti"),
        csv_path: Path = typer.Option(None, "--csv", help="Write class probabilities to this CSV"),
        device: str = typer.Option("auto", help="auto (CUDA if present), cpu or cuda"),
        progress: bool = typer.Option(True, help="Show a progress bar"),
    ) -> None:
        """Class probabilities or segmentation masks for every frame of every image."""
        from meduniverse.core.device import resolve_device
        from meduniverse.core.progress import RunProgress
        from meduniverse.core.tasks import task_type
        from meduniverse.interfaces.predict import output_stem, run_predict, task_card, write_csv
        from meduniverse.models.io import load_model

        try:
            model, card = load_model(model_dir)
            model.to(resolve_device(device))
            entry = task_card(card, task)
            with RunProgress(progress) as bars:
                on_file = bars.phase(f"predict {task}")
                results = run_predict(
                    model, card, task, images, out_dir, frame, axis, masks, on_file
                )
            if task_type(entry["type"]).segmentation:
                say(f"{len(results)} mask(s) written to {out_dir} ({masks})")
                for r in results if masks == "png" else ():
                    mask = out_dir / f"{output_stem(r.frame, task)}_mask.png"
                    say(
                        f"{r.frame.path}{' ' + r.frame.label if r.frame.label else ''}: mask {mask}"
                    )
            else:
                for r in results:
                    probs = "  ".join(
                        f"{n}={p:.3f}"
                        for n, p in zip(entry["classes"], r.probs.tolist(), strict=True)
                    )
                    say(f"{r.frame.path}{' ' + r.frame.label if r.frame.label else ''}: {probs}")
                if csv_path is not None:
                    write_csv(results, entry["classes"], csv_path)
                    say(f"probabilities written to {csv_path}")
        except MeduniverseError as exc:
            fail(exc)

    @app.command("audit")
    def audit_command(
        run_dir: Path = typer.Argument(..., help="A run directory written by 'meduniverse run'"),
        references: int = typer.Option(
            4, help="Reference models per site for the calibrated attack (0: loss attack only)"
        ),
        limit: int = typer.Option(500, help="Most members (and as many non-members) per site"),
        seed: int = typer.Option(0, help="Seed of the draws and of the reference models"),
        site_models: bool = typer.Option(
            False,
            "--site-models",
            help="Attack the site models the server received at the last stage (a run with "
            "runtime.keep_site_models), each at its own site, instead of the released model",
        ),
        progress: bool = typer.Option(True, help="Show a progress bar"),
    ) -> None:
        """Membership inference against the run's released model: attack AUC per site."""
        from meduniverse.interfaces.console import print_table
        from meduniverse.results.audit import AuditSettings, audit_run

        try:
            settings = AuditSettings(references, limit, seed, site_models)
            audit = audit_run(run_dir, settings, progress)
        except MeduniverseError as exc:
            fail(exc)
        rows = [
            [
                site,
                str(entry["members"]),
                f"{entry['loss_auc']:.3f}",
                f"{entry['reference_auc']:.3f}" if "reference_auc" in entry else "-",
            ]
            for site, entry in audit["sites"].items()
        ]
        print_table(
            [["site", "members", "loss attack AUC", "calibrated attack AUC"], *rows],
            "membership inference (0.5: members cannot be told apart)",
        )
        name = "audit_site_models.json" if site_models else "audit.json"
        say(f"audit: {run_dir / name} (and results.json)")
