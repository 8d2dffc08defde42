"""Training: the loss falls on real images, resume is exact, DDP matches one process, the CLI
(train / transfer / evaluate) works end to end on real data. Tiny models, few steps."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from tests.conftest import TRAIN_SIZE, interrupted_fit, tiny_model
from pumamed.cli import main
from pumamed.errors import InputError
from pumamed.net import checkpoint as ckpt
from pumamed.net.data import ArrayData
from pumamed.net.train import RESUME_DIR, TrainConfig, fit

SIZE = TRAIN_SIZE
TINY_CLI = ["--size", str(SIZE), "--widths", "8,16,32", "--latent", "8", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _resume_weights(folder):
    tensors, _ = ckpt.read_resume_state(folder)
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def test_reconstruction_loss_decreases_on_real_images(real_images, tmp_path):
    model = tiny_model(real_images)
    x = real_images.images.float() / 255

    def mse():
        model.eval()
        with torch.no_grad():
            return float((model(x).recon - x).pow(2).mean())

    before = mse()
    cfg = TrainConfig(epochs=4, batch_size=8, lr=3e-3, augment=False, denoise=False, progress=False, kl_warmup=0.5)
    fit(model, real_images, real_images, cfg, tmp_path / "run", device="cpu", log=lambda *_: None)
    assert mse() < 0.6 * before


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_resume_is_exact(real_images, tmp_path, monkeypatch, augment_on):
    """An interrupted run resumed from its epoch checkpoint ends with the very same weights and
    optimizer state as an uninterrupted run (augmentation and denoising on, in DataLoader workers'
    v2 transforms or batched on the device)."""
    cfg = TrainConfig(epochs=2, batch_size=16, progress=False, keep_resume_state=True, augment_on=augment_on)
    quiet = dict(device="cpu", log=lambda *_: None)
    fit(tiny_model(real_images), real_images, real_images, cfg, tmp_path / "straight", **quiet)

    interrupted_fit(monkeypatch, lambda: fit(tiny_model(real_images), real_images, real_images, cfg,
                                             tmp_path / "resumed", **quiet))
    _, state = ckpt.read_resume_state(tmp_path / "resumed" / RESUME_DIR)
    assert state["info"]["epoch"] == 0  # only epoch 1 was saved
    fit(tiny_model(real_images, seed=123), real_images, real_images, cfg, tmp_path / "resumed", resume=True, **quiet)

    a, _ = ckpt.read_resume_state(tmp_path / "straight" / RESUME_DIR)  # weights and optimizer moments
    b, _ = ckpt.read_resume_state(tmp_path / "resumed" / RESUME_DIR)
    assert a.keys() == b.keys() and any(k.startswith("optimizer.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    history = json.loads((tmp_path / "resumed" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_CFG = dict(epochs=1, augment=False, denoise=False, sample_latent=False, shuffle=False, progress=False,
               keep_resume_state=True)


def _ddp_worker(rank: int, world: int, port: int, data: ArrayData, out: str):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        fit(tiny_model(data), data, data, TrainConfig(batch_size=8, **DDP_CFG), out, device="cpu",
            log=lambda *_: None)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_one(real_images, tmp_path):
    """2 gloo processes with 8 images each per step == 1 process with 16 per step."""
    import torch.multiprocessing as mp

    fit(tiny_model(real_images), real_images, real_images, TrainConfig(batch_size=16, **DDP_CFG),
        tmp_path / "single", device="cpu", log=lambda *_: None)
    mp.spawn(_ddp_worker, args=(2, _free_port(), real_images, str(tmp_path / "ddp")), nprocs=2, join=True)
    single = _resume_weights(tmp_path / "single" / RESUME_DIR)
    ddp = _resume_weights(tmp_path / "ddp" / RESUME_DIR)
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["training"]["world_size"] == 2
    init = tiny_model(real_images).state_dict()
    for key in single:
        # Query/key biases of attention get (analytically) zero gradient: softmax ignores a
        # per-query constant, so Adam turns float noise into +-lr steps there. Skip them.
        if key.endswith("qkv.bias"):
            continue
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=2e-5, msg=key)
    assert any(not torch.equal(single[k], init[k]) for k in single)  # trained, not two copies of the init
    models = []
    for state in (single, ddp):
        model = tiny_model(real_images).eval()
        model.load_state_dict(state)
        models.append(model)
    x = real_images.images.float() / 255
    with torch.no_grad():
        torch.testing.assert_close(models[1](x).recon, models[0](x).recon, rtol=0, atol=1e-4)
        torch.testing.assert_close(models[1].predict_proba(x), models[0].predict_proba(x), rtol=0, atol=1e-4)


def test_cli_pretrain_transfer_evaluate(imaging_root, tmp_path, capsys):
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    steps = ["--epochs", "1", "--max-steps-per-epoch", "2", "--batch-size", "16"]
    assert main(["train", "--dataset", "breastmnist,pneumoniamnist", *TINY_CLI, *steps, "--out", str(pre)]) == 0
    pre_cfg = json.loads((pre / "config.json").read_text())
    assert pre_cfg["model"]["aux_heads"] == {"mix": 4}  # one head over both label spaces
    assert len(pre_cfg["kl_per_dim"]) == 8
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), *TINY_CLI, *steps, "--out", str(fine)]) == 0
    metrics = json.loads((fine / "metrics.json").read_text())
    for variant in ("frozen_encoder_probe", "finetune"):
        for split in ("val", "test"):
            assert 0.0 <= metrics["transfer"][variant][split]["auc"]["macro"] <= 1.0
    assert not (fine / RESUME_DIR).exists()  # a finished run leaves no resume state behind
    assert (fine / "weight_maps.safetensors").is_file()
    card = (fine / "model_card.md").read_text()
    assert "CC BY 4.0" in card and "breastmnist" in card
    capsys.readouterr()

    assert main(["evaluate", "--model", str(fine), "--dataset", "breastmnist", "--json",
                 "--latency-repeats", "3", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("n", "auc", "accuracy", "balanced_accuracy", "reconstruction_error", "parameters", "flops",
                "cpu_latency_ms"):
        assert key in result, key
    assert set(result["auc"]) == {"macro", "per_class"}
    assert result["n"] == metrics["test"]["n"]
    assert result["auc"]["macro"] == pytest.approx(metrics["test"]["auc"]["macro"], abs=1e-6)
    assert result["parameters"] > 0 and result["flops"] > 0 and result["cpu_latency_ms"] > 0

    # user errors are one line and exit code 2
    assert main(["evaluate", "--model", str(fine), "--dataset", "pneumoniamnist", "--json"]) == 2
    assert "pneumoniamnist has classes" in capsys.readouterr().err
    # Another image size: the filters transfer, only the size-dependent latent projections start fresh.
    # The latent size is free there too, as its projections start fresh (the pretraining's is 8).
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), "--size", "64", "--widths", "8,16,32",
                 "--latent", "16", "--quiet", *steps, "--out", str(tmp_path / "at64")]) == 0
    assert "trained at 32 px, this run is at 64 px" in capsys.readouterr().out
    at64 = ckpt.load_model(tmp_path / "at64", device="cpu")
    assert at64.config["data"]["init_size"] == 32 and at64.model.config.image_size == 64
    assert at64.model.config.latent_dim == 16
    assert at64.model.config.attention_resolution == 16  # the same stage as 8 px wide at 32 px
    # --init fixes the architecture: options that contradict it are refused, not silently replaced.
    capsys.readouterr()
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), "--size", "32", "--latent", "16",
                 "--widths", "8,16,32", "--quiet", *steps, "--out", str(tmp_path / "contradicts")]) == 2
    err = capsys.readouterr().err
    assert "--latent 16 (pretrained: 8)" in err and "--widths" not in err
    assert not (tmp_path / "contradicts" / ckpt.WEIGHTS_FILE).exists()
    # Without the size allowance a mismatching encoder is refused with one clear message.
    from pumamed.errors import CheckpointError
    from pumamed.net.pipeline import transfer_weights

    with pytest.raises(CheckpointError, match="does not fit"):
        transfer_weights(at64.model, ckpt.load_model(pre, device="cpu").model)


def test_cli_resnet18_baseline(imaging_root, tmp_path, capsys):
    out = tmp_path / "rn"
    assert main(["train", "--dataset", "breastmnist", "--arch", "resnet18", "--size", str(SIZE), "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--batch-size", "8", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--model", str(out), "--dataset", "breastmnist", "--json", "--latency-repeats", "2",
                 "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "resnet18" and result["reconstruction_error"] is None
    assert result["parameters"] > 11_000_000


def test_cli_augments_on_the_device_when_asked(imaging_root, tmp_path, capsys):
    """--augment-on device trains (here on the CPU) and is recorded in config.json; a ResNet-18
    gets the geometry only (no corruption: it has no decoder)."""
    for arch in ("pumamednet", "resnet18"):
        out = tmp_path / arch
        assert main(["train", "--dataset", "breastmnist", "--arch", arch, *TINY_CLI[:2], "--epochs", "1",
                     "--max-steps-per-epoch", "2", "--batch-size", "8", "--quiet", "--no-test", "--augment-on",
                     "device", "--out", str(out)]) == 0
        capsys.readouterr()
        config = json.loads((out / "config.json").read_text())
        assert config["training"]["augment_on"] == "device" and config["training"]["augmented_on"] == "device"
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "breastmnist", "--augment-on", "gpu"])


def test_transfer_follows_or_overrides_the_pretrained_decoder(imaging_root, tmp_path, capsys):
    """--init keeps the pretrained model's decoder unless --decoder is given; a decoder of the
    other kind starts fresh while the encoder and weight net still transfer."""
    from pumamed.net.pipeline import transfer_weights

    pre = tmp_path / "pre"
    steps = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--no-test"]
    assert main(["train", "--dataset", "breastmnist", *TINY_CLI, *steps, "--decoder", "upsample", "--out", str(pre)]) == 0
    followed, switched = tmp_path / "followed", tmp_path / "switched"
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), *TINY_CLI, *steps, "--out", str(followed)]) == 0
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), *TINY_CLI, *steps,
                 "--decoder", "transposed", "--out", str(switched)]) == 0
    capsys.readouterr()
    assert ckpt.load_model(followed, device="cpu").model.config.decoder == "upsample"
    lean = ckpt.load_model(switched, device="cpu").model
    assert lean.config.decoder == "transposed"
    source = ckpt.load_model(pre, device="cpu").model
    copied = transfer_weights(lean, source)
    assert {k for k in lean.state_dict() if k.startswith(("encoder.", "weight_net."))} <= set(copied)
    assert "decoder.to_image.weight" not in copied  # a different layer (shape): not copied


def test_resume_keeps_the_best_epochs_validation_metrics(real_images, tmp_path):
    """When no resumed epoch beats the saved best one, metrics.json still reports its validation."""
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-3, progress=False, keep_resume_state=True, augment=False,
                      denoise=False, sample_latent=False)
    first = fit(tiny_model(real_images), real_images, real_images, cfg, tmp_path / "run", device="cpu",
                log=lambda *_: None)
    frozen = TrainConfig(**{**cfg.to_dict(), "epochs": 2, "lr": 0.0})  # nothing changes: no improvement
    resumed = fit(tiny_model(real_images), real_images, real_images, frozen, tmp_path / "run", device="cpu",
                  resume=True, log=lambda *_: None)
    assert resumed["best_epoch"] == 1 and len(resumed["history"]) == 2
    assert resumed["val"]["auc"]["macro"] == pytest.approx(first["val"]["auc"]["macro"])
    on_disk = json.loads((tmp_path / "run" / ckpt.METRICS_FILE).read_text())
    assert on_disk["val"] == resumed["val"]


def test_resume_reads_the_earlier_two_file_layout(real_images, tmp_path):
    """A resume folder written before the single-file state (weights in model.safetensors,
    optimizer in training_state.*) still resumes, and the next save replaces it with one file."""
    cfg = TrainConfig(epochs=1, batch_size=8, progress=False, keep_resume_state=True, augment=False, denoise=False)
    fit(tiny_model(real_images), real_images, real_images, cfg, tmp_path / "run", device="cpu", log=lambda *_: None)
    resume = tmp_path / "run" / RESUME_DIR
    tensors, payload = ckpt.read_resume_state(resume)
    model = tiny_model(real_images)
    ckpt.load_state_strict(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ckpt.load_resume_state(resume, model, optimizer)
    (resume / ckpt.RESUME_FILE).unlink()
    ckpt.save_checkpoint(resume, model, {}, {}, "")  # the earlier layout, written by hand
    ckpt.save_training_state(resume, optimizer, payload["info"])
    assert ckpt.has_resume_state(resume)
    cfg2 = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    metrics = fit(tiny_model(real_images, seed=9), real_images, real_images, cfg2, tmp_path / "run", device="cpu",
                  resume=True, log=lambda *_: None)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert (resume / ckpt.RESUME_FILE).is_file() and not (resume / ckpt.STATE_JSON_FILE).exists()
    assert not (resume / ckpt.WEIGHTS_FILE).exists()


def test_a_foreign_file_is_not_taken_for_a_resume_state(tmp_path):
    from pumamed.errors import CheckpointError

    ckpt.atomic_save_tensors(tmp_path / ckpt.RESUME_FILE, {"x": torch.zeros(2)}, metadata={"format": "other"})
    with pytest.raises(CheckpointError, match="not a resume state"):
        ckpt.read_resume_state(tmp_path)


def test_keep_head_continues_the_classifier_of_the_same_classes(imaging_root, tmp_path, capsys):
    """--init starts the classifier head afresh (a transfer to new classes needs it); --keep-head
    continues the init model's head on the same dataset, classes and size, and is refused elsewhere."""
    pre = tmp_path / "pre"
    steps = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--no-test", "--no-calibrate"]
    assert main(["train", "--dataset", "breastmnist", *TINY_CLI, *steps, "--out", str(pre)]) == 0
    frozen = [*steps, "--lr", "0"]  # nothing moves: the head is exactly what the run started from
    kept, fresh = tmp_path / "kept", tmp_path / "fresh"
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), *TINY_CLI, *frozen, "--keep-head",
                 "--out", str(kept)]) == 0
    assert main(["train", "--dataset", "breastmnist", "--init", str(pre), *TINY_CLI, *frozen, "--out", str(fresh)]) == 0
    capsys.readouterr()

    def head(folder):
        state = ckpt.load_model(folder, device="cpu").model.state_dict()
        return {k: v for k, v in state.items() if k.startswith("classifier")}

    source, continued, restarted = head(pre), head(kept), head(fresh)
    assert source and set(continued) == set(source)
    assert all(torch.equal(continued[k], source[k]) for k in source)
    assert not all(torch.equal(restarted[k], source[k]) for k in source)

    # Another dataset (other classes) or another image size: one clear message, exit code 2.
    assert main(["train", "--dataset", "pneumoniamnist", "--init", str(pre), *TINY_CLI, *steps, "--keep-head",
                 "--out", str(tmp_path / "other")]) == 2
    assert "--keep-head continues a run on the same dataset" in capsys.readouterr().err
    assert not (tmp_path / "other" / ckpt.WEIGHTS_FILE).exists()
    assert main(["train", "--dataset", "breastmnist", *TINY_CLI, *steps, "--keep-head",
                 "--out", str(tmp_path / "alone")]) == 2
    assert "give --init DIR" in capsys.readouterr().err


