"""Validation metrics during training and `m2f evaluate`: model outputs -> the evaluation package's evaluators."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from m2f_trainer.evaluation import report
from m2f_trainer.model.postprocess import postprocess


class Postprocessor:
    """Model outputs -> per-image predictions of the spec's mode at original size (contiguous class ids)."""

    def __init__(self, cfg: Any, label_map: Any) -> None:
        self.cfg = cfg
        self.mode = str(cfg.model.mode).lower()
        self.label_map = label_map
        self.num_classes = int(cfg.model.sem_seg_head.num_classes)
        thing = torch.zeros(self.num_classes, dtype=torch.bool)
        for class_index in label_map.thing_classes:
            if class_index < self.num_classes:
                thing[class_index] = True
        self.thing_mask = thing

    def __call__(self, outputs: dict, metas: list[dict], padded_size: tuple[int, int]) -> list[dict]:
        model = self.cfg.model
        if "pred_logits" not in outputs:  # an exported model (ONNX / TensorRT): TAO's output layout
            from m2f_trainer.export.onnx_runner import predictions_from_exported

            return predictions_from_exported(
                outputs, [m["image_size"] for m in metas], [m["orig_size"] for m in metas], self.mode,
                self.thing_mask, model.object_mask_threshold, model.overlap_threshold)
        return postprocess(
            outputs, [m["image_size"] for m in metas], [m["orig_size"] for m in metas], self.mode,
            self.num_classes, object_mask_threshold=model.object_mask_threshold,
            overlap_threshold=model.overlap_threshold, test_topk_per_image=model.test_topk_per_image,
            thing_classes=self.thing_mask, padded_size=padded_size)

    def raw_id(self, class_index: int) -> int:
        """Raw category id of a class; 0 for a class index no category uses (non-contiguous label maps)."""
        try:
            return self.label_map.raw_id(class_index)
        except KeyError:
            return 0


class ModelEvaluator:
    """Streams one labelled split through postprocess into the mode's evaluator: PQAccumulator (panoptic),
    COCOeval on gathered RLE results (instance), SemanticConfusion (semantic). Ground truth is read at file
    resolution with the dataset's `raw_sample`, so numbers match the offline tools. compute() gathers every
    rank's state first and returns report's flat metrics, identical on every rank."""

    def __init__(self, cfg: Any, ground_truth: Any) -> None:
        self.ground_truth = ground_truth
        self.dataset = ground_truth.dataset
        self.label_map = ground_truth.label_map
        self.predict = Postprocessor(cfg, self.label_map)
        self.mode = self.predict.mode
        self.num_classes = self.predict.num_classes
        self.categories = self.label_map.to_coco_categories()
        self._index_of = {record.image_id: i for i, record in enumerate(self.dataset.records)}
        self._instance_gt = None
        self.reset()

    def reset(self) -> None:
        self.num_images = 0
        if self.mode == "panoptic":
            from m2f_trainer.evaluation.panoptic import PQAccumulator

            self.state = PQAccumulator()
        elif self.mode == "instance":
            self.state = []  # COCO results entries (RLE), scored with COCOeval once gathered
        else:
            from m2f_trainer.evaluation.semantic import SemanticConfusion

            self.state = SemanticConfusion(self.num_classes)

    @torch.no_grad()
    def update(self, outputs: dict, metas: list[dict], padded_size: tuple[int, int],
               keep: list[bool] | None = None) -> list[dict]:
        """Score a batch; `keep[i]` False skips image i (a distributed sampler's padding duplicate)."""
        predictions = self.predict(outputs, metas, padded_size)
        for i, (prediction, meta) in enumerate(zip(predictions, metas, strict=True)):
            if keep is None or keep[i]:
                self._add(prediction, self.dataset.raw_sample(self._index_of[meta["image_id"]]), meta)
        return predictions

    def _add(self, prediction: dict, truth: dict, meta: dict) -> None:
        raw_id = self.predict.raw_id
        self.num_images += 1
        where = f"image_id {meta['image_id']}"
        if self.mode == "panoptic":
            pred_seg, pred_segments = prediction["panoptic_seg"]
            gt_seg = np.zeros(tuple(truth["masks"].shape[-2:]), dtype=np.int64)
            gt_segments = []
            for k, (mask, label, crowd) in enumerate(
                    zip(truth["masks"], truth["labels"].tolist(), truth["is_crowd"].tolist(), strict=True)):
                gt_seg[mask.numpy()] = k + 1
                gt_segments.append({"id": k + 1, "category_id": raw_id(label), "iscrowd": int(crowd)})
            pred_segments = [{"id": s["id"], "category_id": raw_id(s["category_id"])} for s in pred_segments]
            self.state.update(gt_seg, gt_segments, pred_seg.cpu().numpy(), pred_segments, where=where)
        elif self.mode == "instance":
            from m2f_trainer.evaluation.formats import encode_instances

            instances = prediction["instances"]
            self.state += encode_instances(
                meta["image_id"], instances["masks"].cpu().numpy(), instances["scores"].cpu().tolist(),
                [raw_id(c) for c in instances["labels"].tolist()])
        else:
            self.state.update(prediction["sem_seg"].argmax(0), truth["sem_seg"], where=where)

    def compute(self, strategy: Any = None) -> dict:
        """Flat metrics (m2f_trainer.evaluation.report) over every rank's images."""
        from m2f_trainer.evaluation.distributed import all_gather_objects

        num_images = sum(all_gather_objects(self.num_images))
        if self.mode == "panoptic":
            merged = self.state.all_gather()
            return report.panoptic_metrics(merged.compute(self.categories), self.categories, num_images)
        if self.mode == "instance":
            from m2f_trainer.evaluation.instance import evaluate_instances

            results = [entry for part in all_gather_objects(self.state) for entry in part]
            return report.instance_metrics(evaluate_instances(self._instance_ground_truth(), results),
                                           self.categories, num_images)
        merged = self.state.all_gather()
        class_ids = [self.predict.raw_id(c) or -(c + 1) for c in range(self.num_classes)]
        metrics = report.semantic_metrics(merged.compute(class_ids), self.categories, num_images)
        metrics["per_class"] = {k: v for k, v in metrics["per_class"].items() if int(k) > 0}
        return metrics

    def _instance_ground_truth(self):
        if self._instance_gt is None:
            gt = self.ground_truth
            if gt.instance_json is not None:
                self._instance_gt = str(gt.instance_json)
            else:
                from m2f_trainer.evaluation.instance import instances_from_panoptic

                self._instance_gt = instances_from_panoptic(str(gt.panoptic_json), str(gt.panoptic_dir))
        return self._instance_gt

    def primary(self, metrics: dict) -> tuple[str, float | None]:
        return report.headline({**metrics, "mode": self.mode})


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The numeric top-level entries (what metrics.jsonl and the progress log show)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
