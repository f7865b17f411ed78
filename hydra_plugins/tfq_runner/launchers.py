"""The runner's submitit launchers, where Hydra looks for launchers (its plugin namespace).

``hydra/launcher=slurm`` and ``hydra/launcher=local`` (conf/hydra/launcher/): Hydra's submitit
launchers whose killed jobs are failed rows of the sweep table (:mod:`runner.launchers`). Without
hydra-submitit-launcher (the ``launchers`` extra) this module defines nothing.
"""

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _base
except ImportError:  # the launchers extra is not installed: no launcher to extend
    _base = None

if _base is not None:
    from runner.launchers import Collecting

    class SlurmLauncher(Collecting, _base.SlurmLauncher):
        """``hydra/launcher=slurm``: submitit on SLURM; a killed job is a failed row."""

        _EXECUTOR = "slurm"

    class LocalLauncher(Collecting, _base.LocalLauncher):
        """``hydra/launcher=local``: submitit on this machine; a killed job is a failed row."""

        _EXECUTOR = "local"
