"""Stage checkpoints of a run directory: one safetensors file per completed stage and model, and a
progress file.

A stage counts as completed only once its weights and its entry in ``progress.json`` are both
written (weights first, each atomically), so a crash at any moment leaves the last completed stage
intact.

Layout: ``stage_XXX_model.safetensors`` (the universal model; stage 0 is the shared MIM model),
``stage_XXX_mim_decoder.safetensors``, ``stage_XXX_MODEL.safetensors`` for every other federated
model; ``progress.json`` holds ``stages`` (the universal model's stage records), ``arms`` (per other
model, its stage records) and ``evaluation`` (per evaluated arm: the stage, the sites' metrics and
the seconds).
"""

from pathlib import Path

import torch

from meduniverse.core.files import read_json, read_tensors, write_json, write_tensors

UNIVERSAL = "universal"


class Checkpoints:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"
        self.progress_path = self.dir / "progress.json"

    def progress(self) -> dict:
        progress = read_json(self.progress_path) if self.progress_path.is_file() else {}
        return {"stages": {}, "arms": {}, "evaluation": {}, **progress}

    @staticmethod
    def part(model: str) -> str:
        """The weights part a model's stages are saved under."""
        return "model" if model == UNIVERSAL else model

    def records(self, model: str = UNIVERSAL) -> dict[str, dict]:
        """A model's stage records, by stage number (as a string)."""
        progress = self.progress()
        return progress["stages"] if model == UNIVERSAL else progress["arms"].get(model, {})

    def last_stage(self, model: str = UNIVERSAL) -> int | None:
        """A model's last completed stage (None: none yet; a competitor's stage 0 is the universal
        model's)."""
        stages = [int(s) for s in self.records(model)]
        return max(stages) if stages else None

    @staticmethod
    def site_part(site: str) -> str:
        """The part a site model received at a stage is kept under (`runtime.keep_site_models`)."""
        return f"site_{site}"

    def weights_path(self, stage: int, part: str = "model") -> Path:
        return self.dir / f"stage_{stage:03d}_{part}.safetensors"

    def save_stage(
        self,
        stage: int,
        parts: dict[str, dict[str, torch.Tensor]],
        record: dict,
        model: str = UNIVERSAL,
    ) -> None:
        """Write each part's weights (e.g. 'model', 'mim_decoder'), then mark the model's stage
        completed.

        Args:
            stage: the stage number (0: the MIM stage).
            parts: weights by part name (`part(model)`, plus e.g. 'mim_decoder').
            record: what the stage did (seconds, sites' metrics, bytes), kept in progress.json.
            model: whose stage it is ('universal' or another model's name).
        """
        for part, state in parts.items():
            write_tensors(self.weights_path(stage, part), state)
        progress = self.progress()
        target = (
            progress["stages"] if model == UNIVERSAL else progress["arms"].setdefault(model, {})
        )
        target[str(stage)] = record
        write_json(self.progress_path, progress)

    def load_stage(self, stage: int, part: str = "model") -> dict[str, torch.Tensor]:
        return read_tensors(self.weights_path(stage, part))

    def stage_record(self, stage: int, model: str = UNIVERSAL) -> dict:
        return self.records(model)[str(stage)]

    def evaluation(self, stage: int) -> dict[str, dict]:
        """Per arm, the sites' metrics, for arms evaluated on the model of `stage`."""
        return {
            arm: entry["sites"]
            for arm, entry in self.progress()["evaluation"].items()
            if entry["stage"] == stage
        }

    def evaluation_seconds(self) -> dict[str, float]:
        return {arm: entry["seconds"] for arm, entry in self.progress()["evaluation"].items()}

    def save_evaluation(self, arm: str, stage: int, per_site: dict, seconds: float) -> None:
        """Record an arm's evaluation.

        Args:
            arm: the arm's name.
            stage: the stage whose models were evaluated.
            per_site: per site, the scalar metrics it reported.
            seconds: how long the arm's evaluation took.
        """
        progress = self.progress()
        progress["evaluation"][arm] = {"stage": stage, "sites": per_site, "seconds": seconds}
        write_json(self.progress_path, progress)
