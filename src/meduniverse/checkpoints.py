"""Stage checkpoints of a run directory: one safetensors file per completed stage, and a progress file.

A stage counts as completed only once its weights and its entry in ``progress.json`` are both written
(weights first, each atomically), so a crash at any moment leaves the last completed stage intact.
"""

from pathlib import Path

import torch

from meduniverse.files import read_json, read_tensors, write_json, write_tensors


class Checkpoints:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "checkpoints"
        self.progress_path = self.dir / "progress.json"

    def progress(self) -> dict:
        progress = read_json(self.progress_path) if self.progress_path.is_file() else {}
        return {"stages": {}, "arms": {}, "evaluation": {}, **progress}

    def last_stage(self) -> int | None:
        stages = [int(s) for s in self.progress()["stages"]]
        return max(stages) if stages else None

    def weights_path(self, stage: int, part: str = "model") -> Path:
        return self.dir / f"stage_{stage:03d}_{part}.safetensors"

    def save_stage(self, stage: int, parts: dict[str, dict[str, torch.Tensor]], record: dict) -> None:
        """Write each part's weights (e.g. 'model', 'mim_decoder'), then mark the stage completed."""
        for part, state in parts.items():
            write_tensors(self.weights_path(stage, part), state)
        progress = self.progress()
        progress["stages"][str(stage)] = record
        write_json(self.progress_path, progress)

    def load_stage(self, stage: int, part: str = "model") -> dict[str, torch.Tensor]:
        return read_tensors(self.weights_path(stage, part))

    def last_arm_stage(self, arm: str) -> int:
        """Last completed stage of a comparison arm (0: none; its stage 0 is the shared MIM encoder)."""
        return max((int(s) for s in self.progress()["arms"].get(arm, {})), default=0)

    def save_arm_stage(self, arm: str, stage: int, state: dict[str, torch.Tensor], record: dict) -> None:
        write_tensors(self.weights_path(stage, arm), state)
        progress = self.progress()
        progress["arms"].setdefault(arm, {})[str(stage)] = record
        write_json(self.progress_path, progress)

    def stage_record(self, stage: int) -> dict:
        return self.progress()["stages"][str(stage)]

    def evaluation(self, stage: int) -> dict[str, dict]:
        """Per arm, the sites' metrics, for arms evaluated on the model of `stage`."""
        return {arm: entry["sites"] for arm, entry in self.progress()["evaluation"].items() if entry["stage"] == stage}

    def evaluation_seconds(self) -> dict[str, float]:
        return {arm: entry["seconds"] for arm, entry in self.progress()["evaluation"].items()}

    def save_evaluation(self, arm: str, stage: int, per_site: dict, seconds: float) -> None:
        progress = self.progress()
        progress["evaluation"][arm] = {"stage": stage, "sites": per_site, "seconds": seconds}
        write_json(self.progress_path, progress)
