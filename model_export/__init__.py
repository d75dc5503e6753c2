"""Turn model definitions into verified, builtin-ops-only trainable TFLite artifacts."""

from fedge.model_export.exporter import (
    EXPORTER_VERSION,
    convert,
    export_model,
    export_spec,
    op_names,
)
from fedge.model_export.zoo import FrozenStack, ModelSpec, available_models, build, register

__all__ = [
    "EXPORTER_VERSION",
    "FrozenStack",
    "ModelSpec",
    "available_models",
    "build",
    "convert",
    "export_model",
    "export_spec",
    "op_names",
    "register",
]
