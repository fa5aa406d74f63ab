"""Experiment spec: typed TAO-compatible schema, YAML loader with overrides, JSON Schema (no torch import)."""

from m2f_spec.args import parse_task_args, task_results_dir
from m2f_spec.jsonschema import json_schema
from m2f_spec.loader import config_from_dict, dump_yaml, load_spec, resolve_gpus, spec_to_dict
from m2f_spec.schema import (
    AugmentationConfig,
    BackboneConfig,
    DatasetConfig,
    EfficientViTConfig,
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    GenTrtEngineConfig,
    InferenceConfig,
    MaskFormerConfig,
    ModelConfig,
    OptimConfig,
    SemSegHeadConfig,
    SplitConfig,
    SwinConfig,
    TensorRTConfig,
    TrainConfig,
)

__all__ = [
    "AugmentationConfig",
    "BackboneConfig",
    "DatasetConfig",
    "EfficientViTConfig",
    "EvaluateConfig",
    "ExperimentConfig",
    "ExportConfig",
    "GenTrtEngineConfig",
    "InferenceConfig",
    "MaskFormerConfig",
    "ModelConfig",
    "OptimConfig",
    "SemSegHeadConfig",
    "SplitConfig",
    "SwinConfig",
    "TensorRTConfig",
    "TrainConfig",
    "config_from_dict",
    "dump_yaml",
    "json_schema",
    "load_spec",
    "parse_task_args",
    "resolve_gpus",
    "spec_to_dict",
    "task_results_dir",
]
