"""The runner's launchers, where Hydra looks for launchers (its plugin namespace).

Hydra's submitit and joblib launchers whose killed jobs are failed rows of the sweep table
(:mod:`runner.launchers`): ``hydra/launcher=slurm`` / ``local`` (conf/hydra/launcher/), and
Hydra's own names ``submitit_slurm``, ``submitit_local`` and ``joblib``, which
:func:`runner.config.register_bases` points here. Without the ``launchers`` extra this module
defines nothing.
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


try:
    from hydra_plugins.hydra_joblib_launcher import joblib_launcher as _joblib
except ImportError:
    _joblib = None

if _joblib is not None:
    from runner.launchers import broken_pool_returns

    class JoblibLauncher(_joblib.JoblibLauncher):
        """``hydra/launcher=joblib``: a killed worker is a failed row, not a traceback."""

        def launch(self, job_overrides, initial_job_idx):
            try:
                return super().launch(job_overrides, initial_job_idx)
            except Exception as e:
                if type(e).__name__ not in ("TerminatedWorkerError", "BrokenProcessPool"):
                    raise
                reason = "killed: its joblib worker process died (SIGKILL, or out of memory)"
                return broken_pool_returns(self.config, job_overrides, initial_job_idx, reason)
