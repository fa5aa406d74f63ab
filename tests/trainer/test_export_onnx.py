"""`m2f export`: every mode x static/dynamic batch gives a valid ONNX (TAO's outputs) that onnxruntime runs within
tolerance of PyTorch, at opset 12 too (gather-based deformable sampling); a failed parity gate leaves no ONNX
behind; spec errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from m2f_spec import load_spec
from m2f_trainer.cli import main
from m2f_trainer.data.build import build_dataset
from m2f_trainer.data.collate import collate
from m2f_trainer.data.synth import synthesize
from m2f_trainer.export.onnx_runner import OnnxRunner
from m2f_trainer.export.wrappers import OUTPUT_NAMES, ExportWrapper
from m2f_trainer.model import build_criterion, build_model, load_model_checkpoint, save_model_checkpoint
from m2f_trainer.model.ms_deform_attn import gather_bilinear, gather_sampling, ms_deform_attn_core

KIND_OF_MODE = {"panoptic": "coco_panoptic", "instance": "coco", "semantic": "semantic"}
SIZE = 64
# The smallest decoder (one masked-attention layer) keeps tracing fast; everything else is synth's tiny spec.
TINY = ["model.mask_former.dec_layers=2", f"export.input_height={SIZE}", f"export.input_width={SIZE}",
        "export.on_cpu=true"]


def make_case(root: Path, mode: str, fit_steps: int = 0) -> tuple[Path, Path]:
    """A synthetic dataset of the mode (2 images, 64x64), its spec and a checkpoint of a seeded tiny model,
    fitted to the two images for ``fit_steps`` AdamW steps (so that its predictions score above zero)."""
    spec = synthesize(KIND_OF_MODE[mode], root / mode, num_images=2, size=(SIZE, SIZE))
    cfg = load_spec(spec, overrides=["model.mask_former.dec_layers=2", "model.mask_former.train_num_points=256"])
    torch.manual_seed(0)
    model = build_model(cfg)
    if fit_steps:
        images, targets, _ = collate([sample for sample in build_dataset(cfg, "train", train=False)])
        criterion = build_criterion(cfg)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(fit_steps):
            loss = sum(criterion(model(images), targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    checkpoint = root / f"{mode}.pth"
    save_model_checkpoint(checkpoint, model.state_dict(), model.model_config)
    return spec, checkpoint


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("export_cases")
    return {mode: make_case(root, mode) for mode in OUTPUT_NAMES}


def _torch_outputs(checkpoint: Path, mode: str, images: np.ndarray) -> dict[str, np.ndarray]:
    model, _ = load_model_checkpoint(checkpoint)
    wrapper = ExportWrapper(model.eval(), mode, (SIZE, SIZE))
    with torch.no_grad():
        return {k: v.numpy() for k, v in zip(wrapper.output_names, wrapper(torch.from_numpy(images)), strict=True)}


@pytest.mark.parametrize("batch_size", [-1, 2])
@pytest.mark.parametrize("mode", list(OUTPUT_NAMES))
def test_export_each_mode_and_batch_setting(cases, tmp_path, monkeypatch, capsys, mode, batch_size):
    spec, checkpoint = cases[mode]
    # Like the operator's export pod: only -e, overrides and M2F_RESULTS_DIR; the ONNX lands in <results>/export.
    monkeypatch.setenv("M2F_RESULTS_DIR", str(tmp_path / "results"))
    code = main(["export", "-e", str(spec), f"export.checkpoint={checkpoint}", f"export.batch_size={batch_size}",
                 *TINY])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out + captured.err
    onnx_file = tmp_path / "results" / "export" / f"{checkpoint.stem}.onnx"
    assert f"ONNX file written to {onnx_file}" in out

    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert "GridSample" in {n.op_type for n in model.graph.node}  # deformable attention, no custom op
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "inputs"
    assert dims == ["batch" if batch_size == -1 else batch_size, 3, SIZE, SIZE]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES[mode])
    batch_dims = {(o.type.tensor_type.shape.dim[0].dim_param or o.type.tensor_type.shape.dim[0].dim_value)
                  for o in model.graph.output}
    assert batch_dims == {"batch" if batch_size == -1 else batch_size}

    parity = json.loads(onnx_file.with_name(onnx_file.name + ".parity.json").read_text())
    assert parity["passed"] is True and parity["tolerance"] == 1e-3
    assert set(parity["outputs"]) == set(OUTPUT_NAMES[mode])
    assert all(o["max_abs_diff"] <= 1e-3 and o["mismatches"] == 0 for o in parity["outputs"].values())
    attention = parity["attention"]  # every decoder layer's decisions were compared
    assert attention["decisions"] > 0 and attention["largest_flipped_logit"] <= attention["knife_edge"] == 4e-3
    for name in OUTPUT_NAMES[mode]:  # the printed table names every output
        assert any(line.strip().startswith(name) and line.endswith(" ok") for line in out.splitlines())

    # onnxruntime on fresh inputs (for the dynamic graph a batch it was not traced with) against PyTorch.
    runner = OnnxRunner(onnx_file)
    batch = 3 if batch_size == -1 else batch_size
    images = np.random.default_rng(1).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
    ours, theirs = runner(images), _torch_outputs(checkpoint, mode, images)
    assert list(ours) == list(OUTPUT_NAMES[mode])
    for name, expected in theirs.items():
        assert ours[name].shape == expected.shape and ours[name].dtype == expected.dtype, name
        if name == "pred_classes" or (mode == "instance" and name == "pred_masks"):
            assert (ours[name] != expected).mean() < 0.01, name  # discrete: identical but for rare ties
        else:
            np.testing.assert_allclose(ours[name], expected, atol=1e-3, err_msg=name)
    if mode != "semantic":
        assert ours["pred_classes"].dtype == np.int64
        assert ((0 <= ours["pred_classes"]) & (ours["pred_classes"] < 5)).all()
    if mode == "panoptic":
        np.testing.assert_allclose(ours["prob_masks"], ours["pred_scores"][..., None, None] * ours["pred_masks"],
                                   atol=1e-6)


def _grid(shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Random points in [-1.5, 1.5] (a quarter of the image beyond each edge), with the cases where zero
    padding and the neighbour arithmetic are easiest to get wrong written over the first ones."""
    grid = torch.rand(*shape, 2, generator=generator) * 3 - 1.5
    special = torch.tensor([
        [-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0],  # outer corners of the image: half or quarter inside
        [0.0, 0.0], [1.0, 0.3], [-0.2, -1.0],  # centre, points on an edge
        [1e6, 0.0], [-1e6, -1e6], [0.5, 3.0],  # far outside: all four neighbours are padding
    ])
    flat = grid.view(-1, 2)
    count = min(len(flat), len(special))
    flat[:count] = special[:count]
    return grid


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "grid_h", "grid_w"),
    [
        (1, 1, 1, 1, 10, 1),  # a single pixel: every neighbour but one is padding
        (2, 3, 5, 7, 4, 6),
        (16, 8, 8, 8, 50, 4),  # batch x heads of the tiny pixel decoder
        (4, 32, 17, 30, 40, 4),  # a non-square level, head_dim 32
        (3, 2, 2, 64, 10, 3),
    ],
)
def test_gather_sampler_matches_grid_sample(n, c, h, w, grid_h, grid_w):
    generator = torch.Generator().manual_seed(n * 1000 + h * 10 + w)
    value = torch.randn(n, c, h, w, generator=generator)
    grid = _grid((n, grid_h, grid_w), generator)
    expected = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = gather_bilinear(value, grid)
    assert sampled.shape == expected.shape
    torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-5)


