"""The universal model on disk: ``model.safetensors`` plus ``card.json`` (tasks, classes, input
specs, normalisation)."""

from dataclasses import asdict
from pathlib import Path

from meduniverse.core.config import FederationConfig, ModelConfig
from meduniverse.core.errors import DataError
from meduniverse.core.files import read_json, read_tensors, write_json, write_tensors
from meduniverse.models.universal import TaskInfo, UniversalModel, build_encoder

CARD_VERSION = 1


def save_model(
    model: UniversalModel, config: FederationConfig, directory: Path, extra: dict | None = None
) -> None:
    """Write the weights and a card describing every head, atomically (weights first, card last).

    Args:
        model: the universal model.
        config: the federation (inputs, model settings, name).
        directory: where model.safetensors and card.json go.
        extra: more card fields (stage, seed).
    """
    directory = Path(directory)
    write_tensors(directory / "model.safetensors", model.state_dict())
    card = {
        "format": "meduniverse-universal-model",
        "version": CARD_VERSION,
        "federation": config.name,
        "model": asdict(config.model),
        "inputs": {group: spec.card() for group, spec in config.inputs},
        "tasks": [
            {
                "name": t.name,
                "type": t.task,
                "classes": list(t.classes),
                "input": config.input_spec(t.task).card(),
            }
            for t in model.tasks.values()
        ],
        **(extra or {}),
    }
    write_json(directory / "card.json", card)


def model_from_card(card: dict, tasks: list[TaskInfo]) -> UniversalModel:
    """A freshly initialised model with the card's encoder and the given heads."""
    model_cfg = ModelConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in card["model"].items()}
    )
    first = next(iter(card["inputs"].values()))
    encoder = build_encoder(model_cfg, first["channels"], first["size"])
    return UniversalModel(encoder, tasks, model_cfg.adapters)


def load_model(directory: Path) -> tuple[UniversalModel, dict]:
    """Load a saved universal model and its card."""
    directory = Path(directory)
    card_path, weights_path = directory / "card.json", directory / "model.safetensors"
    for path in (card_path, weights_path):
        if not path.is_file():
            raise DataError(
                f"{path}: not found (is {directory} a model directory written by 'meduniverse "
                "run'?)"
            )
    card = read_json(card_path)
    if card.get("format") != "meduniverse-universal-model":
        raise DataError(f"{card_path}: not a meduniverse model card")
    model = model_from_card(
        card, [TaskInfo(t["name"], t["type"], tuple(t["classes"])) for t in card["tasks"]]
    )
    model.load_state_dict(read_tensors(weights_path))
    model.eval()
    return model, card
