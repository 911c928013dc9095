"""Weight normalization and its companions (Salimans & Kingma 2016, "Weight Normalization: A
Simple Reparameterization to Accelerate Training of Deep Neural Networks").

    WeightNorm            the parametrization ``w = g * v / ||v||``: a layer's weight becomes
                          a function of a direction ``v`` and a length ``g`` (per output unit)
    weight_norm           applies it to a layer, as torch.nn.utils.parametrizations.weight_norm
                          does, with the same parameter names and state_dict keys
    data_dependent_init   the paper's initialization (section 3): one forward pass sets each
                          weight-normalized layer's g and bias so that its pre-activations
                          have zero mean and unit variance on a batch
    MeanOnlyBatchNorm     the paper's companion (section 4): batch norm that only subtracts
                          the batch mean, the scale being left to weight norm's g
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import functional
from ._base import Layer, as_size, check_arguments, fx_leaf
from .batchnorm import FrozenBatchNorm, check_layout

__all__ = ["WeightNorm", "weight_norm", "data_dependent_init", "MeanOnlyBatchNorm"]


class WeightNorm(nn.Module):
    r"""The weight-norm parametrization :math:`w = g \, v / \lVert v \rVert` (Salimans & Kingma 2016).

    The norm is over every axis of ``v`` but ``dim``: with the default ``dim=0`` a
    Linear or Conv weight gets one length ``g`` per output unit. ``dim=None`` (stored as
    -1, as torch does) takes the norm over the whole tensor, with a scalar ``g``; -1
    does not mean the last axis, which is torch's convention too.

    Used through :func:`weight_norm`. ``forward(g, v)`` gives the weight;
    ``right_inverse(w)`` gives ``(g, v) = (||w||, w)``, so that applying weight norm
    leaves the layer's function unchanged.
    """

    def __init__(self, dim: int | None = 0) -> None:
        super().__init__()
        self.dim = -1 if dim is None else dim

    def forward(self, weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
        return functional.weight_norm(weight_v, weight_g, self.dim)

    def right_inverse(self, weight: torch.Tensor):
        return functional.norm_except_dim(weight, self.dim), weight

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def weight_norm(module: nn.Module, name: str = "weight", dim: int | None = 0) -> nn.Module:
    """Reparameterize ``module.<name>`` as ``g * v / ||v||``; drop-in for
    :func:`torch.nn.utils.parametrizations.weight_norm`.

    ``g`` and ``v`` are ``module.parametrizations.<name>.original0`` and ``.original1``,
    the same ``state_dict`` keys as torch's, so checkpoints move between the two. Older
    checkpoints with ``<name>_g`` and ``<name>_v`` (from ``torch.nn.utils.weight_norm``)
    load too. Returns the module. Undo with
    ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``.
    """
    who = f"weight_norm({type(module).__name__}.{name})"
    weight = module._parameters.get(name)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"{who}: {type(module).__name__} has no parameter {name!r}")
    if not weight.is_floating_point():
        raise TypeError(f"{who}: expected a floating-point weight, got {weight.dtype}")
    if dim is not None and dim != -1 and not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"{who}: dim={dim} is out of range for a {weight.dim()}-D weight of shape {tuple(weight.shape)}")
    norms = functional.norm_except_dim(weight.detach(), -1 if dim is None else dim)
    if not bool((norms > 0).all()):
        zero = torch.nonzero((norms == 0).flatten()).flatten().tolist()
        raise ValueError(
            f"{who}: the weight is zero {'everywhere' if dim is None or dim == -1 else f'in slice(s) {zero[:8]} along dim {dim}'}, "
            "so its direction v / ||v|| is undefined (weight norm would give NaN); initialize the layer first, e.g. "
            "with nn.init.kaiming_uniform_"
        )
    parametrize.register_parametrization(module, name, WeightNorm(dim), unsafe=True)

    def load_hook(state_dict, prefix, *args) -> None:
        g_key, v_key = f"{prefix}{name}_g", f"{prefix}{name}_v"
        if g_key in state_dict and v_key in state_dict:
            state_dict[f"{prefix}parametrizations.{name}.original0"] = state_dict.pop(g_key)
            state_dict[f"{prefix}parametrizations.{name}.original1"] = state_dict.pop(v_key)
        originals = getattr(module.parametrizations, name)
        for i in (0, 1):
            key, mine = f"{prefix}parametrizations.{name}.original{i}", getattr(originals, f"original{i}")
            theirs = state_dict.get(key)
            if isinstance(theirs, torch.Tensor) and theirs.shape != mine.shape:
                raise functional.ShapeError(
                    f"{who}: the checkpoint's '{key}' has shape {tuple(theirs.shape)}, expected "
                    f"{tuple(mine.shape)}; it was saved from a layer of another size"
                )

    module._register_load_state_dict_pre_hook(load_hook)
    return module


def _output_axis(module: nn.Module, norm: WeightNorm) -> int:
    """The axis of the module's output that holds its output units, each with its own g."""
    kind = parametrize.type_before_parametrizations(module).__name__
    conv = isinstance(module, nn.modules.conv._ConvNd)
    if not (isinstance(module, nn.Linear) or conv) or getattr(module, "transposed", False):
        raise ValueError(f"data_dependent_init: {kind} is not supported; it initializes Linear and Conv1d/2d/3d layers")
    if norm.dim != 0:
        raise ValueError(
            f"data_dependent_init: {kind} has weight norm with dim={norm.dim}; it needs dim=0, one g per output unit"
        )
    return 1 if conv else -1


