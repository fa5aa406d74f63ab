"""The experiment-spec schema: nested dataclasses whose attribute names are TAO Mask2Former's YAML keys."""

# No `from __future__ import annotations`: the loader and the JSON Schema read the real types from
# dataclasses.fields(), so the annotations must stay evaluated objects.

from dataclasses import dataclass

from m2f_spec.fields import section, spec_field

# --------------------------------------------------------------------------------------------- model


@dataclass
class SwinConfig:
    """Swin Transformer backbone; embed dims, depths and heads follow from `type`."""

    type: str = spec_field("tiny", "Swin variant.", choices=("tiny", "small", "base", "large"))
    pretrain_img_size: int = spec_field(384, "Image size the backbone was pretrained at.", minimum=32)
    window_size: int = spec_field(7, "Attention window size.", minimum=1)
    ape: bool = spec_field(False, "Add absolute position embeddings to the patch embeddings.")
    out_indices: list[int] = spec_field(
        [0, 1, 2, 3], "Stages whose outputs feed the pixel decoder.", item_minimum=0, item_maximum=3,
        length=(1, 4),
    )
    out_features: list[str] = spec_field(
        ["res2", "res3", "res4", "res5"], "Names of the output feature maps (one per out_indices entry).",
        item_choices=("res2", "res3", "res4", "res5"), length=(1, 4),
    )
    # TAO's Swin dataclass also carries these architecture knobs; accepted so TAO specs stay valid.
    patch_size: int = spec_field(4, "Patch size of the patch embedding.", minimum=1)
    mlp_ratio: float = spec_field(4.0, "Ratio of MLP hidden dim to embedding dim.", exclusive_minimum=0)
    qkv_bias: bool = spec_field(True, "Add a learnable bias to query, key, value.")
    qk_scale: float | None = spec_field(None, "Override the default qk scale of head_dim ** -0.5.")
    drop_rate: float = spec_field(0.0, "Dropout rate.", minimum=0, maximum=1)
    attn_drop_rate: float = spec_field(0.0, "Attention dropout rate.", minimum=0, maximum=1)
    drop_path_rate: float = spec_field(0.3, "Stochastic depth rate.", minimum=0, maximum=1)
    patch_norm: bool = spec_field(True, "Normalise after the patch embedding.")
    use_checkpoint: bool = spec_field(False, "Activation checkpointing inside the backbone.")


@dataclass
class EfficientViTConfig:
    """EfficientViT backbone."""

    name: str = spec_field(
        "l0", "EfficientViT variant.", choices=("b0", "b1", "b2", "b3", "l0", "l1", "l2", "l3")
    )
    pretrain_img_size: int = spec_field(384, "Image size the backbone was pretrained at.", minimum=32)
    out_indices: list[int] = spec_field(
        [1, 2, 3], "Stages whose outputs feed the pixel decoder.", item_minimum=0, item_maximum=4,
        length=(1, 5),
    )
    out_features: list[str] = spec_field(
        ["res2", "res3", "res4", "res5"], "Names of the output feature maps.",
        item_choices=("res2", "res3", "res4", "res5"), length=(1, 4),
    )
    use_checkpoint: bool = spec_field(False, "Activation checkpointing inside the backbone.")


@dataclass
class BackboneConfig:
    """Backbone selection and per-family settings."""

    type: str = spec_field("swin", "Backbone family.", choices=("swin", "efficientvit"))
    pretrained_weights: str | None = spec_field(None, "Path to pretrained backbone weights (.pth).")
    swin: SwinConfig = section(SwinConfig, "Swin Transformer settings (used when type is swin).")
    efficientvit: EfficientViTConfig = section(
        EfficientViTConfig, "EfficientViT settings (used when type is efficientvit)."
    )
    timm_name: str | None = spec_field(
        None,
        "Project extension: a timm model name (e.g. resnet18, swin_tiny_patch4_window7_224) built with "
        "features_only; overrides type. For tests and experiments with small backbones.",
        extension=True,
    )


