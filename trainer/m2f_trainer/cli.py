"""The `m2f` command: a thin dispatcher onto one module per task.

Each task module exposes ``main(argv: list[str]) -> int``. Modules are imported lazily so that
light commands (`m2f schema`, `m2f validate`) never import torch.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

from m2f_trainer.errors import UserError, one_line

# command -> (module, one-line help). Exit codes are a contract (see docs/exit-codes.md):
# 0 finished, 2 invalid spec/data/arguments, 143 terminated by SIGTERM, anything else: failure.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("m2f_trainer.tasks.train", "train a model from an experiment spec"),
    "evaluate": ("m2f_trainer.tasks.evaluate", "evaluate a checkpoint, ONNX/TensorRT model or prediction files"),
    "inference": ("m2f_trainer.tasks.inference", "run inference on dataset.test.img_dir"),
    "export": ("m2f_trainer.tasks.export", "export a checkpoint to ONNX and verify parity in onnxruntime"),
    "gen_trt_engine": ("m2f_trainer.tasks.gen_trt_engine", "build a TensorRT engine from an ONNX file"),
    "quantize": ("m2f_trainer.tasks.quantize", "INT8 post-training quantization: torchao checkpoint or QDQ ONNX"),
    "validate": ("m2f_spec.cli", "validate an experiment spec and print it resolved"),
    "schema": ("m2f_spec.cli", "print the JSON Schema of the experiment spec"),
    "data": ("m2f_trainer.data.cli", "dataset tools: `data check`, `data synth`"),
    "sweep": ("m2f_trainer.tasks.sweep", "hyperparameter search (Optuna) trial by trial; `sweep report` for any sweep"),
    "curves": ("m2f_trainer.tasks.curves", "draw a run's loss and validation curves (PNG) from its metrics.jsonl"),
    "convert-checkpoint": ("m2f_trainer.model.convert", "convert HF / detectron2 Mask2Former weights"),
}
# Commands other distributions contribute (the dev cluster's `m2f dev`): entry points in this group, each
# `name = "module"`. The trainer image does not install them; asking for one says what to install.
PLUGIN_GROUP = "m2f.commands"
PLUGINS: dict[str, tuple[str, str]] = {
    "dev": ("mask2former-devcluster", "embedded dev cluster: `dev up`, `dev down`, `dev status`"),
}


def _plugin_module(command: str) -> str | None:
    found = entry_points(group=PLUGIN_GROUP).select(name=command)
    return next(iter(found)).value if found else None


def _usage() -> str:
    width = max(map(len, {**COMMANDS, **PLUGINS}))
    lines = ["usage: m2f <command> [-e spec.yaml] [section.key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in {**COMMANDS, **PLUGINS}.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in PLUGINS:
        module_name = _plugin_module(command)
        if module_name is None:
            print(f"error: `m2f {command}` is not installed here; install {PLUGINS[command][0]}", file=sys.stderr)
            return 2
    elif command in COMMANDS:
        module_name = COMMANDS[command][0]
    else:
        print(f"m2f: unknown command {command!r}; choose from: {', '.join({**COMMANDS, **PLUGINS})}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
        # Modules serving several commands (validate/schema) take the command name first.
        if getattr(module, "MULTI_COMMAND", False):
            return int(module.main([command, *rest]) or 0)
        return int(module.main(rest) or 0)
    except UserError as exc:
        # one_line: a DataError raised in a DataLoader worker comes back wrapped in the worker's traceback.
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