@torch.no_grad()
def data_dependent_init(model: nn.Module, *args, **kwargs) -> list[str]:
    r"""Initialize every weight-normalized layer of ``model`` from one batch (Salimans & Kingma
    2016, section 3). Returns the names of the layers it initialized.

    Runs ``model(*args, **kwargs)`` once. At each Linear or Conv layer whose weight has
    :class:`WeightNorm` (with ``dim=0``), in the order the forward pass reaches them, it
    computes the pre-activation with unit length and no bias, :math:`t = v \cdot x / \lVert v
    \rVert`, takes the mean :math:`\mu[t]` and (biased) standard deviation :math:`\sigma[t]`
    of each output unit over the batch (and the spatial axes of a conv), and sets

    .. math::  g \leftarrow 1 / \sigma[t], \qquad b \leftarrow -\mu[t] / \sigma[t]

    so that the layer's output on this batch has zero mean and unit variance per unit;
    the layers after it see that output. A layer without bias only gets its scale.
    ``v`` keeps its initialization: only its direction matters. Layers the pass does
    not reach are left as they were; a layer reached twice is initialized at its first
    call. The pass runs in the model's current mode, so layers with running statistics
    count it as a batch.
    """
    layers = {
        name: m
        for name, m in model.named_modules()
        if parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], WeightNorm)
    }
    if not layers:
        raise ValueError(
            "data_dependent_init: the model has no layer with weight norm; apply normlab.nn.weight_norm first"
        )
    axes = {name: _output_axis(m, m.parametrizations.weight[0]) for name, m in layers.items()}
    done: list[str] = []
    handles = []

    def hooks(name, module):
        g = module.parametrizations.weight.original0

        def before(mod, inputs):
            if name not in done:
                g.fill_(1.0)
                if mod.bias is not None:
                    mod.bias.zero_()

        def after(mod, inputs, t):
            if name in done:
                return None
            done.append(name)
            axis = axes[name] % t.dim()
            dims = tuple(d for d in range(t.dim()) if d != axis)
            mean = t.mean(dims, keepdim=True)
            std = (t - mean).square().mean(dims, keepdim=True).sqrt()
            # constant up to rounding: a spread within a few ulps of the values' magnitude
            constant = std <= 4 * torch.finfo(t.dtype).eps * t.abs().amax(dims, keepdim=True)
            bad = torch.nonzero((~torch.isfinite(std) | constant).flatten()).flatten().tolist()
            if bad:
                raise ValueError(
                    f"data_dependent_init: output unit(s) {bad[:8]} of {name or 'the model'} "
                    f"({parametrize.type_before_parametrizations(mod).__name__}) are "
                    f"{'not finite' if not torch.isfinite(std).all() else 'constant'} over the batch, so "
                    "they cannot be scaled to unit variance; use a larger or more varied batch. The "
                    "model was left as it was."
                )
            g.copy_((1.0 / std).reshape(g.shape))
            if mod.bias is None:
                return t / std
            mod.bias.copy_((-mean / std).flatten())
            return (t - mean) / std

        return module.register_forward_pre_hook(before), module.register_forward_hook(after)

    touched = [p for m in layers.values() for p in (m.parametrizations.weight.original0, m.bias) if p is not None]
    before = [p.clone() for p in touched]
    try:
        for name, module in layers.items():
            handles += hooks(name, module)
        model(*args, **kwargs)
    except BaseException:  # leave the model as it was
        for p, value in zip(touched, before):
            p.copy_(value)
        raise
    finally:
        for h in handles:
            h.remove()
    return done