@dataclass
class MaskFormerConfig:
    """Transformer decoder and loss settings (TAO `mask_former`)."""

    num_object_queries: int = spec_field(100, "Number of object queries.", minimum=1)
    hidden_dim: int = spec_field(256, "Hidden dimension of the transformer decoder.", minimum=1)
    nheads: int = spec_field(8, "Attention heads in the transformer decoder.", minimum=1)
    dim_feedforward: int = spec_field(2048, "Feed-forward dimension of the transformer decoder.", minimum=1)
    dec_layers: int = spec_field(
        10, "Decoder layers, counting the prediction on the learnable queries (9 + 1).", minimum=1
    )
    dropout: float = spec_field(0.0, "Dropout probability in the transformer decoder.", minimum=0, maximum=1)
    pre_norm: bool = spec_field(False, "Layer norm before (instead of after) attention / FFN.")
    enforce_input_proj: bool = spec_field(False, "Always add the 1x1 input projection to hidden_dim.")
    size_divisibility: int = spec_field(32, "Pad input images to a multiple of this.", minimum=1)
    class_weight: float = spec_field(2.0, "Weight of the classification loss and matching cost.", minimum=0)
    mask_weight: float = spec_field(5.0, "Weight of the sigmoid BCE mask loss and matching cost.", minimum=0)
    dice_weight: float = spec_field(5.0, "Weight of the dice loss and matching cost.", minimum=0)
    no_object_weight: float = spec_field(
        0.1, "Classification weight of the no-object class.", minimum=0, maximum=1
    )
    deep_supervision: bool = spec_field(True, "Add losses on every decoder layer's predictions.")
    train_num_points: int = spec_field(12544, "Points sampled per mask for the mask losses.", minimum=1)
    oversample_ratio: float = spec_field(3.0, "Oversampling ratio of the point sampling.", minimum=1)
    importance_sample_ratio: float = spec_field(
        0.75, "Fraction of points chosen by uncertainty (importance) sampling.", minimum=0, maximum=1
    )


@dataclass
class SemSegHeadConfig:
    """Pixel decoder (multi-scale deformable attention) and class count (TAO `sem_seg_head`)."""

    num_classes: int = spec_field(200, "Number of classes (without the no-object class).", minimum=1)
    norm: str = spec_field("GN", "Normalisation in the pixel decoder.", choices=("GN", "BN", "SyncBN", "LN"))
    common_stride: int = spec_field(4, "Stride of the mask features.", minimum=2)
    transformer_enc_layers: int = spec_field(6, "Deformable transformer encoder layers.", minimum=0)
    convs_dim: int = spec_field(256, "Channels of the pixel decoder convolutions.", minimum=1)
    mask_dim: int = spec_field(256, "Channels of the per-pixel mask embeddings.", minimum=1)
    deformable_transformer_encoder_in_features: list[str] = spec_field(
        ["res3", "res4", "res5"], "Feature maps fed to the deformable transformer encoder.",
        item_choices=("res2", "res3", "res4", "res5"), length=(1, 4),
    )


@dataclass
class ModelConfig:
    """Mask2Former model."""

    mode: str = spec_field(
        "panoptic", "Segmentation task.", choices=("semantic", "instance", "panoptic")
    )
    object_mask_threshold: float = spec_field(
        0.4, "Minimum class score of a query kept in panoptic inference.", minimum=0, maximum=1
    )
    overlap_threshold: float = spec_field(
        0.5, "Minimum visible fraction of a mask kept in panoptic inference.", minimum=0, maximum=1
    )
    test_topk_per_image: int = spec_field(100, "Instances kept per image in instance inference.", minimum=1)
    export: bool = spec_field(False, "Build the model in export mode (TAO flag).")
    backbone: BackboneConfig = section(BackboneConfig, "Backbone.")
    mask_former: MaskFormerConfig = section(MaskFormerConfig, "Transformer decoder and losses.")
    sem_seg_head: SemSegHeadConfig = section(SemSegHeadConfig, "Pixel decoder and number of classes.")


# ------------------------------------------------------------------------------------------- dataset


