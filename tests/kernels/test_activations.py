"""The activations the kernels apply after a layer are the model's, by name and bit for bit.

The kernels may not import the model (babybitnet.gpt), so the names are written down three times:
gpt.ACTIVATIONS (the model), triton_common.EPILOGUE_ACTS (the GPU kernels' ACT codes and the torch
epilogue) and kernels.cpu.CPU_ACTS (the C++ layer's). These tests keep the three in step.
"""

from __future__ import annotations

import pytest
import torch

from babybitnet.gpt import ACTIVATIONS
from babybitnet.kernels.cpu import CPU_ACTS
from babybitnet.kernels.triton_common import EPILOGUE_ACTS, epilogue, use_pdl


def test_every_kernel_activation_is_a_model_activation():
    assert set(EPILOGUE_ACTS) - {""} <= set(ACTIVATIONS), "an epilogue activation the model does not have"
    assert set(CPU_ACTS) <= set(EPILOGUE_ACTS), "a C++ activation the GPU epilogue does not have"
    assert EPILOGUE_ACTS[""] == 0 and CPU_ACTS[""] == 0, "code 0 must mean no activation"
    assert len(set(EPILOGUE_ACTS.values())) == len(EPILOGUE_ACTS) and len(set(CPU_ACTS.values())) == len(CPU_ACTS)


@pytest.mark.parametrize("name", sorted(set(EPILOGUE_ACTS) - {""}))
def test_the_epilogue_is_the_models_activation_bit_for_bit(name):
    y = torch.randn(7, 33) * 3
    r = torch.randn(7, 33)
    assert torch.equal(epilogue(y, name), ACTIVATIONS[name](y))
    assert torch.equal(epilogue(y, name, r), r + ACTIVATIONS[name](y))


def test_an_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match="activation must be one of"):
        epilogue(torch.zeros(2, 2), "swish")


def test_programmatic_dependent_launch_is_for_gpus_and_can_be_turned_off(monkeypatch):
    assert not use_pdl(torch.device("cpu"))
    monkeypatch.setenv("BABYBITNET_PDL", "0")
    assert not use_pdl(torch.device("cuda"))  # the environment is read first: no GPU needed to say no
