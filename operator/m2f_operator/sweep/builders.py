"""Pure builders of a sweep's children: one Mask2FormerTrain per trial."""

from __future__ import annotations

import json

from m2f_operator.builders import meta
from m2f_spec.sweep.space import apply_parameters

DEFAULT_RESULTS_ROOT = f"{meta.DEFAULT_RESULTS_ROOT}/sweep"
# "-NNN" is appended to the sweep's name; the trial's own name limit is the Train's.
MAX_SWEEP_NAME_LENGTH = meta.MAX_NAME_LENGTH - 4


def trial_name(sweep: dict, number: int) -> str:
    return f"{sweep['metadata']['name']}-{number:03d}"


def trial_results_dir(sweep: dict, number: int) -> str:
    """Per trial and per sweep incarnation (uid): a re-created sweep of the same name never resumes an old
    trial's checkpoint."""
    spec = sweep.get("spec") or {}
    root = ((spec.get("template") or {}).get("resultsDir") or DEFAULT_RESULTS_ROOT).rstrip("/")
    md = sweep["metadata"]
    return f"{root}/{md['name']}-{md['uid'][:8]}/{number:03d}"


def build_trial(sweep: dict, number: int, parameters: dict, seen: int) -> dict:
    """The trial's Mask2FormerTrain: the template with the suggested parameters in its experiment."""
    template = json.loads(json.dumps((sweep.get("spec") or {}).get("template") or {}))
    template["experiment"] = apply_parameters(template.get("experiment") or {}, parameters)
    template["resultsDir"] = trial_results_dir(sweep, number)
    md = sweep["metadata"]
    return {
        "apiVersion": meta.API_VERSION,
        "kind": "Mask2FormerTrain",
        "metadata": {
            "name": trial_name(sweep, number),
            "namespace": md["namespace"],
            "labels": {meta.LABEL_SWEEP: md["name"], meta.LABEL_TRIAL: str(number),
                       meta.LABEL_MANAGED_BY: meta.MANAGED_BY},
            "annotations": {meta.ANNOTATION_TRIAL_PARAMETERS: json.dumps(parameters, sort_keys=True),
                            meta.ANNOTATION_TRIAL_SEEN: str(seen)},
            "ownerReferences": [meta.owner_reference(sweep)],
        },
        "spec": template,
    }