@dataclass
class SplitConfig:
    """One split (train / val / test) of the dataset."""

    type: str | None = spec_field(
        None, "Dataset format of this split; null inherits dataset.type.",
        choices=("coco_panoptic", "coco", "ade"), aliases={"semantic": "ade"},
    )
    name: str = spec_field("", "Free-form name of the split (TAO).")
    panoptic_json: str | None = spec_field(None, "COCO panoptic JSON (type coco_panoptic).")
    panoptic_dir: str | None = spec_field(None, "Folder of panoptic PNGs (type coco_panoptic).")
    instance_json: str | None = spec_field(None, "COCO instance JSON (type coco).")
    annot_file: str | None = spec_field(
        None, "Semantic JSONL, one {img_path, mask_path} per line (type ade); or COCO JSON (type coco)."
    )
    img_dir: str | None = spec_field(None, "Image folder (may be relative to root_dir).")
    root_dir: str | None = spec_field(None, "Root that relative paths are resolved against.")
    batch_size: int = spec_field(1, "Images per GPU per step.", minimum=1)
    num_workers: int = spec_field(1, "Data loader worker processes.", minimum=0)
    target_size: list[int] = spec_field(
        [], "Resize to [H, W] for evaluation / inference; empty keeps aspect-ratio resizing.",
        item_minimum=1, length=(0, 2),
    )


@dataclass
class AugmentationConfig:
    """Train / test resizing, cropping and optional large-scale jitter."""

    train_min_size: list[int] = spec_field(
        [640], "Short-side sizes sampled for training resizes.", item_minimum=1, length=(1, 64)
    )
    train_max_size: int = spec_field(2560, "Cap on the long side of training resizes.", minimum=32)
    train_crop_size: list[int] = spec_field(
        [640, 640], "Random crop [H, W] for training.", item_minimum=1, length=(2, 2)
    )
    test_min_size: int = spec_field(640, "Short-side size for evaluation / inference.", minimum=32)
    test_max_size: int = spec_field(2560, "Cap on the long side for evaluation / inference.", minimum=32)
    use_lsj: bool = spec_field(
        False, "Project extension: large-scale jitter (random scale of the crop size, then crop/pad).",
        extension=True,
    )
    fixed_padding: bool = spec_field(
        False, "Pad every training image to the fixed train_crop_size (rounded up to 32) before batching, so every "
        "batch has one shape (TAO's cure for host-memory growth with variable sizes).")
    lsj_scale_range: list[float] = spec_field(
        [0.1, 2.0], "Project extension: [min, max] scale factor of large-scale jitter.",
        item_minimum=0.01, item_maximum=10, length=(2, 2), extension=True,
    )


@dataclass
class QuantCalibrationDatasetConfig:
    """Images that calibrate static INT8 quantization (TAO `dataset.quant_calibration_dataset`)."""

    images_dir: str = spec_field(
        "", "Folder of calibration images (a few hundred representative ones); they are resized to "
        "dataset.test.target_size, or to the ONNX model's fixed input size.")
    max_images: int = spec_field(
        256, "Project extension: calibrate on at most this many images (sorted by name).", minimum=1,
        extension=True,
    )


