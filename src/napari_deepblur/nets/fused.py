"""Fused convolutions for inference on the CPU: a convolution with its batch norm, its ReLU
and its skip addition in one pass of oneDNN (``torch.ops.mkldnn._convolution_pointwise``,
the kernels PyTorch's own compiler emits), instead of one pass over memory per operation.

On a 2-core Xeon with AMX (bfloat16), where a ReLU or an addition over one 4 MB activation
costs half as much as the convolution before it, one deblurring U-Net at 512² takes 13–17 ms
fused against 23–29 ms (docs/benchmarks.md). Only for inference: a module in training mode,
or with gradients on, takes the plain path; so does any device but the CPU, a CPU other
than x86-64 (not measured), and any PyTorch build whose oneDNN kernels are missing or
disagree with the plain path on a probe (checked once).

The batch norm is folded into the convolution's weights and bias (exact up to rounding);
weights are kept, per convolution, in the precision and layout the kernel reads, and redone
when the weights change (a new file loaded, a training step, a move to another device).
"""

from __future__ import annotations

import functools
import platform
import weakref

import torch
from torch import nn

#: Per convolution: (key of the tensors they come from, (weight, bias) as the kernel reads them).
#: Outside the modules, so that copies and pickles of a model do not carry them.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: The inputs the fused kernels take, by the precision they compute in: float32 networks (as
#: the pipeline holds them), under a bfloat16 autocast too; not a float64 or half network.
_INPUT_DTYPES = {torch.float32: (torch.float32,), torch.bfloat16: (torch.float32, torch.bfloat16)}


def applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` runs on ``x`` through the fused kernels: inference on the CPU of a
    float32 network, unless oneDNN is switched off (``torch.backends.mkldnn.flags``)."""
    return (
        x.device.type == "cpu"
        and not module.training
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.enabled
        and x.dtype in _INPUT_DTYPES[_compute_dtype()]
        and available()
    )


@functools.cache
def available() -> bool:
    """Whether this is an x86-64 CPU (where the gain was measured; on ARM PyTorch's plain
    path may use other libraries) and this PyTorch has the fused kernels and they agree
    with the plain path."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    # in float32 and with ordinary tensors, whatever the caller's mode
    with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
        try:
            generator = torch.Generator().manual_seed(0)
            x, skip = torch.randn(2, 2, 4, 9, 9, generator=generator)
            conv = nn.Conv2d(4, 4, 3, 1, 1)
            expected = torch.relu(conv(x) + skip)
            got = _pointwise(x, *_weights(conv, None, torch.float32), conv, relu=True, add=skip)
            return bool(torch.allclose(got, expected, atol=1e-4))
        except (AttributeError, RuntimeError, NotImplementedError):
            return False


def conv(
    x: torch.Tensor,
    convolution: nn.Conv2d,
    norm: nn.BatchNorm2d | None = None,
    *,
    relu: bool = False,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """``relu(norm(convolution(x)) + add)`` in one kernel (``norm``, ``relu`` and ``add``
    optional), in bfloat16 under a CPU bfloat16 autocast, else float32."""
    dtype = _compute_dtype()
    weight, bias = _weights(convolution, norm, dtype)
    return _pointwise(x.to(dtype), weight, bias, convolution, relu=relu, add=add)


def sequential(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)`` for a sequence of Conv2d [BatchNorm2d] [ReLU] groups, each group fused
    where :func:`applies` (else ``layers(x)`` itself)."""
    if not applies(layers, x):
        return layers(x)
    modules, i = list(layers), 0
    while i < len(modules):
        convolution, norm, i = modules[i], None, i + 1
        if i < len(modules) and isinstance(modules[i], nn.BatchNorm2d):
            norm, i = modules[i], i + 1
        relu = i < len(modules) and isinstance(modules[i], nn.ReLU)
        i += relu
        x = conv(x, convolution, norm, relu=relu)
    return x


def _compute_dtype() -> torch.dtype:
    if hasattr(torch, "get_autocast_dtype"):  # torch ≥ 2.4
        autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    else:
        autocast = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return torch.bfloat16 if autocast == (True, torch.bfloat16) else torch.float32


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout, also when it has one channel: such a tensor counts
    as channels-last with either strides, and oneDNN answers the standard ones with a
    standard-layout output, which every later kernel would then copy."""
    if x.shape[1] == 1 and x.stride(1) != 1:
        return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    return x.contiguous(memory_format=torch.channels_last)


def _pointwise(x, weight, bias, convolution: nn.Conv2d, *, relu: bool, add=None):
    x = _channels_last(x)
    geometry = (
        list(convolution.padding),
        list(convolution.stride),
        list(convolution.dilation),
        convolution.groups,
    )
    kernels = torch.ops.mkldnn._convolution_pointwise
    if add is None:
        return kernels(x, weight, bias, *geometry, "relu" if relu else "none", [], "")
    add = _channels_last(add.to(x.dtype))
    return kernels.binary(
        x, add, weight, bias, *geometry, "add", None, "relu" if relu else None, [], None
    )


def _weights(convolution: nn.Conv2d, norm: nn.BatchNorm2d | None, dtype: torch.dtype):
    """The convolution's weight and bias with ``norm`` folded in, in ``dtype``, the weight
    channels-last; kept for ``convolution`` until one of the tensors they come from changes:
    in place (an optimiser step, ``load_state_dict``, a forward in training mode, which
    counts its batches) or for another tensor (``.to``). Changes that PyTorch does not count
    are not seen: writes through ``.data``, and to the tensors of a model built under
    ``torch.inference_mode``."""
    sources = [convolution.weight, convolution.bias]
    if norm is not None:
        sources += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        sources.append(norm.num_batches_tracked)
    key = (dtype,) + tuple(None if t is None else (t.data_ptr(), _version(t)) for t in sources)
    cached = _PREPARED.get(convolution)
    if cached is not None and cached[0] == key:
        return cached[1]
    weight = convolution.weight.detach().float()
    bias = None if convolution.bias is None else convolution.bias.detach().float()
    if norm is not None:
        scale = norm.weight.detach().float() / torch.sqrt(norm.running_var.float() + norm.eps)
        shift = norm.bias.detach().float() - norm.running_mean.float() * scale
        weight = weight * scale[:, None, None, None]
        bias = shift if bias is None else bias * scale + shift
    weights = (
        weight.to(dtype).contiguous(memory_format=torch.channels_last),
        None if bias is None else bias.to(dtype),
    )
    _PREPARED[convolution] = (key, weights)
    return weights


def _version(tensor: torch.Tensor) -> int | None:
    """How often ``tensor`` was changed in place; None for the tensors of a model built under
    ``torch.inference_mode``, which keep no count (changing those in place is not seen)."""
    return None if tensor.is_inference() else tensor._version


__all__ = ["applies", "available", "conv", "sequential"]
