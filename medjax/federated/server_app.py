"""The Flower ServerApp: :class:`medjax.federated.server.FederatedServer` over a Flower Grid.

Run config (``[tool.flwr.app.config]`` of the app, or ``flwr run --run-config``):

- ``config-json``: the resolved medjax config (``medjax.config.to_json``); its ``federated`` section drives the run;
- ``workdir``: the coordinator's run directory (checkpoints, metrics.jsonl, privacy.json);
- ``wait-sites``: sites to wait for before the first round (default ``federated.min_sites``).

Each round the server asks ``max(min_sites, ceil(fraction * connected))`` sites (a seeded sample), pushes one
``train`` message per site and pulls replies until every asked site answered, or until
``federated.round_timeout`` seconds passed and at least ``federated.min_sites`` answered (a site that died or
hangs does not stop the round). Replies with errors are logged by site and left out.
"""

from __future__ import annotations

import json
import math
import random
import time

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from medjax.errors import ConfigError

app = ServerApp()

POLL_S = 0.25  # seconds between pulls of replies


class GridExchange:
    """``exchange`` for :meth:`FederatedServer.run` over a Flower Grid (module doc: sampling and timeouts)."""

    def __init__(self, grid: Grid, fed, *, seed: int = 0, wait_sites: int | None = None, log=print):
        self.grid, self.fed, self.seed, self.log = grid, fed, seed, log
        self.wait_sites = max(int(wait_sites or 0), fed.min_sites)

    def _nodes(self, round_: int) -> list[int]:
        need = self.wait_sites if round_ == 1 else self.fed.min_sites
        t0 = time.time()
        while len(nodes := sorted(self.grid.get_node_ids())) < need:
            if time.time() - t0 > self.fed.round_timeout:
                raise RuntimeError(f"round {round_}: {len(nodes)} site(s) connected after "
                                   f"{self.fed.round_timeout:.0f} s, {need} needed (federated.min_sites)")
            time.sleep(POLL_S)
        count = min(len(nodes), max(self.fed.min_sites, math.ceil(self.fed.fraction * len(nodes))))
        return sorted(random.Random(self.seed * 100_003 + round_).sample(nodes, count))

    def _exchange(self, nodes: list[int], content: RecordDict, kind: str, what: str) -> list[Message]:
        """Push ``content`` to ``nodes`` as ``kind`` messages; pull replies until every node answered, or until
        ``round_timeout`` passed with at least ``min_sites`` answers. Error replies are logged and dropped."""
        msgs = [Message(content, dst_node_id=n, message_type=kind) for n in nodes]
        ids = list(self.grid.push_messages(msgs))
        node_of = dict(zip(ids, nodes))
        pending = set(ids)
        replies, t0 = [], time.time()
        while pending:
            for m in self.grid.pull_messages(list(pending)):
                pending.discard(m.metadata.reply_to_message_id)
                replies.append(m)
            ok = [m for m in replies if not m.has_error()]
            if pending and time.time() - t0 > self.fed.round_timeout:
                if len(ok) >= self.fed.min_sites:
                    self.log(f"{what}: {len(pending)} site(s) did not answer within "
                             f"{self.fed.round_timeout:.0f} s; going on with {len(ok)}")
                    break
            if pending:
                time.sleep(POLL_S)
        out = []
        for m in replies:
            if m.has_error():
                node = node_of.get(m.metadata.reply_to_message_id, m.metadata.src_node_id)
                self.log(f"{what}: node {node} failed: {m.error.reason}")
                continue
            out.append(m)
        return out

    def evaluate(self, arrays: dict, config_json: str) -> list[tuple[str, dict]]:
        """Every connected site scores the global ``arrays`` on its held-out records: ``[(site, metrics)]``."""
        nodes = sorted(self.grid.get_node_ids())
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                              "config": ConfigRecord({"config-json": config_json})})
        out = []
        for m in self._exchange(nodes, content, "evaluate", "evaluation"):
            met = m.content["metrics"]
            out.append((str(m.content["site"]["name"]),
                        {k.replace("-", "_"): (int(v) if k == "num-val" else float(v)) for k, v in met.items()}))
        return out

    def __call__(self, round_: int, arrays: dict, config_json: str):
        from medjax.federated.arrays import nbytes
        from medjax.federated.local import SiteResult
        from medjax.federated.server import SiteReply

        nodes = self._nodes(round_)
        record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        config = ConfigRecord({"round": int(round_), "config-json": config_json})
        replies = self._exchange(nodes, RecordDict({"arrays": record, "config": config}), "train",
                                 f"round {round_}")
        out = []
        for m in replies:
            met = m.content["metrics"]
            got = {k: v.numpy() for k, v in m.content["arrays"].items()}
            res = SiteResult(arrays=got, num_examples=int(met["num-examples"]), loss=float(met["loss"]),
                             steps=int(met["steps"]), seconds=float(met["seconds"]),
                             update_norm=float(met["update-norm"]))
            out.append(SiteReply(site=str(m.content["site"]["name"]), result=res, bytes_sent=nbytes(got)))
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    from medjax.config.overrides import from_dict
    from medjax.config.schema import Config
    from medjax.federated.server import FederatedServer

    rc = context.run_config
    if "config-json" not in rc or "workdir" not in rc:
        raise ConfigError("the medjax ServerApp needs run config keys config-json (medjax.config.to_json of the "
                          "run config) and workdir (the coordinator's run directory)")
    cfg = from_dict(Config, json.loads(str(rc["config-json"])))

    def log(line: str) -> None:
        print(f"[medjax] {line}", flush=True)

    with FederatedServer(cfg, str(rc["workdir"]), log=log) as server:
        exchange = GridExchange(grid, cfg.federated, seed=cfg.train.seed, wait_sites=int(rc.get("wait-sites", 0)),
                                log=log)
        summary = server.run(exchange)
    log(f"done: {summary['rounds']} rounds, checkpoint {summary['checkpoint']}")