@dataclass
class DatasetConfig:
    """Dataset (YAML key `dataset:` or TAO's alternative `data:`)."""

    type: str | None = spec_field(
        None, "Dataset format; null takes the first split's type, else coco_panoptic.",
        choices=("coco_panoptic", "coco", "ade"), aliases={"semantic": "ade"},
    )
    contiguous_id: bool = spec_field(
        False, "Remap category ids to contiguous class indices 0..K-1 (sorted by id); false uses the raw "
        "category id as the class index, so num_classes must exceed the largest id.",
    )
    label_map: str | None = spec_field(None, "COCO categories JSON (id, name, color, isthing).")
    pixel_mean: list[float] = spec_field(
        [0.485, 0.456, 0.406], "Per-channel mean (0-1 scale).", item_minimum=0, item_maximum=1, length=(3, 3)
    )
    pixel_std: list[float] = spec_field(
        [0.229, 0.224, 0.225], "Per-channel std (0-1 scale).", item_minimum=1e-6, item_maximum=1,
        length=(3, 3),
    )
    workers: int = spec_field(8, "Parallel workers processing data.", minimum=1)
    dataset_type: str = spec_field(
        "default", "serialized: keep the annotations as one serialized buffer shared by all DataLoader workers "
        "instead of Python objects each worker copies on access (host memory on large datasets).",
        choices=("default", "serialized"),
    )
    skip_corrupt: bool = spec_field(
        False, "Project extension: skip a training sample whose image or annotation cannot be read (logged once "
        "with its path, counted in metrics.jsonl) instead of stopping.", extension=True,
    )
    max_skipped_fraction: float = spec_field(
        0.01, "Project extension: with skip_corrupt, training still stops once more than this fraction of an "
        "epoch's samples was skipped.", minimum=0, maximum=1, extension=True,
    )
    pin_memory: bool = spec_field(True, "Page-locked host memory in the data loaders.")
    augmentation: AugmentationConfig = section(AugmentationConfig, "Augmentation.")
    train: SplitConfig = section(SplitConfig, "Training split.")
    val: SplitConfig = section(SplitConfig, "Validation split.")
    test: SplitConfig = section(SplitConfig, "Test (inference) split.")
    quant_calibration_dataset: QuantCalibrationDatasetConfig = section(
        QuantCalibrationDatasetConfig, "Calibration images of `m2f quantize` (static_ptq)."
    )

    def __post_init__(self) -> None:
        # Older TAO specs name the type per split only, newer ones once for the whole dataset: resolve
        # both ways so that consumers can read cfg.dataset.type and cfg.dataset.<split>.type directly.
        splits = (self.train, self.val, self.test)
        if self.type is None:
            self.type = next((s.type for s in splits if s.type), "coco_panoptic")
        for split in splits:
            if split.type is None:
                split.type = self.type


# --------------------------------------------------------------------------------------------- train


@dataclass
class OptimConfig:
    """Optimizer and learning-rate schedule."""

    type: str = spec_field("AdamW", "Optimizer.", choices=("AdamW", "SGD"))
    lr: float = spec_field(2e-4, "Base learning rate.", exclusive_minimum=0)
    backbone_multiplier: float = spec_field(0.1, "Learning-rate multiplier of the backbone.", minimum=0)
    momentum: float = spec_field(0.9, "SGD momentum / AdamW beta1.", minimum=0, maximum=1)
    weight_decay: float = spec_field(0.05, "Weight decay.", minimum=0)
    lr_scheduler: str = spec_field(
        "MultiStep", "MultiStep: x gamma at each milestone; StepLR: x gamma every milestones[0] epochs; "
        "WarmupPoly: poly decay (power 0.9) over all iterations.",
        choices=("MultiStep", "StepLR", "WarmupPoly"),
    )
    milestones: list[int] = spec_field([88, 96], "Epochs at which the learning rate decays.", item_minimum=1)
    gamma: float = spec_field(0.1, "Multiplicative decay factor.", exclusive_minimum=0, maximum=1)
    monitor_name: str = spec_field("train_loss", "What ranks epochs for <train results>/mask2former_model_best.pth: "
                                   "the epoch's mean training loss, or the validation loss (validation epochs).",
                                   choices=("train_loss", "val_loss"))
    warmup_iters: int = spec_field(
        0, "Project extension: linear warm-up iterations before the schedule.", minimum=0, extension=True
    )


@dataclass
class CudnnConfig:
    """cuDNN flags (TAO common train config)."""

    benchmark: bool = spec_field(False, "cudnn.benchmark.")
    deterministic: bool = spec_field(True, "cudnn.deterministic.")


