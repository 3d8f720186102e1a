"""Where the executors run: a GPU asked for by name that CUDA cannot use stops the start, never a
silent CPU run; 'auto' falls back to the CPU, with a warning inside a container that was given GPUs."""

import logging
import re

import pytest
import torch

from s2i.runtime import resolve_device


@pytest.fixture
def no_usable_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)


@pytest.mark.parametrize('device', ['cuda', 'cuda:1'])
def test_a_gpu_asked_for_by_name_that_cuda_cannot_use_stops_the_start_and_says_why(no_usable_cuda, device):
    with pytest.raises(RuntimeError, match=re.escape(f"device {device!r} was asked for, but CUDA cannot be used here: ")) as refused:
        resolve_device(device)
    assert f'torch {torch.__version__}' in str(refused.value)  # what it was built for


def test_auto_runs_on_the_cpu_and_warns_only_in_a_container_given_gpus(no_usable_cuda, monkeypatch, caplog):
    monkeypatch.delenv('NVIDIA_VISIBLE_DEVICES', raising=False)
    with caplog.at_level(logging.WARNING):
        assert resolve_device('auto') == 'cpu'
    assert caplog.records == []
    monkeypatch.setenv('NVIDIA_VISIBLE_DEVICES', 'all')
    with caplog.at_level(logging.WARNING):
        assert resolve_device(None) == 'cpu'
    assert 'this container was given GPUs but runs on the CPU' in caplog.text


def test_the_cpu_is_used_as_given(no_usable_cuda):
    assert resolve_device('cpu') == 'cpu'
