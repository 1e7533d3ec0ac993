"""demo_fsdp: the ``demo`` MAE with parameters and optimizer state sharded over every device (FSDP, ZeRO-3 style).

Each device keeps ~1/N of the train state (``medjax bench train --config demo_fsdp --compile-only`` prints the
figures); the batch is split over the same devices. Runs on one process or many, e.g. on one machine::

    XLA_FLAGS=--xla_force_host_platform_device_count=4 medjax pretrain --config demo_fsdp \\
        --coordinator 127.0.0.1:29500 --num-processes 2 --process-id 0   # and --process-id 1 in a second shell

``train.batch_size`` must divide by the number of devices (8 here: up to 8 devices as is).
"""

import dataclasses

from medjax.config.presets.demo import get_config as _demo
from medjax.config.schema import Config, MeshConfig


def get_config() -> Config:
    cfg = _demo()
    return dataclasses.replace(cfg, name="demo_fsdp", mesh=MeshConfig(data=1, fsdp=-1, tensor=1))
