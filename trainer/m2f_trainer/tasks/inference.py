"""`m2f inference`: every image of dataset.test.img_dir -> overlay PNG + the mode's machine-readable predictions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from m2f_spec import parse_task_args, task_results_dir
from m2f_trainer.engine.signals import EXIT_TERMINATED, until_sigterm
from m2f_trainer.errors import SpecError
from m2f_trainer.tasks import setup_logging
from m2f_trainer.tasks.overlay import draw_overlay

log = logging.getLogger("m2f_trainer.inference")

OVERLAY_DIR = "overlays"


def main(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f inference")
    setup_logging()
    out_dir = until_sigterm(lambda: inference(cfg))
    if out_dir is None:
        return EXIT_TERMINATED
    print(f"inference results in {out_dir}")
    return 0


# ------------------------------------------------------------------------------------------- writers

class PredictionSink:
    """Writes one image's prediction in the layout `m2f evaluate evaluate.predictions=DIR` reads back."""

    def __init__(self, out_dir: Path, mode: str, label_map, display_threshold: float) -> None:
        from m2f_trainer.evaluation.formats import PanopticPredictionWriter

        self.out_dir = out_dir
        self.mode = mode
        self.label_map = label_map
        self.display_threshold = display_threshold
        (out_dir / OVERLAY_DIR).mkdir(parents=True, exist_ok=True)
        self.panoptic = PanopticPredictionWriter(out_dir, label_map.to_coco_categories()) \
            if mode == "panoptic" else None
        self.instances: list[dict] = []
        self.count = 0

    def add(self, meta: dict, prediction: dict) -> None:
        from m2f_trainer.data.io import read_image
        from m2f_trainer.evaluation import formats

        raw_id = self._raw_or_zero
        image = read_image(Path(meta["file_name"])).permute(1, 2, 0).numpy()
        stem = Path(meta["file_name"]).stem
        if self.mode == "panoptic":
            seg, segments_info = prediction["panoptic_seg"]
            seg = seg.cpu().numpy()
            # With contiguous_id false, class indices no category uses can still be predicted (an undertrained
            # model): such segments become void, as validation scores them, in the files and the overlay.
            unknown = [s["id"] for s in segments_info if not raw_id(s["category_id"])]
            if unknown:
                seg = np.where(np.isin(seg, unknown), 0, seg)
                segments_info = [s for s in segments_info if s["id"] not in unknown]
            self.panoptic.add(meta["image_id"], meta["file_name"], seg, [
                {"id": s["id"], "category_id": raw_id(s["category_id"]), "isthing": bool(s["isthing"]),
                 "score": s["score"]} for s in segments_info])
            drawn = [(seg == s["id"], s["category_id"], s["score"]) for s in segments_info]
        elif self.mode == "instance":
            inst = prediction["instances"]
            masks, scores, labels = inst["masks"].cpu().numpy(), inst["scores"].cpu().numpy(), inst["labels"].tolist()
            known = [i for i, c in enumerate(labels) if raw_id(c)]
            masks, scores, labels = masks[known], scores[known], [labels[i] for i in known]
            self.instances += formats.encode_instances(meta["image_id"], masks, scores.tolist(),
                                                       [raw_id(c) for c in labels])
            drawn = [(m, c, float(s)) for m, s, c in zip(masks, scores, labels, strict=True)
                     if s >= self.display_threshold]
        else:
            classes = prediction["sem_seg"].argmax(0).cpu().numpy()
            lookup = np.array([self._raw_or_zero(c) for c in range(prediction["sem_seg"].shape[0])])
            semantic_dir = self.out_dir / formats.SEMANTIC_DIR
            semantic_dir.mkdir(parents=True, exist_ok=True)
            formats.write_semantic_png(semantic_dir / f"{stem}.png", lookup[classes])
            drawn = [(classes == c, int(c), None) for c in np.unique(classes) if self._raw_or_zero(int(c))]
        draw_overlay(image, drawn, self.label_map).save(self.out_dir / OVERLAY_DIR / f"{stem}.png")
        self.count += 1

    def _raw_or_zero(self, class_index: int) -> int:
        try:
            return self.label_map.raw_id(class_index)
        except KeyError:  # a class index no category uses (non-contiguous ids)
            return 0

    def close(self) -> None:
        from m2f_trainer.evaluation.formats import write_instance_results

        if self.panoptic is not None:
            self.panoptic.close()
        if self.mode == "instance":
            write_instance_results(self.out_dir, self.instances)


def inference(cfg: Any) -> Path:
    from m2f_trainer.data.build import build_dataset
    from m2f_trainer.engine.runner import build_runner
    from m2f_trainer.engine.validation import Postprocessor
    from m2f_trainer.tasks.evaluate import check_num_classes, run_model_on_split

    if not cfg.dataset.test.img_dir:
        raise SpecError("dataset.test.img_dir: inference needs a folder of images")
    out_dir = task_results_dir(cfg, "inference")
    runner, model_config = build_runner(cfg, "inference")
    check_num_classes(cfg, model_config, "inference.checkpoint")
    dataset = build_dataset(cfg, "test")
    predict = Postprocessor(cfg, dataset.label_map)
    sink = PredictionSink(out_dir, predict.mode, dataset.label_map, float(cfg.model.object_mask_threshold))
    log.info("inference on %d images of %s (%s mode)", len(dataset), cfg.dataset.test.img_dir, predict.mode)

    def write(images, outputs, metas, padded, _):
        for meta, prediction in zip(metas, predict(outputs, metas, padded), strict=True):
            sink.add(meta, prediction)

    run_model_on_split(cfg, runner, dataset, on_predictions=write, desc="inference")
    sink.close()
    log.info("wrote %d overlays and %s predictions to %s", sink.count, predict.mode, out_dir)
    return out_dir
