"""The embedded dev cluster (`m2f dev up|down|status`): API emulator, local kubelet and the operator.

``DevCluster(data_dir)`` is the same cluster as a context manager for tests and demos.
"""

from m2f_devcluster.cluster import DEFAULT_NODES, DevCluster, DevClusterConfig, install_crds

__all__ = ["DEFAULT_NODES", "DevCluster", "DevClusterConfig", "install_crds"]
