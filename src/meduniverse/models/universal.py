"""The universal model: one shared encoder and one head per task."""

from dataclasses import dataclass

import torch
from torch import nn

from meduniverse.core.config import FederationConfig, ModelConfig
from meduniverse.core.tasks import task_type
from meduniverse.models.encoder import CNNEncoder, ViTEncoder
from meduniverse.models.heads import ClassificationHead, DecoderHead


@dataclass(frozen=True)
class TaskInfo:
    """A head's identity: the site's name, task type and class names."""

    name: str
    task: str
    classes: tuple[str, ...]

    @property
    def num_outputs(self) -> int:
        return task_type(self.task).outputs(len(self.classes))


class UniversalModel(nn.Module):
    """Encoder plus ``heads[name]`` per task; ``model(x, name)`` gives that task's logits.

    With `adapters`, each task also has a residual 1×1 convolution after every level of the encoder
    (`adapters[name][level]`, zero at first so that the encoder starts as it was): task-specific
    capacity inside the shared encoder, about 6% of its parameters per task.
    """

    def __init__(self, encoder: nn.Module, tasks: list[TaskInfo], adapters: bool = False):
        super().__init__()
        self.encoder = encoder
        self.tasks = {t.name: t for t in tasks}
        widths = encoder.widths
        self.heads = nn.ModuleDict(
            {
                t.name: DecoderHead(widths, t.num_outputs)
                if task_type(t.task).segmentation
                else ClassificationHead(widths, t.num_outputs)
                for t in tasks
            }
        )
        self.adapters = nn.ModuleDict(
            {t.name: nn.ModuleList(zero_conv(w) for w in widths) for t in tasks} if adapters else {}
        )

    def encode(self, x: torch.Tensor, task: str) -> list[torch.Tensor]:
        """The encoder's pyramid for one task (through its adapters, if the model has them)."""
        if not self.adapters:
            return self.encoder(x)
        adapters = self.adapters[task]
        return self.encoder(x, lambda level, f: f + adapters[level](f))

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        return self.heads[task](self.encode(x, task))

    def pyramids(self, x: torch.Tensor, tasks: list[str]) -> dict[str, list[torch.Tensor]]:
        """Each task's encoder pyramid: one encoder pass, or one per task with adapters."""
        if self.adapters:
            return {t: self.encode(x, t) for t in tasks}
        features = self.encoder(x)
        return dict.fromkeys(tasks, features)


def pooled(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """The deepest level of an encoder pyramid averaged over space: N×D."""
    return pyramid[-1].mean((2, 3))


def zero_conv(channels: int) -> nn.Conv2d:
    """A 1×1 convolution that starts as zero (an adapter that changes nothing yet)."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def build_encoder(model: ModelConfig, in_channels: int, img_size: int) -> nn.Module:
    if model.encoder == "vit":
        return ViTEncoder(
            in_channels,
            img_size,
            model.widths,
            model.vit_dim,
            model.vit_depth,
            model.vit_heads,
            model.vit_patch,
        )
    return CNNEncoder(in_channels, model.widths)


def site_tasks(config: FederationConfig) -> list[TaskInfo]:
    return [TaskInfo(s.name, s.task, s.classes) for s in config.sites]


def build_model(
    config: FederationConfig, tasks: list[TaskInfo] | None = None, seed: int | None = None
) -> UniversalModel:
    """A freshly initialised universal model (all the federation's tasks unless `tasks` says
    otherwise)."""
    if seed is not None:
        torch.manual_seed(seed)
    spec = config.inputs[0][1]  # sizes differ only for the CNN, which takes any size
    return UniversalModel(
        build_encoder(config.model, spec.channels, spec.size),
        tasks or site_tasks(config),
        config.model.adapters,
    )


ENCODER_PREFIX = "encoder."


def encoder_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights of a model's state."""
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}


def head_part(state: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """One task's own weights of a model's state: its head, and its adapters if it has any."""
    own = (f"heads.{task}.", f"adapters.{task}.")
    return {k: v for k, v in state.items() if k.startswith(own)}


def is_task_key(key: str) -> bool:
    """Whether a state key belongs to one task (a head or an adapter), not to the shared encoder."""
    return key.startswith(("heads.", "adapters."))


def part_of(state: dict[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    """The encoder's weights and one head's: what a site model consists of."""
    return {**encoder_part(state), **head_part(state, task)}


NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)
LOCAL_PREFIX = "local."
PERSONAL_PREFIX = "personal."  # a site's personal model (Ditto), beside the global one


def norm_keys(model: UniversalModel) -> set[str]:
    """State keys of the encoder's normalisation layers (what FedBN keeps at each site)."""
    return {
        f"{ENCODER_PREFIX}{name}.{p}"
        for name, module in model.encoder.named_modules()
        if isinstance(module, NORM_LAYERS)
        for p, _ in module.named_parameters(recurse=False)
    }


def local_key(site: str, key: str) -> str:
    """Where a server-side state keeps a site's own copy of a shared key (FedBN's norm layers)."""
    return f"{LOCAL_PREFIX}{site}.{key}"


def personal_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The personal model in a site's state (its `personal.` keys), under the model's key names."""
    n = len(PERSONAL_PREFIX)
    return {k[n:]: v for k, v in state.items() if k.startswith(PERSONAL_PREFIX)}


def as_personal(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A site model's state under the personal model's key names."""
    return {f"{PERSONAL_PREFIX}{k}": v for k, v in state.items()}


def site_state(state: dict[str, torch.Tensor], site: str) -> dict[str, torch.Tensor]:
    """A site's model from a server-side state: encoder + its head, with the site's own local copies
    on top."""
    prefix = f"{LOCAL_PREFIX}{site}."
    return {
        **part_of(state, site),
        **{k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
    }