class MeanOnlyBatchNorm(Layer, nn.modules.batchnorm._BatchNorm):
    r"""Mean-only batch normalization (Salimans & Kingma 2016, section 4), the companion of
    weight normalization.

    Per channel (dim 1), over every other axis: :math:`y = x - \mu_B + \beta` in training,
    with the batch mean :math:`\mu_B`, and :math:`y = x - \hat\mu + \beta` in evaluation,
    with the running mean :math:`\hat\mu`, updated as batch norm's
    (``running_mean = (1 - momentum) * running_mean + momentum * mu_B``; ``momentum=None``:
    the cumulative average). No variance is taken and nothing is divided: the scale
    is the preceding weight-normalized layer's ``g``. ``bias`` is the learnable
    :math:`\beta`; the layer has no weight and no ``running_var``. ``non_finite``
    (keyword) guards the running mean as batch norm's guard does.

    Accepts ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` and ``(N, C, D, H, W)`` inputs.
    ``state_dict`` keys: ``bias``, ``running_mean``, ``num_batches_tracked``.

    A torch ``_BatchNorm`` (batch norm without its variance and scale), so that
    ``swa_utils.update_bn`` recomputes its running mean, FSDP keeps it in float32 and
    ``replace_all_batch_norm_modules_`` makes it use batch means. torch's
    ``convert_sync_batchnorm`` and ``fuse_conv_bn_eval`` need a running variance and
    fail on it, loudly (torch's own errors); normlab's folding folds it.
    """

    _layouts = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}
    _scriptable = False

    def __init__(
        self,
        num_features: int,
        momentum: float | None = 0.1,
        bias: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        non_finite: str = "skip",
    ) -> None:
        num_features = as_size(num_features, "num_features", "MeanOnlyBatchNorm")
        check_arguments("MeanOnlyBatchNorm", None, momentum, eps_may_be_none=True)
        # eps is batch norm's attribute, unused here: nothing is divided
        super().__init__(num_features, 0.0, momentum, bias, track_running_stats, device=device, dtype=dtype)
        self.register_parameter("weight", None)  # the scale is weight norm's g
        self.register_buffer("running_var", None)  # no variance is taken
        if non_finite not in functional.NON_FINITE:
            raise ValueError(f"{self._name}: non_finite must be one of {functional.NON_FINITE}, got {non_finite!r}")
        self.non_finite = non_finite

    def reset_running_stats(self) -> None:
        """Running mean 0, no batch seen."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Running mean 0, bias 0."""
        self.reset_running_stats()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, input) -> None:
        check_layout(self, input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.fx.Proxy):
            return fx_leaf(self, input)
        self._check_input_dim(input)
        use_batch_mean = self.training or self.running_mean is None
        track = self.training and self.track_running_stats and self.running_mean is not None
        momentum = 0.0
        if track:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        running_mean = self.running_mean if not self.training or track else None
        try:
            return functional.mean_only_batch_norm(input, running_mean, self.bias, use_batch_mean, momentum,
                                                   non_finite=self.non_finite, channels=self.num_features, who=self)
        except BaseException:
            if track:
                self.num_batches_tracked.sub_(1)  # a refused batch is not counted
            raise

    def uses_batch_statistics(self) -> bool:
        return True

    def inference_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, bias - running_mean)`` in float64: the map this layer applies in eval."""
        if self.running_mean is None:
            raise ValueError(f"{self._name}: without a running mean the layer subtracts each batch's mean, "
                             "which no fixed map does")
        with torch.no_grad():
            shift = -self.running_mean.double()
            if self.bias is not None:
                shift = shift + self.bias.double()
        return torch.ones_like(shift), shift

    def after_affine(self) -> nn.Module:
        return nn.Identity()

    def frozen(self) -> nn.Module:
        """Its inference map as a :class:`normlab.nn.FrozenBatchNorm`: weight 1, variance 1, eps 0."""
        frozen = FrozenBatchNorm.from_batchnorm(self)
        frozen.eps = 0.0  # (1 - 0) / sqrt(1 + 0): x - running_mean + bias, exactly
        return frozen

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, momentum={self.momentum}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )
