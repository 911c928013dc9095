"""What normlab tells the PyTorch ecosystem so that its tools treat normlab's layers as torch's.

Why this file exists. normlab's layers are instances of their torch classes, and most of
the ecosystem finds a normalization layer with ``isinstance`` (``swa_utils.update_bn``,
``SyncBatchNorm.convert_sync_batchnorm``, FSDP's mixed precision,
``torch.func.replace_all_batch_norm_modules_``): those need nothing from here. Two of
torch's tools look the exact class up instead, and do not see a subclass:

- **Eager quantization fusion** (``torch.ao.quantization.fuse_modules`` and
  ``fuse_modules_qat``) finds its fuser in a table keyed by the exact
  ``(type(conv), type(bn), ...)``, and the fused modules it builds (``nni.ConvBn2d``,
  ``nni.BNReLU2d``, ...) check ``type(bn) is nn.BatchNorm2d``. :func:`register` adds
  normlab's ``BatchNorm1d/2d/3d`` to that table, next to every entry torch has for its
  own (conv, conv + ReLU, linear, transposed conv, batch norm + ReLU), with torch's
  fuser called on a torch batch norm that holds the normlab layer's very parameters and
  buffers. It runs when ``normlab.nn`` is imported: ``fuse_modules`` then works on a
  model with normlab's layers as it does with torch's, with nothing for the user to do.
  The same entries are :data:`FUSER_METHODS`, for torch's public per-call argument
  ``fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHODS}``.
- **FX graph mode quantization** (``prepare_fx``, ``prepare_qat_fx``) sees each normlab
  layer as one module call, as it sees torch's, but matches its fusion patterns
  (``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``, ...) by exact class, in a configuration
  built afresh on every call unless the caller passes one. Convert the model to torch's
  layers first, which keeps the very parameter and buffer objects and computes the same::

      prepared = prepare_fx(normlab.convert(model, to="torch"), qconfig_mapping, example_inputs)

  ``torch.fx.experimental.optimization.fuse`` (exact classes too) is in the same case;
  ``normlab.fold_batchnorm`` folds normlab's and torch's layers alike.

Only batch norm proper is registered: the fused modules train it as torch's batch norm
(QAT), which is what normlab's ``BatchNorm1d/2d/3d`` compute. A variant that trains
differently (renormalization, ghost batches, an activation) is not torch's batch norm,
and ``fuse_modules`` refuses it as it refuses any module it does not know.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["FUSER_METHODS", "register"]

# normlab's class -> the torch class torch.ao's fused modules expect
TORCH_BATCH_NORM: dict[type, type] = {
    BatchNorm1d: nn.BatchNorm1d,
    BatchNorm2d: nn.BatchNorm2d,
    BatchNorm3d: nn.BatchNorm3d,
}


def as_torch_batch_norm(bn: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` (torch's batch norm) holding ``bn``'s parameters and buffers, the same objects,
    and its options and training mode; what torch's fusers and fused modules are given."""
    torch_bn = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, device="meta")
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        setattr(torch_bn, name, getattr(bn, name))
    if hasattr(bn, "qconfig"):  # eager QAT reads it off the modules it fuses
        torch_bn.qconfig = bn.qconfig
    return torch_bn.train(bn.training)


def _on_torch_batch_norm(fuser: Callable, position: int, cls: type) -> Callable:
    """``fuser`` (torch's, called as ``fuser(is_qat, *modules)``) with the module at ``position``
    handed over as torch's batch norm ``cls``."""

    def fuse(is_qat: bool, *modules: nn.Module):
        modules = list(modules)
        modules[position] = as_torch_batch_norm(modules[position], cls)
        return fuser(is_qat, *modules)

    return fuse


def _fuser_methods(torch_table: dict) -> dict:
    """For every entry of torch's table with one of torch's batch norms in it, the same entry
    with normlab's class in its place."""
    ours = {}
    for normlab_cls, torch_cls in TORCH_BATCH_NORM.items():
        for key, fuser in torch_table.items():
            if isinstance(key, tuple) and torch_cls in key:
                position = key.index(torch_cls)
                new_key = key[:position] + (normlab_cls,) + key[position + 1 :]
                ours[new_key] = _on_torch_batch_norm(fuser, position, torch_cls)
    return ours


def _torch_fusion_table() -> dict | None:
    """torch.ao's table of eager fusers (the name it has in torch 2.4 to 2.14), or None."""
    try:
        from torch.ao.quantization import fuser_method_mappings
    except ImportError:  # a torch built without torch.ao.quantization
        return None
    table = getattr(fuser_method_mappings, "_DEFAULT_OP_LIST_TO_FUSER_METHOD", None)
    return table if isinstance(table, dict) else None


_TABLE = _torch_fusion_table()
FUSER_METHODS: dict = {} if _TABLE is None else _fuser_methods(_TABLE)


def register() -> None:
    """Put :data:`FUSER_METHODS` into torch.ao's default eager fusion table (idempotent; the
    entries for torch's own classes are left untouched)."""
    if _TABLE is not None:
        for key, fuser in FUSER_METHODS.items():
            _TABLE.setdefault(key, fuser)


register()
