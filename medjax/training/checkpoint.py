"""Atomic, resumable, reshardable checkpoints with orbax, including the data iterator position.

Layout: ``WORKDIR/checkpoints/<step>/{state,data,meta}``. ``state`` is the train-state pytree (arrays written
per shard by every process), ``data`` the grain iterator state (JSON), ``meta`` small JSON (config dict,
parameter count, ...). By convention the train state is a dict whose ``"params"`` entry holds the model
parameters; ``medjax checkpoint info`` counts and digests that entry.

Atomicity: orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` and renames it when complete, so a run
killed mid-save leaves only a temporary directory, which is never listed as a step and is deleted the next time
a writable :class:`Checkpointer` opens the directory.

Resharding: :meth:`Checkpointer.restore` reads onto an abstract target whose ``jax.ShapeDtypeStruct`` leaves
carry the *new* shardings, so each device reads only its own shards, whatever the mesh at save time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from medjax.errors import CheckpointError

ITEMS = ("state", "data", "meta")
SUBDIR = "checkpoints"
_TMP_MARK = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir) -> Path:
    """``WORKDIR/checkpoints`` as an absolute path."""
    return Path(workdir).expanduser().absolute() / SUBDIR


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run under ``WORKDIR/checkpoints``.

    Args:
      workdir: the run directory.
      keep: most recent checkpoints kept (older ones are deleted after each save).
      every_steps: ``save`` writes only at multiples of this many steps unless ``force=True``.
      async_save: write in a background thread (call :meth:`wait` before exiting or reading).
      read_only: open an existing directory without creating, cleaning or deleting anything.

    Every process of a multi-process run must construct the Checkpointer and call ``save``/``restore`` together.
    """

    def __init__(self, workdir, *, keep: int = 3, every_steps: int = 1, async_save: bool = True,
                 read_only: bool = False):
        import orbax.checkpoint as ocp

        if keep < 1:
            raise CheckpointError(f"checkpoint.keep={keep} must be at least 1")
        if every_steps < 1:
            raise CheckpointError(f"checkpoint.every_steps={every_steps} must be at least 1")
        self.directory = checkpoint_dir(workdir)
        self.every_steps = every_steps
        self._started: set[int] = set()  # steps whose save this process started
        if read_only and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoint directory {self.directory}; train first or check WORKDIR")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=False,  # done here, synchronously (below)
            enable_async_checkpointing=async_save,
        )
        handlers = {
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        if not read_only:
            remove_partial_saves(self.directory)
        if read_only:  # orbax warns at length that a read-only manager will not save; that is the point here
            from absl import logging as absl_logging

            verbosity = absl_logging.get_verbosity()
            absl_logging.set_verbosity(absl_logging.ERROR)
            try:
                self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
            finally:
                absl_logging.set_verbosity(verbosity)
        else:
            self._mgr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # -- queries -----------------------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Steps of complete checkpoints, ascending (temporary, half-written directories are never listed)."""
        self._mgr.reload()
        return sorted(int(s) for s in self._mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def step_bytes(self, step: int) -> int:
        """Bytes on disk of the checkpoint at ``step``."""
        root = self.directory / str(step)
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    # -- save --------------------------------------------------------------------------------------------------
    def save(self, step: int, state_pytree, *, data_state: dict | None = None, meta: dict | None = None,
             force: bool = False) -> bool:
        """Start saving ``state_pytree`` (pytree of ``jax.Array``) at ``step``; returns whether a save started.

        Without ``force`` only steps that are multiples of ``every_steps`` are written. A step already on disk
        is not written again (returns False), so a final or SIGTERM-time ``save(..., force=True)`` after a
        periodic one is harmless. Typed PRNG keys are stored as their key data. Follow with :meth:`wait` before
        the process exits.
        """
        import orbax.checkpoint as ocp

        step = int(step)
        if not force and step % self.every_steps:
            return False
        # a step saved by this process may still be in flight (async) and so not yet listed on disk; the
        # manager's own list (no reload: re-reading the folder while old steps are being deleted in the
        # background makes orbax try to delete them twice) covers the steps found when it was opened
        if step in self._started or step in self._mgr.all_steps():
            return False
        self._started.add(step)
        items: dict[str, Any] = {"state": ocp.args.StandardSave(_encode_keys(state_pytree))}
        if data_state is not None:
            items["data"] = ocp.args.JsonSave(_jsonable(data_state, "data_state"))
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(_jsonable(meta, "meta"))
        return bool(self._mgr.save(step, args=ocp.args.Composite(**items), force=True))

    def wait(self) -> None:
        """Block until background saves have been committed."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the manager."""
        self._mgr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- restore -----------------------------------------------------------------------------------------------
    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}; run without --restart to start afresh")
        if step is None:
            return steps[-1]
        if int(step) not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; available steps: {steps}")
        return int(step)

    def _present(self, step: int) -> set[str]:
        root = self.directory / str(step)
        return {name for name in ITEMS if (root / name).exists()}

    def restore(self, step: int | None = None, *, abstract_state) -> tuple[Any, dict | None, dict | None]:
        """Restore ``(state, data_state, meta)`` from ``step`` (default: the latest).

        Args:
          abstract_state: pytree like the saved state whose leaves are ``jax.ShapeDtypeStruct`` WITH shardings
            (see :func:`medjax.parallel.state_shardings` and :func:`medjax.parallel.with_shardings`); arrays are
            read directly into those shardings. ``nnx.Variable`` wrappers are kept.

        Raises:
          CheckpointError: no checkpoint, unknown step, or the saved tree does not match ``abstract_state``
            (missing/extra keys, different shapes).
        """
        import orbax.checkpoint as ocp

        step = self._resolve(step)
        target = _encode_keys(abstract_state)
        self._check_target(step, target)
        present = self._present(step)
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(target)}
        for name in ("data", "meta"):
            if name in present:
                items[name] = ocp.args.JsonRestore()
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint at step {step} in {self.directory} could not be restored onto the model: {e}"
            ) from e
        state = _decode_keys(out["state"], abstract_state)
        return state, _get(out, "data"), _get(out, "meta")

    def _check_target(self, step: int, target) -> None:
        import jax

        saved = self.saved_shapes(step)
        wanted: dict[str, tuple] = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
            from medjax.parallel.sharding import path_str

            key = path_str(path)
            if getattr(leaf, "sharding", None) is None:
                raise CheckpointError(
                    f"abstract_state leaf {key!r} has no sharding; restore onto "
                    "medjax.training.state.train_state_spec(cfg, mesh).abstract_with_shardings() (through "
                    "medjax.training.state.state_to_dict), or, for other pytrees, attach shardings with "
                    "medjax.parallel.with_shardings(abstract, medjax.parallel.state_shardings(abstract, mesh, rules))"
                )
            wanted[key] = tuple(leaf.shape)
        where = f"checkpoint at step {step} in {self.directory}"
        missing = sorted(set(wanted) - set(saved))
        extra = sorted(set(saved) - set(wanted))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"the model has keys the checkpoint lacks: {missing[:5]}")
            if extra:
                parts.append(f"the checkpoint has keys the model lacks: {extra[:5]}")
            raise CheckpointError(
                f"{where} does not match the model: {'; '.join(parts)}; use the config it was saved with "
                "(see `medjax checkpoint info`) or start a new workdir"
            )
        for key in sorted(wanted):
            if wanted[key] != saved[key]:
                raise CheckpointError(
                    f"{where} does not match the model: key {key} shape {saved[key]} (saved) vs "
                    f"{wanted[key]} (model); use the config it was saved with or start a new workdir"
                )

    def saved_shapes(self, step: int | None = None) -> dict[str, tuple]:
        """``{key path: shape}`` of the saved state arrays, read from metadata (no array data is read)."""
        import jax

        from medjax.parallel.sharding import path_str

        step = self._resolve(step)
        tree = self._mgr.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        return {
            path_str(p): tuple(m.shape)
            for p, m in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        }

    def restore_unsharded(self, step: int | None = None) -> tuple[dict, dict | None, dict | None]:
        """Restore the state as saved (nested dicts of ``np.ndarray`` in host memory), without a model.

        For inspection tools on any number of devices (e.g. ``medjax checkpoint info``); training uses
        :meth:`restore`.
        """
        import jax
        import orbax.checkpoint as ocp

        step = self._resolve(step)
        tree = self._mgr.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=cpu),
            tree,
            is_leaf=lambda x: hasattr(x, "shape"),
        )
        items: dict[str, Any] = {"state": ocp.args.StandardRestore(target)}
        for name in ("data", "meta"):
            if name in self._present(step):
                items[name] = ocp.args.JsonRestore()
        out = self._mgr.restore(step, args=ocp.args.Composite(**items))
        state = jax.tree.map(np.asarray, out["state"])
        return state, _get(out, "data"), _get(out, "meta")

    def read_item(self, name: str, step: int | None = None) -> dict | None:
        """The JSON item ``"data"`` or ``"meta"`` of ``step`` (default latest), or None if it was not saved."""
        if name not in ("data", "meta"):
            raise ValueError(f"read_item reads 'data' or 'meta', not {name!r}")
        import orbax.checkpoint as ocp

        step = self._resolve(step)
        if name not in self._present(step):
            return None
        out = self._mgr.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))
        return _get(out, name)


