"""Parity gate: onnxruntime against the PyTorch export wrapper on the same inputs, per output, with tie rules.

Float outputs must agree within the tolerance (max absolute difference). Discrete outputs must agree
exactly, except where the PyTorch side itself is on a knife edge that float rounding may tip either way:

- ``pred_classes`` of panoptic queries whose two best class probabilities are within TIE_EPSILON, and
  ``pred_scores`` / ``prob_masks`` of queries whose no-object and best real probabilities are (the score
  is zeroed where no-object wins);
- instance ranks whose top-k class probability is within TIE_EPSILON of a neighbouring rank (or of the
  best candidate left out): TopK breaks such ties by index in ONNX and unspecified in PyTorch, so the
  whole rank (mask, score, class) is excused;
- binary instance-mask pixels whose mask probability is within the tolerance of 0.5.

Masked attention has a knife edge of its own: each decoder layer attends only where the previous mask
logit is >= 0, and a logit within rounding of 0 may be cut differently by the two backends; one flipped
key then moves every later prediction a little (measured: 2.3e-3 on a random-init Swin-T at 320 px). The
gate therefore replays onnxruntime's decisions in PyTorch when any differ, and then compares both the
decisions and the outputs of the replay (`AttentionParity`): there each layer's logits come from the same
earlier decisions in both backends, so a flip is excused only where PyTorch's logit is within
``4 x tolerance`` of 0, the logit error that the probability tolerance allows at the cut (sigmoid' = 1/4
there), and the outputs measure the export, not the knife edge.

Excused entries are counted in the report, never hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Probabilities closer than this are a tie: onnxruntime and PyTorch differ by ~1e-7 in fp32.
TIE_EPSILON = 1e-5


@dataclass
class OutputParity:
    name: str
    shape: list[int]
    dtype: str
    max_abs_diff: float
    excused: int = 0  # tied entries left out of the comparison (see module docstring)
    mismatches: int = 0  # discrete entries that differ without a tie

    def passed(self, tolerance: float) -> bool:
        return self.mismatches == 0 and self.max_abs_diff <= tolerance


@dataclass
class AttentionParity:
    """onnxruntime's masked-attention decisions against PyTorch's, over every decoder layer."""

    decisions: int  # attention-mask entries compared
    flipped: int  # entries the two backends cut differently
    knife_edge: float  # largest |logit| at which a flip is excused
    largest_flipped_logit: float = 0.0  # PyTorch's largest |logit| among the flipped entries
    # Before the replay: flips counted on PyTorch's own path (later ones partly cascades of earlier ones),
    # and the float outputs' differences.
    replayed: bool = False
    direct_flipped: int = 0
    direct_max_abs_diff: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.largest_flipped_logit <= self.knife_edge

    def to_dict(self) -> dict:
        return {"decisions": self.decisions, "flipped": self.flipped, "knife_edge": self.knife_edge,
                "largest_flipped_logit": self.largest_flipped_logit, "replayed": self.replayed,
                "direct_flipped": self.direct_flipped, "direct_max_abs_diff": self.direct_max_abs_diff}


def compare_attention(
    torch_logits: list[torch.Tensor], torch_decisions: list[torch.Tensor], ort_decisions: list[np.ndarray],
    tolerance: float,
) -> AttentionParity:
    """Flipped decisions and how close to the cut PyTorch's logits were at those entries."""
    parity = AttentionParity(decisions=0, flipped=0, knife_edge=4.0 * tolerance)
    for logits, ours, theirs in zip(torch_logits, torch_decisions, ort_decisions, strict=True):
        flipped = ours.cpu().numpy() != theirs
        parity.decisions += flipped.size
        parity.flipped += int(flipped.sum())
        if flipped.any():
            worst = float(np.abs(logits.float().cpu().numpy()[flipped]).max())
            parity.largest_flipped_logit = max(parity.largest_flipped_logit, worst)
    return parity


@dataclass
class ParityReport:
    tolerance: float
    batch_size: int
    outputs: list[OutputParity] = field(default_factory=list)
    attention: AttentionParity | None = None

    @property
    def passed(self) -> bool:
        attention_ok = self.attention is None or self.attention.passed
        return attention_ok and all(o.passed(self.tolerance) for o in self.outputs)

    def failures(self) -> list[OutputParity]:
        return [o for o in self.outputs if not o.passed(self.tolerance)]

    def failure_text(self) -> str:
        parts = [f"{o.name} max_abs_diff={o.max_abs_diff:.3g}" + (f" mismatches={o.mismatches}" if o.mismatches else "")
                 for o in self.failures()]
        if self.attention is not None and not self.attention.passed:
            parts.append(f"{self.attention.flipped} attention decisions flipped, one at |logit| "
                         f"{self.attention.largest_flipped_logit:.3g} > {self.attention.knife_edge:.3g}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "tie_epsilon": TIE_EPSILON,
            "batch_size": self.batch_size,
            "attention": self.attention.to_dict() if self.attention is not None else None,
            "outputs": {
                o.name: {"shape": o.shape, "dtype": o.dtype, "max_abs_diff": o.max_abs_diff,
                         "excused": o.excused, "mismatches": o.mismatches}
                for o in self.outputs
            },
        }

    def lines(self) -> list[str]:
        rows = [f"parity (onnxruntime vs PyTorch, batch {self.batch_size}, tolerance {self.tolerance:g}):"]
        for o in self.outputs:
            verdict = "ok" if o.passed(self.tolerance) else "FAIL"
            extra = f" excused={o.excused}" if o.excused else ""
            extra += f" mismatches={o.mismatches}" if o.mismatches else ""
            rows.append(f"  {o.name:<13} {str(o.shape):<20} {o.dtype:<8} max_abs_diff={o.max_abs_diff:.3g}{extra} {verdict}")
        if self.attention is not None:
            a = self.attention
            verdict = "ok" if a.passed else "FAIL"
            rows.append(f"  attention decisions: {a.flipped} of {a.decisions} flipped (largest |logit| "
                        f"{a.largest_flipped_logit:.3g}, excused up to {a.knife_edge:.3g}) {verdict}")
            if a.replayed:
                direct = ", ".join(f"{k}={v:.3g}" for k, v in a.direct_max_abs_diff.items())
                rows.append(f"  compared with onnxruntime's decisions replayed in PyTorch; on PyTorch's own path "
                            f"{a.direct_flipped} flipped and {direct}")
        return rows


