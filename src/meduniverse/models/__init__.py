"""Networks: the shared encoder, the task heads and the universal model that joins them."""

from meduniverse.models.universal import TaskInfo, UniversalModel, build_model

__all__ = ["TaskInfo", "UniversalModel", "build_model"]
