"""Configuration: data directory, models directory, device choice, seeds."""

from pathlib import Path

import pytest
import torch

from pumamed import config


def test_data_dir_prefers_override_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATA_DIR_ENV, str(tmp_path / "env"))
    assert config.data_dir(tmp_path / "flag") == (tmp_path / "flag").resolve()
    assert config.data_source() == ((tmp_path / "env").resolve(), "environment")


def test_data_dir_default_is_local_data_then_the_demo_pack(monkeypatch, tmp_path):
    """Without PUMAMED_DATA_DIR: data/ of the working directory when it holds data (not data/
    beside the package, which is site-packages after pip install), else the shipped pack."""
    monkeypatch.delenv(config.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert config.data_source() == (config.DEMO_DATA_DIR, "demo"), "an empty data/ must not hide the pack"
    assert config.is_demo_data()
    (tmp_path / "data" / "epi" / "conapo_imm_2020").mkdir(parents=True)
    assert config.data_source() == ((tmp_path / "data").resolve(), "local")
    assert not config.is_demo_data()


def test_data_dir_without_pack_or_data_points_at_local_data(monkeypatch, tmp_path):
    monkeypatch.delenv(config.DATA_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config, "DEMO_DATA_DIR", tmp_path / "no_pack")
    assert config.data_source() == ((tmp_path / "data").resolve(), "none")


def test_models_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(config.MODELS_DIR_ENV, str(tmp_path))
    assert config.models_dir() == tmp_path.resolve()


def test_device_auto_is_cpu_without_accelerators(monkeypatch):
    monkeypatch.delenv(config.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(config, "_mps_available", lambda: False)
    assert config.select_device().type == "cpu"


def test_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv(config.DEVICE_ENV, raising=False)
    monkeypatch.setattr(config, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.select_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.select_device().type == "cuda"


def test_unavailable_explicit_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(config.DEVICE_ENV, "cuda:1")
    assert config.select_device().type == "cpu"
    assert config.select_device("cpu").type == "cpu"


def test_autocast_is_noop_on_cpu():
    with config.autocast(torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_seed_everything_is_reproducible():
    config.seed_everything(123)
    a = torch.rand(3)
    config.seed_everything(123)
    assert torch.equal(a, torch.rand(3))


def test_device_description_names_cpu():
    assert "CPU" in config.device_description(torch.device("cpu"))
