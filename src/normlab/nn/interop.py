"""What normlab tells the PyTorch ecosystem so that its tools treat normlab's layers as torch's.

Why this file exists. normlab's layers are instances of their torch classes, and most of
the ecosystem finds a normalization layer with ``isinstance`` (``swa_utils.update_bn``,
``SyncBatchNorm.convert_sync_batchnorm``, FSDP's mixed precision,
``torch.func.replace_all_batch_norm_modules_``): those need nothing from here. Three of
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
- **Eager static quantization** (``torch.ao.quantization.prepare`` and ``convert``) observes
  and swaps a module found by its exact class in ``DEFAULT_STATIC_QUANT_MODULE_MAPPINGS``;
  a batch norm left unfused (nothing before it to fold into) becomes torch's quantized
  batch norm. :func:`register` maps normlab's ``BatchNorm2d/3d`` to the same quantized
  modules as torch's (torch has none for 1-D), which read the layer's parameters and
  buffers as they read torch's: :data:`QUANTIZED_MODULES`.
- **FX graph mode quantization** (``prepare_fx``, ``prepare_qat_fx``, ``fuse_fx``,
  ``convert_fx``) records each normlab layer as one module call, as it records torch's,
  and matches its fusion patterns (``(nn.Conv2d, nn.BatchNorm2d, nn.ReLU)``, ...) by exact
  class, in a :class:`~torch.ao.quantization.backend_config.BackendConfig`. There is no
  table to register in: given no config, torch builds its native one afresh on every
  call from constants that name torch's classes (and lowers a lone batch norm by a list
  local to a function); reaching them would mean replacing torch's functions where its
  fuse, prepare and convert passes imported them, a patch of the library normlab plugs
  into that no caller could see. :func:`backend_config` is that config (or the
  one given) with normlab's batch norms beside torch's, fused by torch's fusers on torch's
  batch norm holding the normlab layer's parameters and buffers; pass it where the
  backend config goes::

      from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
      from normlab.nn.interop import backend_config

      config = backend_config()
      prepared = prepare_fx(model, qconfig_mapping, example_inputs, backend_config=config)
      quantized = convert_fx(prepared, backend_config=config)

  ``torch.fx.experimental.optimization.fuse`` (exact classes, no configuration) leaves
  normlab's layers as they are; ``normlab.fold_batchnorm`` folds normlab's and torch's
  layers alike.

Only batch norm proper is registered: the fused modules train it as torch's batch norm
(QAT), which is what normlab's ``BatchNorm1d/2d/3d`` compute. A variant that trains
differently (renormalization, ghost batches, an activation) is not torch's batch norm,
and ``fuse_modules`` refuses it as it refuses any module it does not know.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["FUSER_METHODS", "QUANTIZED_MODULES", "backend_config", "register"]

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


def _on_torch_batch_norms(fuser: Callable) -> Callable:
    """``fuser`` (torch's, called as ``fuser(is_qat, *modules)``, the modules nested in tuples
    for FX's reversed patterns) with every normlab batch norm among them handed over as torch's."""

    def torch_batch_norms(module):
        if isinstance(module, tuple):
            return tuple(map(torch_batch_norms, module))
        cls = TORCH_BATCH_NORM.get(type(module))
        return module if cls is None else as_torch_batch_norm(module, cls)

    def fuse(is_qat: bool, *modules):
        return fuser(is_qat, *map(torch_batch_norms, modules))

    return fuse


def _with_normlab_classes(pattern):
    """``pattern`` (a class, a function, or nested tuples of them) with each of torch's batch
    norms replaced by normlab's; None if it has none."""
    ours = {torch_cls: normlab_cls for normlab_cls, torch_cls in TORCH_BATCH_NORM.items()}
    if isinstance(pattern, tuple):
        parts = [_with_normlab_classes(p) for p in pattern]
        if all(p is None for p in parts):
            return None
        return tuple(p if new is None else new for p, new in zip(pattern, parts))
    return ours.get(pattern) if isinstance(pattern, type) else None


def _fuser_methods(torch_table: dict) -> dict:
    """For every entry of torch's eager table with one of torch's batch norms in it, the same
    entry with normlab's class in its place."""
    ours = {}
    for key, fuser in torch_table.items():
        new_key = _with_normlab_classes(key) if isinstance(key, tuple) else None
        if new_key is not None:
            ours[new_key] = _on_torch_batch_norms(fuser)
    return ours


def _torch_fusion_table() -> dict | None:
    """torch.ao's table of eager fusers (the name it has in torch 2.4 to 2.14), or None."""
    try:
        from torch.ao.quantization import fuser_method_mappings
    except ImportError:  # a torch built without torch.ao.quantization
        return None
    table = getattr(fuser_method_mappings, "_DEFAULT_OP_LIST_TO_FUSER_METHOD", None)
    return table if isinstance(table, dict) else None


def _torch_static_quant_mappings() -> dict | None:
    """torch.ao's float class -> quantized class table of eager static quantization, or None."""
    try:
        from torch.ao.quantization import quantization_mappings
    except ImportError:
        return None
    table = getattr(quantization_mappings, "DEFAULT_STATIC_QUANT_MODULE_MAPPINGS", None)
    return table if isinstance(table, dict) else None


_TABLE = _torch_fusion_table()
FUSER_METHODS: dict = {} if _TABLE is None else _fuser_methods(_TABLE)
_STATIC = _torch_static_quant_mappings()
QUANTIZED_MODULES: dict = {ours: _STATIC[theirs] for ours, theirs in TORCH_BATCH_NORM.items() if theirs in (_STATIC or {})}


def register() -> None:
    """Put :data:`FUSER_METHODS` into torch.ao's default eager fusion table and
    :data:`QUANTIZED_MODULES` into its static quantization mappings (idempotent; the entries
    for torch's own classes are left untouched)."""
    for table, entries in ((_TABLE, FUSER_METHODS), (_STATIC, QUANTIZED_MODULES)):
        if table is not None:
            for key, value in entries.items():
                table.setdefault(key, value)


register()


def backend_config(base=None):
    """FX quantization's backend config that fuses normlab's batch norms as torch's.

    Args:
        base: a :class:`~torch.ao.quantization.backend_config.BackendConfig` (default: torch's
            native one, what ``prepare_fx`` uses when given none); it is not modified.

    Returns a new ``BackendConfig`` with every pattern of ``base`` and, for each pattern with
    torch's ``BatchNorm1d/2d/3d`` in it (conv + bn (+ ReLU), linear + bn, transposed conv + bn,
    bn + ReLU, a lone bn), the same pattern with normlab's class: same observation, dtypes,
    fused module, and torch's fuser called on torch's batch norm holding the normlab layer's
    parameters and buffers (the same objects). One difference remains: ``convert_fx`` lowers
    a lone torch batch norm (none before it to fold into) to torch's quantized batch norm, by
    a fixed list of torch's classes, and leaves normlab's in floating point between a
    dequantize and a quantize, computing the same. Pass it to ``prepare_fx``, ``prepare_qat_fx``,
    ``fuse_fx`` and ``convert_fx`` as ``backend_config=``. Example::

        >>> from torch.ao.quantization.quantize_fx import fuse_fx
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNorm2d(4), nn.ReLU()).eval()
        >>> fused = fuse_fx(model, backend_config=backend_config())
        >>> type(fused.get_submodule("0")).__name__  # conv, batch norm folded in, and ReLU
        'ConvReLU2d'
    """
    from torch.ao.quantization.backend_config import BackendConfig, BackendPatternConfig, get_native_backend_config

    base = get_native_backend_config() if base is None else base
    config = BackendConfig(base.name).set_backend_pattern_configs(base.configs)
    for torch_config in base.configs:
        entries = torch_config.to_dict()
        key = "pattern" if torch_config.pattern is not None else "pattern_complex_format"
        pattern = _with_normlab_classes(entries[key])
        if pattern is None:
            continue
        entries[key] = pattern
        if torch_config.fuser_method is not None:
            entries["fuser_method"] = _on_torch_batch_norms(torch_config.fuser_method)
        config.set_backend_pattern_config(BackendPatternConfig.from_dict(entries))
    return config

