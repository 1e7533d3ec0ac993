"""The Flower ClientApp of a site: Flower's Message API around :func:`medjax.federated.local.train_round`.

A SuperNode is started with its own node configuration (``--node-config``)::

    data-dir="/data/hospital-a/mri"   the site's dataset (folder, MSD folder or manifest), read only here
    state-dir="/var/medjax/fed-a"     the site's own run directory (local train state between rounds)
    site="hospital-a"                 the label the site reports (default: "site-<node id>")
    cache-dir="..."                   optional prepared cache (`medjax data prepare`) of the site's data

A ``train`` message carries the global parameters (``ArrayRecord`` "arrays", by parameter name) and the run
config (``ConfigRecord`` "config": ``round``, ``config-json``). The reply carries the shared parameters after
local training and a ``MetricRecord`` "metrics" (``num-examples``, ``loss``, ``steps``, ``seconds``,
``update-norm``) and the site label; no file names, paths, headers or per-case values. An ``evaluate`` message
(fine-tuning runs, after the last round) carries the global parameters; the reply holds the site's held-out
count (``num-val``) and the task's scalar metrics on its own held-out records, nothing per case.

``MEDJAX_FEDERATED_AUDIT=FOLDER`` (environment of the SuperNode) makes each ClientApp process record every
file it opens (Python audit events) in ``FOLDER/<site>-<pid>.txt``: how the tests check that a site reads only
its own folder.
"""

from __future__ import annotations

import json
import os
import sys

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()

AUDIT_ENV = "MEDJAX_FEDERATED_AUDIT"


def _start_audit(site: str) -> None:
    folder = os.environ.get(AUDIT_ENV)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    log = open(os.path.join(folder, f"{site}-{os.getpid()}.txt"), "a", buffering=1)  # noqa: SIM115

    def hook(event, args):
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            try:
                log.write(os.path.abspath(os.fsdecode(args[0])) + "\n")
            except (ValueError, OSError):
                pass

    sys.addaudithook(hook)


def node_settings(context: Context) -> tuple[str, str, str, str]:
    """``(site, data_dir, state_dir, cache_dir)`` from the SuperNode's ``--node-config``."""
    from medjax.errors import ConfigError

    nc = context.node_config
    site = str(nc.get("site", f"site-{context.node_id}"))
    if "data-dir" not in nc or "state-dir" not in nc:
        raise ConfigError(f"SuperNode {site}: start flower-supernode with --node-config 'data-dir=\"/path/to/data\" "
                          "state-dir=\"/path/for/site/state\" site=\"name\"'; data-dir and state-dir are required")
    return site, str(nc["data-dir"]), str(nc["state-dir"]), str(nc.get("cache-dir", ""))


def _enable_compile_cache(state_dir: str) -> None:
    """Each round runs in a fresh ClientApp process: keep compiled steps in the site's state folder (unless
    ``JAX_COMPILATION_CACHE_DIR`` already names a cache)."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(state_dir, "xla-cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _site_request(msg: Message, context: Context):
    """``(site, data_dir, state_dir, cache_dir, cfg, global arrays)`` of a message to this SuperNode, with the
    file-open audit and the site's compile cache set up."""
    from medjax.config.overrides import from_dict
    from medjax.config.schema import Config

    site, data_dir, state_dir, cache_dir = node_settings(context)
    _start_audit(site)
    _enable_compile_cache(state_dir)
    cfg = from_dict(Config, json.loads(str(msg.content["config"]["config-json"])))
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    return site, data_dir, state_dir, cache_dir, cfg, arrays


@app.train()
def train(msg: Message, context: Context) -> Message:
    from medjax.federated.local import train_round

    site, data_dir, state_dir, cache_dir, cfg, arrays = _site_request(msg, context)
    res = train_round(cfg, data_dir=data_dir, state_dir=state_dir, global_arrays=arrays,
                      round_=int(msg.content["config"]["round"]), cache_dir=cache_dir)
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in res.arrays.items()}),
        "metrics": MetricRecord({"num-examples": int(res.num_examples), "loss": float(res.loss),
                                 "steps": int(res.steps), "seconds": float(res.seconds),
                                 "update-norm": float(res.update_norm)}),
        "site": ConfigRecord({"name": site}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global parameters on the site's own held-out records (fine-tuning, or pretraining with
    ``data.holdout_last``); reply with aggregate metrics only (``num-val`` and the task's scalar metrics)."""
    from medjax.federated.evaluate import evaluate_site

    site, data_dir, state_dir, cache_dir, cfg, arrays = _site_request(msg, context)
    metrics = evaluate_site(cfg, data_dir=data_dir, state_dir=state_dir, global_arrays=arrays, cache_dir=cache_dir)
    content = RecordDict({"metrics": MetricRecord({k.replace("_", "-"): (int(v) if k == "num_val" else float(v))
                                                   for k, v in metrics.items()}),
                          "site": ConfigRecord({"name": site})})
    return Message(content=content, reply_to=msg)