@dataclass
class TrainConfig:
    """Training task."""

    num_gpus: int = spec_field(1, "GPUs per node (see the num_gpus/gpu_ids rule).", minimum=1)
    gpu_ids: list[int] = spec_field([0], "GPU indices per node.", item_minimum=0, length=(1, 64))
    num_nodes: int = spec_field(1, "Nodes (pods) for multi-node training.", minimum=1)
    seed: int = spec_field(1234, "Random seed; -1 disables seeding.", minimum=-1)
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN flags.")
    num_epochs: int = spec_field(10, "Training epochs.", minimum=1)
    iters_per_epoch: int | None = spec_field(None, "Cap on iterations per epoch (null: whole split).",
                                             minimum=1)
    checkpoint_interval: int = spec_field(1, "Save a checkpoint every N epochs.", minimum=1)
    validation_interval: int = spec_field(1, "Validate every N epochs.", minimum=1)
    resume_training_checkpoint_path: str | None = spec_field(None, "Checkpoint to resume from.")
    pretrained_model_path: str | None = spec_field(None, "Mask2Former weights to initialise from.")
    results_dir: str | None = spec_field(None, "Output folder of training (default <results_dir>/train).")
    precision: str = spec_field("fp32", "Training precision.", choices=("fp32", "fp16", "bf16"))
    distributed_strategy: str = spec_field(
        "ddp", "Multi-GPU strategy.", choices=("ddp", "fsdp"), aliases={"ddp_sharded": "fsdp"}
    )
    activation_checkpoint: bool = spec_field(True, "Recompute activations in backward to save memory.")
    activation_checkpoint_policy: str = spec_field(
        "selective", "Project extension: what activation_checkpoint recomputes. selective: the deformable "
        "encoder and the Swin stages at strides 4 and 8 (Swin-T: ~80% of the memory full frees, for ~40% of its "
        "recomputation); full: every backbone block, encoder layer and decoder round (least memory, slowest).",
        choices=("selective", "full"), extension=True,
    )
    clip_grad_type: str = spec_field(
        "full", "full: clip the global gradient norm; value: clip each gradient element.",
        choices=("full", "value"), aliases={"full_model": "full", "norm": "full"},
    )
    clip_grad_norm: float = spec_field(0.1, "Gradient clipping threshold; 0 disables.", minimum=0)
    clip_grad_norm_type: float = spec_field(2.0, "p of the p-norm used by clip_grad_type full.",
                                            exclusive_minimum=0)
    freeze: list[str] = spec_field([], "Module name prefixes to freeze, e.g. [backbone].")
    verbose: bool = spec_field(False, "Verbose optimizer / learning-rate logging.")
    is_dry_run: bool = spec_field(False, "Validate and build everything, then stop before training.")
    optim: OptimConfig = section(OptimConfig, "Optimizer.")
    distributed_timeout_s: int = spec_field(
        600, "Project extension: collective-operation timeout; a lost peer fails the step after it.",
        minimum=1, extension=True,
    )
    metrics_port: int = spec_field(
        9091, "Project extension: rank 0's Prometheus port (0 disables; M2F_METRICS_PORT overrides).",
        minimum=0, maximum=65535, extension=True,
    )


# ------------------------------------------------------------------------------- evaluate / inference


@dataclass
class EvaluateConfig:
    """Evaluation task: a checkpoint, an ONNX model, a TensorRT engine or saved predictions."""

    num_gpus: int = spec_field(1, "GPUs (see the num_gpus/gpu_ids rule).", minimum=1)
    gpu_ids: list[int] = spec_field([0], "GPU indices.", item_minimum=0, length=(1, 64))
    num_nodes: int = spec_field(1, "Nodes.", minimum=1)
    checkpoint: str | None = spec_field(None, "Model checkpoint to evaluate.")
    trt_engine: str | None = spec_field(None, "TensorRT engine to evaluate instead of the checkpoint.")
    results_dir: str | None = spec_field(None, "Output folder (default <results_dir>/evaluate).")
    onnx_file: str | None = spec_field(
        None, "Project extension: evaluate this ONNX model with onnxruntime.", extension=True
    )
    predictions: str | None = spec_field(
        None, "Project extension: folder of saved predictions to score without a model.", extension=True
    )


@dataclass
class InferenceConfig:
    """Inference task on dataset.test.img_dir."""

    num_gpus: int = spec_field(1, "GPUs (see the num_gpus/gpu_ids rule).", minimum=1)
    gpu_ids: list[int] = spec_field([0], "GPU indices.", item_minimum=0, length=(1, 64))
    num_nodes: int = spec_field(1, "Nodes.", minimum=1)
    checkpoint: str | None = spec_field(None, "Model checkpoint.")
    trt_engine: str | None = spec_field(None, "TensorRT engine to run instead of the checkpoint.")
    results_dir: str | None = spec_field(None, "Output folder (default <results_dir>/inference).")
    onnx_file: str | None = spec_field(
        None, "Project extension: run this ONNX model with onnxruntime.", extension=True
    )


