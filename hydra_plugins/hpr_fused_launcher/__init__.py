"""Hydra finds plugins in the ``hydra_plugins`` namespace package: this registers ``hydra/launcher=fused``.

The launcher itself lives in :mod:`runner.launchers.fused`; Hydra instantiates only plugin
classes defined under ``hydra_plugins``, hence the subclass in :mod:`.fused_launcher`.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.hpr_fused_launcher.fused_launcher.FusedLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="hparam-runner")
