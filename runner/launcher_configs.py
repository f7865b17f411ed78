"""Hydra's launcher configs, as the runner registers them in Hydra's ConfigStore (called by
:func:`runner.config.register_bases`): the ``joblib``/``submitit_*`` options under
``/base/launcher`` for ``conf/hydra/launcher/*.yaml`` to extend, and a ``ray`` node that joins a
running cluster. Nothing here imports TensorFlow."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def register_launchers(store: Any, base: str) -> None:
    """Hydra's launcher configs under ``/base/launcher/<name>`` (joblib, submitit_slurm,
    submitit_local), which ``conf/hydra/launcher/<name>.yaml`` extend to point Hydra's own names
    at the runner's subclasses (``hydra_plugins/tfq_runner/launchers.py``): same options, and a
    job killed by SLURM or a killed worker is a failed row instead of a traceback with no table.
    (Stored under new names: Hydra's plugin scan runs the plugins' config modules again, which
    would overwrite a node stored under theirs.) Nothing without the ``launchers`` extra."""
    try:
        from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
        from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    except ImportError:
        return
    for name, conf in (
        ("joblib", JobLibLauncherConf),
        ("submitit_slurm", SlurmQueueConf),
        ("submitit_local", LocalQueueConf),
    ):
        # as plain values: the plugin scan makes the dataclass anew, and a node typed with the
        # first class would not merge with one typed with the second
        node = OmegaConf.to_container(OmegaConf.structured(conf))
        store.store(group=f"{base}/launcher", name=name, node=node, provider="tfq_runner")


def register_ray(store: Any) -> None:
    """``hydra/launcher=ray`` that also joins a Ray cluster already running on the machine.

    hydra-ray-launcher 1.2 sets ``ray.init(object_store_memory=75 MB)`` unless told otherwise, and
    Ray refuses that value when it connects to an existing cluster ("When connecting to an
    existing cluster, object_store_memory must not be provided"). Its ``ray`` node, stored again
    with ``object_store_memory: null`` (Ray's own sizing): ``ray.init()`` then starts a local
    cluster, or joins the running one. Stored before Hydra scans its plugins, which import the
    plugin's module only once. Nothing without the ``ray`` extra."""
    import dataclasses

    try:
        from hydra_plugins.hydra_ray_launcher._config import RayConf, RayLauncherConf
    except ImportError:
        return

    def ray_conf() -> Any:
        return RayConf(init={"address": None, "object_store_memory": None})

    node = dataclasses.make_dataclass(
        "RunnerRayLauncherConf",
        [("ray", RayConf, dataclasses.field(default_factory=ray_conf))],
        bases=(RayLauncherConf,),
    )
    store.store(group="hydra/launcher", name="ray", node=node, provider="tfq_runner")
