"""The class ``hydra/launcher=fused`` instantiates (Hydra accepts plugin classes from ``hydra_plugins`` only)."""

from runner.launchers import fused


class FusedLauncher(fused.FusedLauncher):
    """:class:`runner.launchers.fused.FusedLauncher`, under the name Hydra's plugin discovery accepts."""