def test_output_gradient_floor_brings_saturated_pixels_back(real_images, tmp_path, capsys):
    """A decoder whose output sigmoid is saturated black everywhere (logits at -30: the breast
    models' bottom-right notch, everywhere) gets no gradient back through the plain sigmoid, so
    training cannot move it; with the default floor on the backward slope it can."""
    x = real_images.images.float() / 255

    def trained_logit_rise(floor: float) -> float:
        model = tiny_model(real_images)
        with torch.no_grad():
            model.decoder.to_image.bias.fill_(-30.0)
        seen = []
        model.decoder.to_image.register_forward_hook(lambda _m, _i, out: seen.append(float(out.detach().mean())))

        def mean_logit():
            model.eval()
            seen.clear()
            with torch.no_grad():
                model(x)
            return seen[-1]

        before = mean_logit()
        # Adam moves each weight by about lr per step once its gradient is well above Adam's eps
        # (1e-8): through the floor it is, through the plain sigmoid (slope 1e-13) it is not
        cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2, augment=False, denoise=False, progress=False,
                          output_gradient_floor=floor)
        fit(model, real_images, real_images, cfg, tmp_path / f"run{floor}", device="cpu", log=lambda *_: None)
        assert model.decoder.output_gradient_floor == floor
        reloaded = ckpt.load_model(tmp_path / f"run{floor}", device="cpu").model
        assert reloaded.decoder.output_gradient_floor == 0.0  # a training setting, never saved
        return mean_logit() - before

    assert TrainConfig().output_gradient_floor == 0.01
    assert abs(trained_logit_rise(0.0)) < 0.05  # stuck: nothing reaches the saturated pixels
    assert trained_logit_rise(0.01) > 0.5  # the loss pulls them back towards the images (0.95 here)

    with pytest.raises(InputError, match="output_gradient_floor"):
        TrainConfig(output_gradient_floor=0.3)
    assert main(["train", "--dataset", "breastmnist", *TINY_CLI, "--epochs", "1", "--output-gradient-floor", "-1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--output-gradient-floor must be in [0, 0.25)" in capsys.readouterr().err
    assert not (tmp_path / "bad" / ckpt.WEIGHTS_FILE).exists()


def test_the_loss_leaves_the_augmentation_fill_out(real_images):
    """Target pixels marked as fill (NaN, from ``mark_fill``) get no gradient from the
    reconstruction terms (weighted squared error and SSIM, whose windows must lie wholly on real
    pixels); with ``fill_mask`` off they are redrawn black, as before. Known answers on a real batch."""
    from pumamed.net.image_quality import ssim
    from pumamed.net.train import TrainingObjective

    x = real_images.images[:4].float() / 255
    target = x.clone()
    target[:, :, -8:, -8:] = float("nan")  # a filled bottom-right corner
    fill = torch.isnan(target)

    def logit_gradient(fill_mask: bool) -> torch.Tensor:
        model = tiny_model(real_images)
        model.train()
        cfg = TrainConfig(ssim_weight=0.1, cls_weight=0.0, sample_latent=False, fill_mask=fill_mask)
        objective = TrainingObjective(model, cfg, real_images)
        seen = []

        def keep(_module, _inputs, out):
            out.retain_grad()
            seen.append(out)

        model.decoder.to_image.register_forward_hook(keep)
        label = real_images.labels[:4]
        loss, stats = objective(x, target, label, torch.zeros(4, dtype=torch.long), 1.0, 0.0)
        assert torch.isfinite(loss)
        loss.backward()
        return seen[0].grad

    masked, redrawn = logit_gradient(True), logit_gradient(False)
    assert masked[fill].abs().max() == 0  # nothing asks the decoder to draw the fill
    assert masked[~fill].abs().mean() > 0
    assert redrawn[fill].abs().mean() > 0  # the old objective: draw it black

    # SSIM over whole windows of real pixels: a difference on the fill alone does not count
    other = x.clone()
    other[:, :, -8:, -8:] = 1.0 - other[:, :, -8:, -8:]
    valid = (~fill).float()
    assert torch.allclose(ssim(other, x, valid=valid), torch.ones(4))
    assert (ssim(other, x) < 0.999).all()