def test_gather_sampling_switches_the_deformable_core_within_the_block_only(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 8), (4, 6), (2, 3)]
    value = torch.randn(2, sum(h * w for h, w in shapes), 4, 8, generator=generator)
    locations = torch.rand(2, 10, 4, len(shapes), 3, 2, generator=generator) * 1.4 - 0.2
    weights = torch.rand(2, 10, 4, len(shapes), 3, generator=generator)
    expected = ms_deform_attn_core(value, shapes, locations, weights)

    def no_grid_sample(*args, **kwargs):
        raise AssertionError("grid_sample called inside gather_sampling()")

    with monkeypatch.context() as patch, gather_sampling():
        patch.setattr(F, "grid_sample", no_grid_sample)
        gathered = ms_deform_attn_core(value, shapes, locations, weights)
    torch.testing.assert_close(gathered, expected, rtol=0, atol=1e-5)
    # Outside the block the training path is grid_sample again.
    assert torch.equal(ms_deform_attn_core(value, shapes, locations, weights), expected)


def test_opset_12_exports_without_grid_sample(cases, tmp_path, capsys):
    """TAO's documented default opset: GridSample (16) and the exporter's attention symbolic (14) are newer."""
    spec, checkpoint = cases["panoptic"]
    onnx_file = tmp_path / "model.onnx"
    code = main(["export", "-e", str(spec), f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}",
                 "export.batch_size=-1", "export.opset_version=12", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    assert sum("gather-based bilinear sampling" in line for line in captured.err.splitlines()) == 1

    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [12]
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}  # no custom ops either
    op_types = {n.op_type for n in model.graph.node}
    assert "GridSample" not in op_types and "Gather" in op_types
    parity = json.loads(onnx_file.with_name(onnx_file.name + ".parity.json").read_text())
    assert parity["passed"] is True
    assert all(o["max_abs_diff"] <= 1e-3 and o["mismatches"] == 0 for o in parity["outputs"].values())

    # A batch the dynamic graph was not traced with, against PyTorch (which samples with grid_sample).
    images = np.random.default_rng(2).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    ours, theirs = OnnxRunner(onnx_file)(images), _torch_outputs(checkpoint, "panoptic", images)
    for name, expected in theirs.items():
        if name == "pred_classes":
            assert (ours[name] != expected).mean() < 0.01, name
        else:
            np.testing.assert_allclose(ours[name], expected, atol=1e-3, err_msg=name)