# ---------------------------------------------------------------------------------- export / TensorRT


@dataclass
class ExportConfig:
    """ONNX export."""

    results_dir: str | None = spec_field(None, "Output folder (default <results_dir>/export).")
    gpu_id: int = spec_field(0, "GPU used for export.", minimum=0)
    checkpoint: str | None = spec_field(None, "Checkpoint to export.")
    onnx_file: str | None = spec_field(None, "Path of the ONNX file to write.")
    on_cpu: bool = spec_field(
        False, "TAO: true writes the standard-op graph, false its TensorRT-plugin graph of the deformable attention. "
        "Here the graph is standard ops either way (TensorRT 10+ runs GridSample); true also traces on the CPU.")
    input_channel: int = spec_field(3, "Input channels.", minimum=3, maximum=3)
    input_width: int = spec_field(960, "Input width.", minimum=32)
    input_height: int = spec_field(544, "Input height.", minimum=32)
    opset_version: int = spec_field(
        17, "ONNX opset; below 16 the deformable attention samples with gather (no GridSample).", minimum=12,
        maximum=20)
    batch_size: int = spec_field(-1, "Batch size of the graph; -1 is dynamic.", minimum=-1)
    verbose: bool = spec_field(False, "Verbose export logging.")
    parity_tolerance: float = spec_field(
        1e-3, "Project extension: max abs difference allowed between PyTorch and onnxruntime outputs.",
        exclusive_minimum=0, extension=True,
    )


@dataclass
class TensorRTConfig:
    """TensorRT builder settings."""

    data_type: str = spec_field("FP32", "Engine precision.", choices=("FP32", "FP16"))
    workspace_size: int = spec_field(1024, "Builder workspace in MB.", minimum=1)
    min_batch_size: int = spec_field(1, "Minimum batch of the optimisation profile.", minimum=1)
    opt_batch_size: int = spec_field(1, "Optimal batch of the optimisation profile.", minimum=1)
    max_batch_size: int = spec_field(1, "Maximum batch of the optimisation profile.", minimum=1)


@dataclass
class GenTrtEngineConfig:
    """TensorRT engine generation."""

    results_dir: str | None = spec_field(None, "Output folder (default <results_dir>/gen_trt_engine).")
    gpu_id: int = spec_field(0, "GPU that builds the engine.", minimum=0)
    onnx_file: str | None = spec_field(None, "ONNX file to build from.")
    trt_engine: str | None = spec_field(None, "Path of the engine to write.")
    input_channel: int = spec_field(3, "Input channels.", minimum=3, maximum=3)
    input_width: int = spec_field(960, "Input width.", minimum=32)
    input_height: int = spec_field(544, "Input height.", minimum=32)
    opset_version: int = spec_field(17, "ONNX opset.", minimum=11)
    batch_size: int = spec_field(-1, "Batch size; -1 is dynamic.", minimum=-1)
    verbose: bool = spec_field(False, "Verbose TensorRT logging.")
    tensorrt: TensorRTConfig = section(TensorRTConfig, "Builder settings.")


# ------------------------------------------------------------------------------------------- quantize

QUANT_DTYPES = ("int8", "native", "fp8_e4m3fn", "fp8_e5m2")


@dataclass
class QuantTensorConfig:
    """What one layer's weights or activations become (TAO `quantize.layers[].weights / activations`)."""

    dtype: str = spec_field("native", "int8, native (kept in floating point), fp8_e4m3fn or fp8_e5m2.",
                            choices=QUANT_DTYPES)
    observer_or_fake_quant: str = spec_field("", "TAO's observer / fake-quant class; the backends here choose their own.")
    quant_axis: int | None = spec_field(None, "TAO's quantization axis; the backends here quantize weights per channel.")
    observer_or_fake_quant_kwargs: dict = spec_field({}, "Keyword arguments of the observer (TAO); not used here.")


