"""Setting up a training run, shared by pretraining and fine-tuning: workdir, mesh, state, checkpoints, data, logs.

:func:`open_run` is a context manager: everything it opens (the orbax checkpointer, the data iterator and its
worker threads, the logger's TensorBoard writer and progress bar) is closed when the ``with`` block ends,
whether it ends normally or by an exception, so a failed run (or one of the many runs of one
``finetune-compare`` process) leaves no threads or open files behind.

WORKDIR layout written here::

    config.json              the resolved config of the run
    checkpoints/<step>/      train state + data-iterator state + meta
    metrics.jsonl, tb/       metrics and TensorBoard events (process 0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from medjax.config.schema import Config
from medjax.errors import ConfigError

RUN_FILES = ("metrics.jsonl", "loss.png", "config.json", "summary.json")
RUN_DIRS = ("checkpoints", "tb", "reconstructions")


def clean_workdir(workdir: Path, extra_files: tuple[str, ...] = ()) -> None:
    """--restart: remove checkpoints, metrics, TensorBoard events, figures and ``extra_files`` of an earlier run."""
    for name in RUN_DIRS:
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in RUN_FILES + tuple(extra_files):
        (workdir / name).unlink(missing_ok=True)


def batch_sizes(cfg: Config, mesh, process_count: int) -> int:
    """Per-process batch size; raises ConfigError naming train.batch_size when it does not divide."""
    b = cfg.train.batch_size
    shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
    if b % process_count:
        raise ConfigError(f"train.batch_size={b} must divide by the number of processes ({process_count})")
    if b % cfg.train.grad_accum:
        raise ConfigError(f"train.batch_size={b} must divide by train.grad_accum={cfg.train.grad_accum}")
    if (b // cfg.train.grad_accum) % shards:
        raise ConfigError(
            f"train.batch_size={b} / train.grad_accum={cfg.train.grad_accum} must divide by the data-parallel "
            f"devices (mesh data*fsdp = {shards}); change train.batch_size or mesh.*")
    return b // process_count


def prepare_workdir(cfg: Config, workdir, *, restart: bool, extra_files: tuple[str, ...] = ()) -> Path:
    """Make ``workdir`` (cleaned first with ``restart``) and write ``config.json``; only process 0 touches files,
    the others wait for it. Returns the absolute path."""
    import jax

    from medjax.config.overrides import to_json
    from medjax.parallel.distributed import barrier

    workdir = Path(workdir).expanduser().absolute()
    main = jax.process_index() == 0
    if restart and main:
        clean_workdir(workdir, extra_files)
    barrier("medjax-clean-workdir")
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(to_json(cfg) + "\n")
    barrier("medjax-workdir-ready")
    return workdir


@dataclasses.dataclass
class Run:
    """What :func:`open_run` set up. ``state`` is the restored (or freshly initialised) train state at step
    ``start``; ``resumed_from`` the checkpoint step it came from (None: a fresh start)."""

    workdir: Path
    mesh: Any
    spec: Any  # medjax.training.state.StateSpec
    batch_sharding: Any
    per_process: int
    ckpt: Any  # medjax.training.checkpoint.Checkpointer
    data: Any  # iterator with get_state/set_state/close
    logger: Any  # medjax.training.logging.RunLogger
    state: Any
    start: int
    resumed_from: int | None

    @property
    def main(self) -> bool:
        import jax

        return jax.process_index() == 0


@contextlib.contextmanager
def open_run(cfg: Config, workdir: Path, *, tx, model_factory: Callable | None = None,
             make_data: Callable[[dict | None], Any], on_init: Callable | None = None, progress: bool = True,
             desc: str = "pretrain", restore: Callable | None = None) -> Iterator[Run]:
    """Mesh, state shardings, checkpointer, data iterator, state (restored or initialised) and logger of a run.

    Args:
      cfg: the run config; workdir: from :func:`prepare_workdir`.
      tx: the optax transformation; model_factory: builds the module (default: the MAE of ``cfg``).
      make_data: ``make_data(saved_data_state_or_None) -> iterator``: the data iterator (a context manager with
        ``get_state``/``set_state``/``close``); it receives the data position saved with the checkpoint being
        resumed (e.g. to take its number of data shards) and this function then restores that position.
      on_init: ``on_init(state, spec) -> state`` on a fresh start only (e.g. load a pretrained encoder).
      restore: ``restore(ckpt, step, spec) -> state`` replaces the plain restore of the saved train state when
        resuming (e.g. a PEFT run whose checkpoint holds only its trainable parameters over a base).
      progress, desc: the progress bar.

    Everything opened is closed on exit (pending checkpoint saves are committed first).
    """
    import jax

    from medjax.parallel.mesh import make_mesh
    from medjax.parallel.sharding import batch_sharding
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.logging import RunLogger
    from medjax.training.state import state_from_dict, state_to_dict, train_state_spec

    mesh = make_mesh(cfg.mesh)
    per_process = batch_sizes(cfg, mesh, jax.process_count())
    spec = train_state_spec(cfg, mesh, tx=tx, model_factory=model_factory)
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(Checkpointer(workdir, keep=cfg.checkpoint.keep,
                                                every_steps=cfg.checkpoint.every_steps))
        resumed_from = ckpt.latest_step()
        data_state = ckpt.read_item("data", resumed_from) if resumed_from is not None else None
        data = stack.enter_context(make_data(data_state))
        if resumed_from is not None:
            if restore is not None:
                state = restore(ckpt, resumed_from, spec)
            else:
                restored, _, _ = ckpt.restore(resumed_from,
                                              abstract_state=state_to_dict(spec.abstract_with_shardings()))
                state = state_from_dict(restored)
            if data_state is not None:
                data.set_state(data_state)
        else:
            state = spec.init()
            if on_init is not None:
                state = on_init(state, spec)
        start = int(jax.device_get(state.step))
        logger = stack.enter_context(RunLogger(workdir, total_steps=cfg.train.steps, start_step=start,
                                               enabled=jax.process_index() == 0, progress=progress, desc=desc))
        if resumed_from is not None:
            logger.write(f"resumed from {ckpt.directory / str(resumed_from)} (step {resumed_from})")
        yield Run(workdir=workdir, mesh=mesh, spec=spec, batch_sharding=batch_sharding(mesh),
                  per_process=per_process, ckpt=ckpt, data=data, logger=logger, state=state, start=start,
                  resumed_from=resumed_from)