def remove_partial_saves(directory) -> list[Path]:
    """Delete the temporary directories (``<step>.orbax-checkpoint-tmp-*``) a save killed midway left in
    ``directory``; only process 0 deletes. Returns the paths removed (empty on other processes)."""
    import shutil

    import jax

    directory = Path(directory)
    if jax.process_index() != 0 or not directory.is_dir():
        return []
    removed = sorted(p for p in directory.iterdir() if _TMP_MARK in p.name)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def read_meta(workdir, step: int | None = None) -> dict | None:
    """The ``meta`` JSON saved with ``step`` (default: latest) under ``WORKDIR/checkpoints``; no model needed."""
    return Checkpointer(workdir, read_only=True).read_item("meta", step)


def read_data_state(workdir, step: int | None = None) -> dict | None:
    """The data iterator state saved with ``step`` (default: latest); None if none was saved."""
    return Checkpointer(workdir, read_only=True).read_item("data", step)


def _get(out, name):
    try:
        return out[name]
    except (KeyError, AttributeError):
        return None


def _jsonable(obj, where: str):
    """``obj`` with numpy scalars/arrays and tuples turned into JSON types; raises CheckpointError otherwise."""

    def conv(x):
        if isinstance(x, dict):
            return {str(k): conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, bytes):
            return x.decode("latin-1")
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        if hasattr(x, "__fspath__"):
            return os.fspath(x)
        raise CheckpointError(f"{where} holds a {type(x).__name__} that cannot be stored as JSON: {x!r}")

    out = conv(obj)
    json.dumps(out)
    return out