def test_failed_parity_gate_exits_1_and_leaves_no_onnx(cases, tmp_path, capsys):
    spec, checkpoint = cases["semantic"]
    onnx_file = tmp_path / "out" / "model.onnx"
    code = main(["export", "-e", str(spec), f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx_file}",
                 "export.batch_size=1", "export.parity_tolerance=1e-12", *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    # Log lines may precede it; the failure itself is one line, last, without a traceback.
    assert [line for line in err if line.startswith("error:")] == err[-1:]
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith("error: onnxruntime disagrees with PyTorch beyond export.parity_tolerance=1e-12 "
                              "(pred_masks max_abs_diff=")
    assert not onnx_file.exists()
    parity_file = onnx_file.with_name("model.onnx.parity.json")
    assert str(parity_file) in err[-1]
    assert json.loads(parity_file.read_text())["passed"] is False
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx.parity.json"]  # no temp files


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["export.opset_version=11"], "export.opset_version: 11 is out of range; allowed: an integer in [12, 20]"),
        (["export.opset_version=21"], "export.opset_version: 21 is out of range; allowed: an integer in [12, 20]"),
        (["export.input_height=100"], "error: export.input_height / export.input_width: 100x64 must be multiples of 32"),
        (["export.checkpoint=/nonexistent/model.pth"], "error: export.checkpoint: checkpoint not found: /nonexistent/model.pth"),
    ],
)
def test_spec_errors_exit_2_with_the_field(cases, tmp_path, capsys, overrides, message):
    spec, checkpoint = cases["panoptic"]
    code = main(["export", "-e", str(spec), f"export.checkpoint={checkpoint}",
                 f"export.onnx_file={tmp_path / 'm.onnx'}", *TINY, *overrides])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_checkpoint_of_another_class_count_is_rejected(cases, tmp_path, capsys):
    spec, checkpoint = cases["panoptic"]
    code = main(["export", "-e", str(spec), f"export.checkpoint={checkpoint}", "model.sem_seg_head.num_classes=7",
                 f"export.onnx_file={tmp_path / 'm.onnx'}", *TINY])
    assert code == 2
    assert "export.checkpoint was trained with num_classes=5" in capsys.readouterr().err


def _as_ort(outputs: dict) -> dict:
    return {k: v.numpy().copy() for k, v in outputs.items() if not k.startswith("_")}


def test_parity_excuses_ties_and_only_ties():
    from m2f_trainer.export.parity import compare_outputs
    from m2f_trainer.export.wrappers import instance_outputs, panoptic_outputs

    # Panoptic: query 0 has two equally likely classes, query 1 a clear winner.
    logits = torch.tensor([[[1.0, 1.0, 0.0, -2.0], [3.0, 0.0, 0.0, -2.0]]])
    ours = panoptic_outputs(logits, torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0)))
    flipped = _as_ort(ours)
    flipped["pred_classes"][0, 0] = 1 - flipped["pred_classes"][0, 0]
    report = compare_outputs("panoptic", ours, flipped, 1e-3)
    assert report.passed and report.to_dict()["outputs"]["pred_classes"]["excused"] == 1
    flipped["pred_classes"][0, 1] = 2
    report = compare_outputs("panoptic", ours, flipped, 1e-3)
    assert not report.passed and [o.name for o in report.failures()] == ["pred_classes"]

    # Instance: candidates (query 0, class 0) and (query 1, class 0) tie for rank 0; query 2 is far below.
    class_logits = torch.tensor([[[2.0, -9.0, 0.0], [2.0, -9.0, 0.0], [0.5, -9.0, 0.0]]])
    mask_logits = torch.stack([torch.full((4, 4), v) for v in (3.0, -3.0, 1e-5)])[None]
    ours = instance_outputs(class_logits, mask_logits, topk=3)
    swapped = _as_ort(ours)
    for name in ("pred_masks", "pred_scores", "pred_classes"):
        swapped[name][0, [0, 1]] = swapped[name][0, [1, 0]]
    report = compare_outputs("instance", ours, swapped, 1e-3)
    assert report.passed and report.to_dict()["outputs"]["pred_scores"]["excused"] == 2
    # Rank 2's mask logits sit at 0 (probability 0.5): a flipped pixel there is a tie, at rank 0 it is not.
    edge = _as_ort(ours)
    edge["pred_masks"][0, 2, 0, 0] = 1 - edge["pred_masks"][0, 2, 0, 0]
    assert compare_outputs("instance", ours, edge, 1e-3).passed
    untied = _as_ort(instance_outputs(torch.tensor([[[3.0, -9.0, 0.0], [2.0, -9.0, 0.0]]]), mask_logits[:, :2], 2))
    ours_untied = instance_outputs(torch.tensor([[[3.0, -9.0, 0.0], [2.0, -9.0, 0.0]]]), mask_logits[:, :2], 2)
    untied["pred_masks"][0, 0, 1, 1] = 0.0
    report = compare_outputs("instance", ours_untied, untied, 1e-3)
    assert not report.passed and report.to_dict()["outputs"]["pred_masks"]["mismatches"] == 1
