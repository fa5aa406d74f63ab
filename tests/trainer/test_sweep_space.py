"""Search spaces and sweep settings read against the experiment schema (no training)."""

from __future__ import annotations

import pytest

from m2f_spec.errors import SpecError
from m2f_spec.sweep.settings import settings_from
from m2f_spec.sweep.space import DEFAULT_PARAMETERS, apply_parameters, parse_parameters

EXPERIMENT = {"model": {"sem_seg_head": {"num_classes": 4}}, "train": {"num_epochs": 6}}


def test_the_default_space_is_valid_and_documented():
    parameters = parse_parameters(None, EXPERIMENT)
    assert [p.path for p in parameters] == list(DEFAULT_PARAMETERS)
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sweep.md").read_text()
    assert all(f"`{path}`" in doc for path in DEFAULT_PARAMETERS)


def test_parameters_apply_to_the_experiment_through_aliases_and_lists():
    out = apply_parameters({"data": {"train": {"img_dir": "x"}}}, {
        "dataset.augmentation.train_crop_size": [512, 512], "train.optim.lr": 1e-4})
    assert out == {"data": {"train": {"img_dir": "x"}, "augmentation": {"train_crop_size": [512, 512]}},
                   "train": {"optim": {"lr": 1e-4}}}


def test_tao_automl_keys_map_onto_the_search():
    settings = settings_from({
        "automl_algorithm": "hyperband", "automl_max_recommendations": 4,
        "automl_hyperparameters": ["train.optim.lr", "model.mask_former.pre_norm", "train.optim.type",
                                   "model.mask_former.nheads"],
        "automl_range_override": [{"parameter": "model.mask_former.nheads", "valid_options": [4, 8]}],
    }, EXPERIMENT)
    assert (settings.algorithm, settings.early_stopping.algorithm, settings.max_trials) == ("random", "hyperband", 4)
    by_path = {p.path: p for p in settings.parameters}
    assert by_path["train.optim.lr"].log and by_path["model.mask_former.pre_norm"].values == (False, True)
    assert by_path["train.optim.type"].values == ("AdamW", "SGD") and by_path["model.mask_former.nheads"].values == (4, 8)
    assert settings.max_epochs == 6


@pytest.mark.parametrize("automl, message", [
    ({"automl_hyperparameters": ["model.mask_former.nheads"]},
     "automl_hyperparameters[model.mask_former.nheads]: the schema gives no finite range"),
    ({"automl_hyperparameters": ["model.mask_former.nheads"],
      "automl_range_override": [{"parameter": "model.mask_former.nheads", "valid_min": 4, "valid_max": 8}]},
     "value 5 is not accepted by the experiment schema"),  # 256 hidden dims over 5 heads
    ({"automl_hyperparameters": ["train.optim.lr"], "automl_algorithm": "pbt"}, "automl_algorithm: 'pbt'"),
])
def test_automl_inputs_the_trainer_would_refuse_are_refused_by_name(automl, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        settings_from(automl, EXPERIMENT)


def test_objective_loss_needs_the_validation_loss():
    with pytest.raises(SpecError, match="monitor_name: val_loss"):
        settings_from({"objective": {"metric": "loss"}}, EXPERIMENT)
    settings = settings_from({"objective": {"metric": "loss"}},
                             {**EXPERIMENT, "train": {"num_epochs": 6, "optim": {"monitor_name": "val_loss"}}})
    assert settings.goal == "minimize"
