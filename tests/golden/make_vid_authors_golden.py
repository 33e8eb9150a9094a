"""Writes tests/data/vid_authors_golden.npz: the VID loss of one layer pair, and its gradients,
as the authors' code builds it, computed by PyTorch for tests/test_vid_golden.py.

PyTorch is never a dependency of vid-jax; this script runs in a virtual environment of its own
(from the repository root):

    python3 -m venv .venv-torch
    .venv-torch/bin/pip install torch numpy    # or a local wheel
    .venv-torch/bin/python tests/golden/make_vid_authors_golden.py

The module below is written from the description of the authors' code (amzn/xfer,
var_info_distil; PyTorch) in ../shared/paper/README.md, not copied from it:

- mu: two 1x1 convolutions without bias and with no non-linearity between them,
  C_s -> C_t -> C_t, at PyTorch's default initialisation (the authors' weight initialisation
  loop runs before these branches are made);
- one variance parameter p per teacher channel, shape [C_t, 1, 1] (broadcast over the
  positions), initialised to softplus(5.0); the variance is softplus(p), without eps;
- loss of the layer: the mean over batch, channels and positions of
  0.5 * ((mu - t)^2 / var + log var) (no 0.5 log 2 pi). VID-I sums it over the layers.

The maps are NCHW, as in PyTorch: a student map [2, 3, 4, 4] (C_s = 3) and a teacher map
[2, 5, 4, 4] (C_t = 5), standard normal from a fixed seed. The loss is evaluated with p moved
from its initial value by a fixed offset per channel, so that the channels' variances differ
(a channel axis mixed up would show); the fixture keeps both p's. Inputs and weights are stored
in float32; the expected values are computed in float64 from exactly those float32 numbers.
"""
import os

import numpy as np
import torch
from torch import nn

SEED = 0
BATCH, C_S, C_T, SIZE = 2, 3, 5, 4
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                   "vid_authors_golden.npz")


class AuthorsVID(nn.Module):
    """One layer pair of the authors' VID: mean branch, variance parameter, Gaussian loss."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False),
            nn.Conv2d(teacher_channels, teacher_channels, kernel_size=1, bias=False))
        # softplus(5.0): the value that the authors' code starts its parameter at.
        start = nn.functional.softplus(torch.tensor(5.0))
        self.variance_param = nn.Parameter(torch.full((teacher_channels, 1, 1), float(start)))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        mean = self.mean(student)
        variance = nn.functional.softplus(self.variance_param).unsqueeze(0)  # [1, C_t, 1, 1]
        return torch.mean(0.5 * ((mean - teacher) ** 2 / variance + torch.log(variance)))


def main() -> None:
    torch.manual_seed(SEED)
    module = AuthorsVID(C_S, C_T)  # float32, PyTorch's default initialisation
    student = torch.randn(BATCH, C_S, SIZE, SIZE)
    teacher = torch.randn(BATCH, C_T, SIZE, SIZE)
    variance_param_init = module.variance_param.detach().clone()
    offset = torch.linspace(-2.0, 2.0, C_T).reshape(C_T, 1, 1)
    with torch.no_grad():
        module.variance_param.add_(offset)

    # The expected values in float64, from the float32 inputs and weights.
    module64 = AuthorsVID(C_S, C_T).double()
    module64.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    student64 = student.double().requires_grad_(True)
    loss = module64(student64, teacher.double())
    loss.backward()

    arrays = dict(
        student=student.numpy(), teacher=teacher.numpy(),
        conv1_weight=module.mean[0].weight.detach().numpy(),
        conv2_weight=module.mean[1].weight.detach().numpy(),
        variance_param_init=variance_param_init.numpy(),
        variance_param=module.variance_param.detach().numpy(),
        loss=loss.detach().numpy(),
        grad_student=student64.grad.numpy(),
        grad_conv1_weight=module64.mean[0].weight.grad.numpy(),
        grad_conv2_weight=module64.mean[1].weight.grad.numpy(),
        grad_variance_param=module64.variance_param.grad.numpy(),
        torch_version=np.array(torch.__version__))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"{OUT}: {os.path.getsize(OUT)} bytes, loss {loss.item():.8f} "
          f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