def parity_inputs(batch_size: int, input_size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """A deterministic batch of normalised-range images at the export size: smooth colour fields with
    rectangles, so that masks and classes vary over the image as they do on real photographs."""
    generator = torch.Generator().manual_seed(seed)
    height, width = input_size
    images = []
    for _ in range(batch_size):
        coarse = torch.randn(1, 3, max(2, height // 16), max(2, width // 16), generator=generator)
        image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
        for _ in range(4):
            top, left = (int(torch.randint(0, max(1, s // 2), (1,), generator=generator)) for s in (height, width))
            image[:, top: top + height // 3, left: left + width // 3] = torch.randn(3, 1, 1, generator=generator) * 1.5
        images.append(image)
    return torch.stack(images)


def _float_diff(ours: np.ndarray, theirs: np.ndarray, keep: np.ndarray | None = None) -> float:
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    if keep is not None:
        diff = diff[keep]
    return float(diff.max()) if diff.size else 0.0


def _tied_ranks(top_probs: np.ndarray, next_prob: np.ndarray | None) -> np.ndarray:
    """bool [B,k]: ranks whose probability is within TIE_EPSILON of a neighbour rank or the left-out best."""
    gaps = np.abs(np.diff(top_probs, axis=1)) <= TIE_EPSILON  # [B,k-1]: rank r ties rank r+1
    tied = np.zeros(top_probs.shape, dtype=bool)
    tied[:, :-1] |= gaps
    tied[:, 1:] |= gaps
    if next_prob is not None:
        tied[:, -1] |= np.abs(top_probs[:, -1] - next_prob) <= TIE_EPSILON
    return tied


def compare_outputs(
    mode: str, torch_outputs: dict[str, torch.Tensor], ort_outputs: dict[str, np.ndarray], tolerance: float
) -> ParityReport:
    """Per-output differences between the wrapper's ``outputs_with_internals`` and onnxruntime's outputs."""
    ours = {k: v.detach().cpu().numpy() for k, v in torch_outputs.items()}
    batch = int(next(iter(ort_outputs.values())).shape[0])
    report = ParityReport(tolerance=tolerance, batch_size=batch)

    def add(name: str, max_abs_diff: float, excused: int = 0, mismatches: int = 0) -> None:
        out = ort_outputs[name]
        report.outputs.append(OutputParity(name, list(out.shape), str(out.dtype), max_abs_diff, excused, mismatches))

    for name, out in ort_outputs.items():
        if out.shape != ours[name].shape:
            raise ValueError(f"output {name!r}: onnxruntime shape {list(out.shape)} != PyTorch {list(ours[name].shape)}")

    if mode == "semantic":
        add("pred_masks", _float_diff(ours["pred_masks"], ort_outputs["pred_masks"]))
    elif mode == "panoptic":
        add("pred_masks", _float_diff(ours["pred_masks"], ort_outputs["pred_masks"]))
        # A query whose no-object and best real probabilities tie may be zeroed on one side only.
        zeroing_tie = np.abs(ours["_no_object"] - ours["_best"]) <= TIE_EPSILON  # [B,Q]
        for name in ("prob_masks", "pred_scores"):
            keep = np.broadcast_to((~zeroing_tie).reshape(zeroing_tie.shape + (1,) * (ours[name].ndim - 2)),
                                   ours[name].shape)
            add(name, _float_diff(ours[name], ort_outputs[name], keep), excused=int(zeroing_tie.sum()))
        tied = np.abs(ours["pred_scores"] - ours["_runner_up"]) <= TIE_EPSILON
        differs = ours["pred_classes"] != ort_outputs["pred_classes"]
        add("pred_classes", 0.0, excused=int((differs & tied).sum()), mismatches=int((differs & ~tied).sum()))
    else:
        tied = _tied_ranks(ours["_top_probs"], ours.get("_next_prob"))  # [B,k]
        untied = ~tied
        add("pred_scores", _float_diff(ours["pred_scores"], ort_outputs["pred_scores"], untied),
            excused=int(tied.sum()))
        differs = ours["pred_classes"] != ort_outputs["pred_classes"]
        add("pred_classes", 0.0, excused=int((differs & tied).sum()), mismatches=int((differs & untied).sum()))
        # A binary pixel may flip where its probability sits at 0.5 within the tolerance.
        edge = np.abs(ours["_mask_probs"] - 0.5) <= tolerance
        flipped = ours["pred_masks"] != ort_outputs["pred_masks"]
        rank_untied = np.broadcast_to(untied[..., None, None], flipped.shape)
        add("pred_masks", 0.0, excused=int((flipped & (edge | ~rank_untied)).sum()),
            mismatches=int((flipped & ~edge & rank_untied).sum()))
    return report
