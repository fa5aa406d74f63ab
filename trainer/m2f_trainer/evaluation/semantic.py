"""Semantic segmentation metrics from a confusion matrix: mIoU, fwIoU, mACC, pACC as detectron2's SemSegEvaluator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from m2f_trainer.errors import DataError
from m2f_trainer.evaluation.distributed import merged_across_ranks


class SemanticConfusion:
    """A (K+1)x(K+1) confusion matrix, rows = prediction, columns = ground truth, last = ignored.

    Same layout and formulas as detectron2's SemSegEvaluator: pixels whose ground truth is
    `ignore_label` go to the extra column and drop out of every metric; classes that never occur in
    the ground truth are left out of mIoU / mACC / fwIoU (their per-class values are NaN).
    """

    def __init__(self, num_classes: int, ignore_label: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def update(self, pred, gt, where: str = "image") -> None:
        """Add one image: pred [H,W] class indices 0..K-1, gt [H,W] class indices or ignore_label.

        torch tensors are counted with torch.bincount on their own device (no host copy of the pixels).
        """
        if tuple(pred.shape) != tuple(gt.shape):
            raise DataError(f"{where}: prediction size {tuple(pred.shape)} differs from ground truth size "
                            f"{tuple(gt.shape)}")
        k = self.num_classes
        if hasattr(pred, "detach") or hasattr(gt, "detach"):
            import torch

            pred = torch.as_tensor(pred).long()
            gt = torch.as_tensor(gt, device=pred.device).long()
            self._check_range(pred, gt, where)
            gt = torch.where(gt == self.ignore_label, torch.full_like(gt, k), gt)
            counts = torch.bincount(((k + 1) * pred + gt).flatten(), minlength=(k + 1) ** 2).cpu().numpy()
        else:
            pred, gt = np.asarray(pred).astype(np.int64), np.asarray(gt).astype(np.int64)
            self._check_range(pred, gt, where)
            gt = np.where(gt == self.ignore_label, k, gt)
            counts = np.bincount(((k + 1) * pred + gt).ravel(), minlength=(k + 1) ** 2)
        self.matrix += counts.reshape(k + 1, k + 1)

    def _check_range(self, pred, gt, where: str) -> None:
        k = self.num_classes
        bad_pred = (pred < 0) | (pred >= k)
        if bad_pred.any():
            raise DataError(f"{where}: predicted class {int(pred[bad_pred][0])} is outside 0..{k - 1}")
        bad_gt = ((gt < 0) | (gt >= k)) & (gt != self.ignore_label)
        if bad_gt.any():
            raise DataError(f"{where}: ground-truth class {int(gt[bad_gt][0])} is outside 0..{k - 1} and is not "
                            f"the ignore label {self.ignore_label}")

    def state_dict(self) -> dict:
        return {"num_classes": self.num_classes, "matrix": self.matrix.tolist()}

    def merge(self, state: Mapping) -> None:
        if int(state["num_classes"]) != self.num_classes:
            raise ValueError(f"cannot merge a {state['num_classes']}-class matrix into a {self.num_classes}-class one")
        self.matrix += np.asarray(state["matrix"], dtype=np.int64)

    def all_gather(self) -> SemanticConfusion:
        """A new evaluator holding the sum of every rank's matrix."""
        return merged_across_ranks(self, SemanticConfusion(self.num_classes, self.ignore_label))

    def compute(self, class_ids: Sequence[int] | None = None) -> dict:
        """{"mIoU", "fwIoU", "mACC", "pACC", "per_class": {class_id: {"IoU", "ACC"}}} as fractions (0..1).

        `class_ids` names the classes in the result (e.g. raw dataset ids); default 0..K-1.
        """
        k = self.num_classes
        class_ids = list(range(k)) if class_ids is None else [int(c) for c in class_ids]
        if len(class_ids) != k:
            raise ValueError(f"{len(class_ids)} class ids for {k} classes")
        matrix = self.matrix[:-1, :-1]
        true_positive = np.diagonal(matrix).astype(np.float64)
        gt_pixels = matrix.sum(axis=0).astype(np.float64)
        pred_pixels = matrix.sum(axis=1).astype(np.float64)
        accuracy = np.full(k, np.nan)
        iou = np.full(k, np.nan)
        acc_valid = gt_pixels > 0
        accuracy[acc_valid] = true_positive[acc_valid] / gt_pixels[acc_valid]
        union = gt_pixels + pred_pixels - true_positive
        iou_valid = acc_valid & (union > 0)
        iou[iou_valid] = true_positive[iou_valid] / union[iou_valid]
        total = gt_pixels.sum()
        if total == 0:
            nan = float("nan")
            summary = {"mIoU": nan, "fwIoU": nan, "mACC": nan, "pACC": nan}
        else:
            weights = gt_pixels / total
            summary = {
                "mIoU": float(np.sum(iou[iou_valid]) / np.sum(iou_valid)),
                "fwIoU": float(np.sum(iou[iou_valid] * weights[iou_valid])),
                "mACC": float(np.sum(accuracy[acc_valid]) / np.sum(acc_valid)),
                "pACC": float(np.sum(true_positive) / total),
            }
        summary["per_class"] = {cid: {"IoU": float(iou[i]), "ACC": float(accuracy[i])}
                                for i, cid in enumerate(class_ids)}
        return summary
