"""Evaluation: panoptic PQ (panopticapi rules), instance mask AP (COCOeval), semantic confusion-matrix metrics."""