def _is_key(x) -> bool:
    import jax

    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _encode_keys(tree):
    """Typed PRNG key arrays (and their ShapeDtypeStructs) -> their uint32 key data."""
    import jax

    def enc(x):
        if not _is_key(x):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            data = jax.eval_shape(jax.random.key_data, x)
            sharding = x.sharding
            if sharding is not None and hasattr(sharding, "spec"):
                sharding = jax.sharding.NamedSharding(sharding.mesh, sharding.spec)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)
        return jax.random.key_data(x)

    return jax.tree.map(enc, tree)


def _decode_keys(restored, abstract):
    """Re-wrap key data restored where ``abstract`` holds typed PRNG keys."""
    import jax

    def dec(r, a):
        return jax.random.wrap_key_data(r, impl=_key_impl(a.dtype)) if _is_key(a) else r

    return jax.tree.map(dec, restored, abstract)


_KEY_IMPLS = {"fry": "threefry2x32", "rbg": "rbg", "urbg": "unsafe_rbg"}


def _key_impl(dtype) -> str:
    """The PRNG implementation name of a typed key dtype such as ``key<fry>`` (from its public name)."""
    tag = str(dtype)[4:-1] if str(dtype).startswith("key<") else str(dtype)
    try:
        return _KEY_IMPLS[tag]
    except KeyError:
        raise CheckpointError(f"the state holds PRNG keys of type {dtype}, which checkpoints do not know how to "
                              f"restore (known: {sorted('key<' + k + '>' for k in _KEY_IMPLS)}); store "
                              "jax.random.key_data(key) instead") from None
