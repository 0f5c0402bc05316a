"""Typed, validated configuration (pydantic v2), kept apart from execution.

Load order: a YAML file (argument, else ``$PILLSNAP_CONFIG``, else ``./config.yaml``),
then dotted overrides (``export.opset=18``) from the command line or notebook
parameters. Relative paths inside a config file are relative to that file's
folder; relative paths given as overrides are relative to the working directory.

Every validation failure is collected and raised once as ``ConfigError``:
unknown keys name the nearest valid key, wrong types name key, expected and given.
"""

from pillsnap.config.loading import (
    CONFIG_ENV,
    add_config_arguments,
    apply_overrides,
    default_config_path,
    load_config,
    validate_config,
)
from pillsnap.config.sections import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BenchmarkConfig,
    ClassificationConfig,
    CompareConfig,
    Config,
    CudaConfig,
    DetectionConfig,
    ExportConfig,
    GatesConfig,
    ImagesConfig,
    NmsConfig,
    PathsConfig,
    PostprocessConfig,
    PreprocessConfig,
    QuantizeConfig,
    ReleaseConfig,
    RuntimeConfig,
    ServeConfig,
    TensorRTConfig,
    require_path,
)

__all__ = [
    "CONFIG_ENV",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BenchmarkConfig",
    "ClassificationConfig",
    "CompareConfig",
    "Config",
    "CudaConfig",
    "DetectionConfig",
    "ExportConfig",
    "GatesConfig",
    "ImagesConfig",
    "NmsConfig",
    "PathsConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "QuantizeConfig",
    "ReleaseConfig",
    "RuntimeConfig",
    "ServeConfig",
    "TensorRTConfig",
    "add_config_arguments",
    "apply_overrides",
    "default_config_path",
    "load_config",
    "require_path",
    "validate_config",
]
