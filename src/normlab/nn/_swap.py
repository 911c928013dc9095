"""Replace submodules of a model in place: the one tree walk behind the model-wide conversions
(``convert_sync_batchnorm``, ``freeze_batchnorm``, ``normlab.convert``)."""

from __future__ import annotations

from typing import Callable

from torch import nn


def replace_modules(model: nn.Module, convert: Callable[[nn.Module, str], nn.Module | None]) -> nn.Module:
    """Put ``convert(m, name)`` in place of every submodule ``m`` (``name``: where it first
    appears, "" for the root) for which it is not None; returns the root.

    Modules ``convert`` returns are not descended into. A module that appears at several
    places (shared weights) is converted once and the replacement shared the same way.
    The root itself may be replaced, hence the return value.
    """
    done: dict[int, nn.Module] = {}

    def visit(module: nn.Module, name: str) -> nn.Module:
        if id(module) not in done:
            replacement = convert(module, name)
            if replacement is None:
                replacement = module
                # every registration, not named_children(), which skips a module's second place in one parent
                for child_name, child in list(module._modules.items()):
                    if child is None:
                        continue
                    new = visit(child, f"{name}.{child_name}" if name else child_name)
                    if new is not child:
                        setattr(module, child_name, new)
            done[id(module)] = replacement
        return done[id(module)]

    return visit(model, "")
