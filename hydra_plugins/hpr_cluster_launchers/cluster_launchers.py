"""The classes the cluster presets instantiate (Hydra accepts plugin classes from ``hydra_plugins`` only).

Without the ``[slurm]`` or ``[ray]`` extra the base is not a launcher and Hydra's plugin
discovery passes the class by; the preset then fails to compose, naming the plugin's config.
"""

from runner import cluster


class SlurmLauncher(cluster.SlurmLauncher):
    """:class:`runner.cluster.SlurmLauncher`, under the name Hydra's plugin discovery accepts."""


class LocalLauncher(cluster.LocalLauncher):
    """:class:`runner.cluster.LocalLauncher`, under the name Hydra's plugin discovery accepts."""


class RayLauncher(cluster.RayLauncher):
    """:class:`runner.cluster.RayLauncher`, under the name Hydra's plugin discovery accepts."""
