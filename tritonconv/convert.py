"""Put compact layers into an existing model: swap its nn.Conv2d modules in place.

Converting a trained dense conv is a re-parameterisation, not an equivalence: the compact layer can only
approximate the conv it replaces (HetConv drops off-centre taps, LinearConv fits half its filters by
least squares, RotFlip projects onto rotated copies), so the converted model needs fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from tritonconv.accounting import count_macs, run_with_hooks
from tritonconv.ops.hetconv import HetConv2d

REPARAMETERISATION_NOTE = ("Converting a trained dense conv is a re-parameterisation, not an equivalence: "
                           "fine-tune the converted model before trusting its accuracy.")


def hetconv_from_conv2d(conv: nn.Conv2d, p: int = 4) -> HetConv2d:
    """``HetConv2d.from_dense(conv, p)`` under the ``from_conv2d`` name that ``convert`` calls."""
    return HetConv2d.from_dense(conv, p)


# Layers whose classmethod is not called from_conv2d.
_ADAPTERS = {HetConv2d: hetconv_from_conv2d}


@dataclass(frozen=True)
class LayerConversion:
    """One nn.Conv2d of the model: converted (``reason`` None) or skipped (``reason`` says why)."""

    name: str
    conv: str  # the original's repr
    params_before: int
    params_after: int | None = None
    macs_before: int | None = None  # with an input_shape only
    macs_after: int | None = None
    reason: str | None = None

    @property
    def converted(self) -> bool:
        return self.reason is None


@dataclass
class ConversionReport:
    """What ``convert`` did; ``str(report)`` is a printable table."""

    to: str
    layers: list[LayerConversion] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None  # whole model, with an input_shape only
    macs_after: int | None = None
    note: str = REPARAMETERISATION_NOTE

    @property
    def converted(self) -> list[LayerConversion]:
        return [layer for layer in self.layers if layer.converted]

    @property
    def skipped(self) -> list[LayerConversion]:
        return [layer for layer in self.layers if not layer.converted]

    def __str__(self) -> str:
        def number(value):
            return "-" if value is None else f"{value:,}"

        header = ("layer", "params before", "params after", "MACs before", "MACs after", "result")
        rows = [(layer.name, number(layer.params_before), number(layer.params_after), number(layer.macs_before),
                 number(layer.macs_after), f"-> {self.to}" if layer.converted else f"skipped: {layer.reason}")
                for layer in self.layers]
        rows.append(("model", number(self.params_before), number(self.params_after), number(self.macs_before),
                     number(self.macs_after), f"{len(self.converted)} converted, {len(self.skipped)} skipped"))
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                 + "  " + row[-1] for row in [header, *rows]]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(-1, "-" * len(lines[0]))
        return "\n".join(lines + [self.note])


def _parameter_count(module: nn.Module) -> int:
    return sum(t.numel() for t in module.parameters())


def _conv_input_shapes(model: nn.Module, convs: dict[int, nn.Conv2d], input_shape) -> dict[int, tuple]:
    """The input shape each conv sees in one forward pass (eval mode, cuDNN fallback, no grad)."""
    shapes: dict[int, tuple] = {}

    def record(module, inputs, output) -> None:  # a hook returning a value would replace the output
        shapes.setdefault(id(module), tuple(inputs[0].shape))

    run_with_hooks(model, input_shape, convs.values(), record)
    return shapes


def _dense_macs(conv: nn.Conv2d, input_shape: tuple) -> int:
    with torch.no_grad():
        out = torch.nn.functional.conv2d(torch.empty(input_shape, device="meta"),
                                         torch.empty(conv.weight.shape, device="meta"), None, conv.stride,
                                         conv.padding, conv.dilation, conv.groups)
    return out.numel() * conv.weight[0].numel()


def convert(model: nn.Module, to: type, filter_fn: Callable[[str, nn.Conv2d], bool] | None = None,
            input_shape: tuple[int, ...] | None = None, **layer_kwargs) -> ConversionReport:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` that ``filter_fn(name, conv)`` selects (all of
    them without one) by ``to.from_conv2d(conv, **layer_kwargs)``; everything else is kept.

    ``to`` is a layer class with a ``from_conv2d(conv, **kwargs)`` classmethod (LinearConv2d,
    RotFlipConv2d) or HetConv2d (through ``hetconv_from_conv2d``: pass ``p=``). A conv the layer cannot
    represent (its ``from_conv2d`` raises ValueError: padding, groups, channel counts...) is skipped and
    the report says why; so is a conv the filter does not select. A conv shared by several parents is
    converted once and the same new layer put in each place. New layers keep the conv's device, dtype
    and training mode.

    With ``input_shape`` the report has each layer's MACs and the model's (``count_macs``) before and
    after. The result is a re-parameterisation that needs fine-tuning (the report says so too).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    builder = (_ADAPTERS.get(to) or getattr(to, "from_conv2d", None)) if isinstance(to, type) else None
    if builder is None:
        raise TypeError(f"to={to!r} must be a layer class with a from_conv2d(conv, **kwargs) classmethod "
                        "(LinearConv2d, RotFlipConv2d) or HetConv2d")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable (name, conv) -> bool, got {type(filter_fn).__name__}")

    # Every place a conv sits: (parent, attribute, dotted name); a shared conv appears more than once.
    places: list[tuple[nn.Module, str, str]] = []

    def walk(parent: nn.Module, prefix: str) -> None:  # depth first, in module order, shared modules too
        for child_name, child in parent._modules.items():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, nn.Conv2d):
                places.append((parent, child_name, name))
            elif child is not None:
                walk(child, name)

    walk(model, "")
    convs = {id(parent._modules[attr]): parent._modules[attr] for parent, attr, _ in places}

    report = ConversionReport(to=to.__name__, params_before=_parameter_count(model))
    shapes = _conv_input_shapes(model, convs, input_shape) if input_shape is not None else {}
    if input_shape is not None:
        report.macs_before = count_macs(model, input_shape)
    if isinstance(model, nn.Conv2d):
        report.layers.append(LayerConversion("", repr(model), _parameter_count(model),
                                             reason="the model itself is a conv: convert its parent"))

    replacements: dict[int, nn.Module] = {}
    for parent, attr, name in places:
        conv = parent._modules[attr]
        if id(conv) in replacements:
            setattr(parent, attr, replacements[id(conv)])
            continue
        shape = shapes.get(id(conv))
        macs_before = _dense_macs(conv, shape) if shape is not None else None
        entry = dict(name=name, conv=repr(conv), params_before=_parameter_count(conv), macs_before=macs_before)
        if filter_fn is not None and not filter_fn(name, conv):
            report.layers.append(LayerConversion(**entry, reason="not selected by filter_fn"))
            continue
        try:
            new = builder(conv, **layer_kwargs)
        except ValueError as error:  # the layer cannot represent this conv; TypeErrors (bad kwargs) propagate
            report.layers.append(LayerConversion(**entry, reason=str(error)))
            continue
        new.train(conv.training)
        replacements[id(conv)] = new
        setattr(parent, attr, new)
        macs_after = new.cost(shape).macs if shape is not None and hasattr(new, "cost") else None
        report.layers.append(LayerConversion(**entry, params_after=_parameter_count(new), macs_after=macs_after))

    report.params_after = _parameter_count(model)
    if input_shape is not None:
        report.macs_after = count_macs(model, input_shape)
    return report
