"""Train VGG-16 with HetConv (``tritonconv.models.vgg16_cifar(p)``) on synthetic CIFAR-10-shaped data.

No download: each class is a fixed random 3 x 32 x 32 pattern and a sample is its class pattern plus
Gaussian noise, so the loss has something to learn and goes down within a few hundred SGD steps.

    python examples/train_vgg16_hetconv.py --steps 300 --device cuda --compile
    TRITON_INTERPRET=1 python examples/train_vgg16_hetconv.py --steps 10 --width 0.0625 --batch-size 8

``--width`` below 1 scales every layer's channels (the tests use a tiny width to run through Triton's
interpreter); ``tritonconv.models.vgg16_cifar`` has no width option, so the scaled network is built
here from HetConv2d with the same structure. ``--width 1`` is exactly ``vgg16_cifar(p)``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import tritonconv
from tritonconv.zoo import VGG16_CONFIG

NUM_CLASSES = 10
RESOLUTION = 32  # five 2x2 max-pools take 32 x 32 down to 1 x 1


def vgg16(p: int, width: float, num_classes: int = NUM_CLASSES) -> nn.Sequential:
    """``vgg16_cifar(p)`` with every channel count multiplied by ``width`` (each must stay divisible by p)."""
    if width == 1:
        return tritonconv.models.vgg16_cifar(p=p, num_classes=num_classes)
    def scale(channels):
        return max(p, int(round(channels * width)))

    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = scale(item)
        conv = (nn.Conv2d(in_channels, out, 3, padding=1, bias=True) if in_channels == 3
                else tritonconv.HetConv2d(in_channels, out, 3, p=p, bias=False))
        layers += [conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        in_channels = out
    hidden = scale(512)
    layers += [nn.Flatten(), nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
               nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


class SyntheticCIFAR:
    """Batches of ``pattern[label] + noise * randn``: class-dependent images, no files."""

    def __init__(self, device: torch.device, noise: float = 1.0, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(NUM_CLASSES, 3, RESOLUTION, RESOLUTION, generator=self.generator)
        self.noise, self.device = noise, device

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, NUM_CLASSES, (size,), generator=self.generator)
        images = self.patterns[labels] + self.noise * torch.randn(size, 3, RESOLUTION, RESOLUTION,
                                                                  generator=self.generator)
        return images.to(self.device), labels.to(self.device)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--p", type=int, default=4, help="HetConv part: 1/p of each filter's kernels are k x k")
    parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1: vgg16_cifar itself)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the model (inductor on CUDA, aot_eager on the CPU)")
    parser.add_argument("--backend", choices=("auto", "triton", "fallback"), default="auto",
                        help="tritonconv.use_backend for every HetConv call (auto: the tuning cache decides)")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2:  # BatchNorm1d needs 2 samples in training
        parser.error(f"--steps={args.steps} must be >= 1 and --batch-size={args.batch_size} >= 2")
    if not 0 < args.width <= 1:
        parser.error(f"--width={args.width} must be in (0, 1]")
    return args


def train(args: argparse.Namespace) -> list[float]:
    """Run ``args.steps`` SGD steps; returns the loss of every step."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = vgg16(args.p, args.width).to(device)
    step_model = model
    if args.compile:
        # dynamic=False: the batch is fixed, and HetConv's shape function needs concrete sizes.
        step_model = torch.compile(model, backend="inductor" if device.type == "cuda" else "aot_eager", dynamic=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    data = SyntheticCIFAR(device, seed=args.seed)
    parameters = sum(t.numel() for t in model.parameters())
    print(f"VGG-16 HetConv p={args.p} width={args.width}: {parameters:,} parameters, "
          f"{tritonconv.count_macs(model, (1, 3, RESOLUTION, RESOLUTION)):,} MACs per image, device {device}, "
          f"compile={args.compile}")
    losses = []
    start = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        images, labels = data.batch(args.batch_size)
        loss = nn.functional.cross_entropy(step_model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % args.log_every == 0 or step in (1, args.steps):
            recent = losses[-args.log_every:]
            print(f"step {step:5d}  loss {losses[-1]:.4f}  (mean of last {len(recent)}: "
                  f"{sum(recent) / len(recent):.4f})  {time.perf_counter() - start:.1f}s")
    return losses


def main(argv=None) -> list[float]:
    args = parse_args(argv)
    with tritonconv.use_backend(args.backend):
        return train(args)


if __name__ == "__main__":
    main()