@dataclass
class LayerQuantizationConfig:
    """One `quantize.layers` entry: modules matched by name (fnmatch pattern) and their data types."""

    module_name: str = spec_field("", "Module name or pattern (e.g. `decoder.*`, `*.linear1`).")
    weights: QuantTensorConfig | None = spec_field(None, "Data type of the weights (null: the mode's default).")
    activations: QuantTensorConfig | None = spec_field(
        None, "Data type of the activations (null: the mode's default).")


@dataclass
class QuantizeConfig:
    """Post-training quantization (`m2f quantize`, TAO `quantize`)."""

    backend: str = spec_field(
        "torchao", "torchao: INT8 PyTorch checkpoint; modelopt.onnx: INT8 QDQ ONNX for TensorRT (NVIDIA ModelOpt "
        "where installed, else onnxruntime's quantizer); modelopt.pytorch needs a CUDA GPU.",
        choices=("torchao", "modelopt.onnx", "modelopt.pytorch"),
        aliases={"modelopt_onnx": "modelopt.onnx", "modelopt": "modelopt.pytorch"},
    )
    mode: str = spec_field(
        "weight_only_ptq", "weight_only_ptq: INT8 weights; static_ptq: INT8 weights and activations (ONNX: "
        "calibrated scales; torchao: activation scales computed per batch).",
        choices=("weight_only_ptq", "static_ptq"),
    )
    algorithm: str = spec_field(
        "minmax", "Calibration of modelopt.onnx: minmax / max (range), entropy (KL divergence).",
        choices=("minmax", "max", "entropy", "awq_clip", "awq_lite", "awq_full", "rtn_dq"),
    )
    layers: list[LayerQuantizationConfig] = spec_field([], "Per-module data types, matched in order.")
    skip_names: list[str] = spec_field([], "Module names or patterns left in floating point.")
    model_path: str = spec_field("", "Model to quantize: a .pth checkpoint (torchao) or an .onnx file (modelopt.onnx).")
    results_dir: str | None = spec_field(None, "Output folder (default <results_dir>/quantize).")
    backend_kwargs: dict = spec_field(
        {}, "modelopt.onnx: extra options of onnxruntime's quantize_static (its `extra_options`); torchao: none "
        "are read, so any given is an error.")
    device: str = spec_field("cuda", "Calibration device: cuda, cuda:N, cpu or trt; without a GPU, cpu.")
    default_layer_dtype: str = spec_field("native", "Deprecated in TAO and ignored.", choices=QUANT_DTYPES)
    default_activation_dtype: str = spec_field("native", "Deprecated in TAO and ignored.", choices=QUANT_DTYPES)


# --------------------------------------------------------------------------------------------- top


@dataclass
class WandbConfig:
    """TAO's Weights & Biases block; accepted so TAO specs validate, not used by this project."""

    enable: bool = spec_field(False, "Not used by this project.")
    project: str = spec_field("TAO Toolkit", "Not used by this project.")
    entity: str | None = spec_field(None, "Not used by this project.")
    tags: list[str] = spec_field([], "Not used by this project.")
    reinit: bool = spec_field(False, "Not used by this project.")
    sync_tensorboard: bool = spec_field(False, "Not used by this project.")
    save_code: bool = spec_field(False, "Not used by this project.")
    name: str = spec_field("", "Not used by this project.")


@dataclass
class ExperimentConfig:
    """A whole experiment spec."""

    results_dir: str = spec_field("/results", "Root folder of every task's outputs (M2F_RESULTS_DIR overrides).")
    encryption_key: str | None = spec_field(None, "Key of encrypted model files (redacted in printed specs).")
    model: ModelConfig = section(ModelConfig, "Model.")
    dataset: DatasetConfig = section(DatasetConfig, "Dataset (`data:` is accepted as well).")
    train: TrainConfig = section(TrainConfig, "Training.")
    evaluate: EvaluateConfig = section(EvaluateConfig, "Evaluation.")
    inference: InferenceConfig = section(InferenceConfig, "Inference.")
    export: ExportConfig = section(ExportConfig, "ONNX export.")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, "TensorRT engine generation.")
    quantize: QuantizeConfig = section(QuantizeConfig, "Post-training quantization.")
    wandb: WandbConfig = section(WandbConfig, "Accepted for TAO compatibility; not used.")
