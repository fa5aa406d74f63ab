"""A Kubernetes API emulator built on kmock: the operator's test API server and the dev cluster's API.

``async with Emulator() as api`` (``api.url``, ``api.kubeconfig``, ``api.store``) or, from sync code,
``with run_emulator() as api`` (a background thread; ``api.call(fn)`` runs ``fn(store)`` on its loop).
"""

from m2f_devcluster.emulator.errors import ApiError
from m2f_devcluster.emulator.resources import BUILTIN_TYPES, ResourceType
from m2f_devcluster.emulator.runner import EmulatorThread, run_emulator
from m2f_devcluster.emulator.server import Emulator, write_kubeconfig
from m2f_devcluster.emulator.store import ObjectStore

__all__ = ["ApiError", "BUILTIN_TYPES", "Emulator", "EmulatorThread", "ObjectStore", "ResourceType",
           "run_emulator", "write_kubeconfig"]
