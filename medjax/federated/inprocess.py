"""Sites run inside this process (no Flower): the same site rounds and server loop, for tests and for quick
comparisons of strategies. A real deployment uses :mod:`medjax.federated.simulate` (separate processes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


class InProcessSites:
    """``exchange`` for :meth:`medjax.federated.server.FederatedServer.run` over sites in this process.

    Args:
      sites: ``{name: data folder}``.
      state_root: each site keeps its own run directory at ``state_root/<name>``.
      drop: ``{round: [site names]}`` that do not answer in that round (a site dropping out).
    """

    def __init__(self, sites: Mapping[str, str], state_root, *, drop: Mapping[int, Sequence[str]] | None = None):
        self.sites = dict(sites)
        self.state_root = Path(state_root)
        self.drop = {int(k): set(v) for k, v in (drop or {}).items()}

    def __call__(self, round_: int, arrays: dict, config_json: str):
        import json

        from medjax.config.overrides import from_dict
        from medjax.config.schema import Config
        from medjax.federated.arrays import nbytes
        from medjax.federated.local import train_round
        from medjax.federated.server import SiteReply

        cfg = from_dict(Config, json.loads(config_json))
        out = []
        for name, data_dir in sorted(self.sites.items()):
            if name in self.drop.get(round_, ()):
                continue
            res = train_round(cfg, data_dir=data_dir, state_dir=self.state_root / name, global_arrays=arrays,
                              round_=round_)
            out.append(SiteReply(site=name, result=res, bytes_sent=nbytes(res.arrays)))
        return out

    def evaluate(self, arrays: dict, config_json: str) -> list[tuple[str, dict]]:
        """Each site scores the global ``arrays`` on its own held-out records: ``[(site, metrics)]``."""
        import json

        from medjax.config.overrides import from_dict
        from medjax.config.schema import Config
        from medjax.federated.evaluate import evaluate_site

        cfg = from_dict(Config, json.loads(config_json))
        return [(name, evaluate_site(cfg, data_dir=data_dir, state_dir=self.state_root / name, global_arrays=arrays))
                for name, data_dir in sorted(self.sites.items())]
