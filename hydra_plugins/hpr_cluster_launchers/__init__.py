"""The launchers of ``hydra/launcher=slurm`` and ``ray_cluster`` (conf/hydra/launcher/).

Hydra instantiates plugin classes defined under ``hydra_plugins`` only; the launchers themselves
live in :mod:`runner.cluster`, subclassed in :mod:`.cluster_launchers` under the accepted name.
"""
