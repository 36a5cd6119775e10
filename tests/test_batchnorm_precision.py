"""The head's BatchNorm: identical to torch's in fp32, fp32 statistics under 16-bit parameters and inputs."""
import copy

import torch
from torch import nn

from vitpose_scale.models.heads import Fp32BatchNorm2d


def _pair():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(6)
    ref.weight.data.uniform_(0.5, 1.5)
    ref.bias.data.uniform_(-0.5, 0.5)
    ours = Fp32BatchNorm2d(6)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def test_equals_torch_batchnorm_in_fp32_train_and_eval():
    ref, ours = _pair()
    for _ in range(3):
        x = torch.randn(4, 6, 5, 3) * 3 + 1
        assert torch.equal(ref(x), ours(x))
    assert torch.equal(ref.running_mean, ours.running_mean)
    assert torch.equal(ref.running_var, ours.running_var)
    assert ours.num_batches_tracked.item() == 3
    ref.eval(), ours.eval()
    x = torch.randn(2, 6, 5, 3)
    assert torch.equal(ref(x), ours(x))


def test_cumulative_average_when_momentum_is_none():
    ref, ours = _pair()
    ref.momentum = ours.momentum = None
    for _ in range(3):
        x = torch.randn(4, 6, 2, 2)
        ref(x), ours(x)
    assert torch.allclose(ref.running_mean, ours.running_mean, atol=0, rtol=1e-6)


def test_bf16_parameters_and_input_keep_fp32_statistics():
    ref, ours = _pair()
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)  # what a wrapper's module-wide cast does
    x = torch.randn(8, 6, 4, 4) * 2 + 3
    out = ours_bf16(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert ours_bf16.running_mean.dtype == torch.float32 and ours_bf16.running_var.dtype == torch.float32
    expected = ref(x)
    # bf16 weights and input (8 bits of mantissa); the statistics themselves are fp32-exact
    # up to the input's own rounding.
    assert torch.allclose(out.float(), expected, atol=0.1)
    x16 = x.to(torch.bfloat16).float()
    ref2 = copy.deepcopy(_pair()[0])
    ref2(x16)
    assert torch.allclose(ours_bf16.running_mean, ref2.running_mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(ours_bf16.running_var, ref2.running_var, rtol=1e-6, atol=1e-7)
    out.float().sum().backward()
    assert ours_bf16.weight.grad.dtype == torch.bfloat16
