"""The training step (pumamed.net.step): device-side statistics, a sync-free mix loss, optimiser
state with a tensor learning rate, and on a CUDA machine the CUDA-graph replay against the eager
step. The CUDA tests skip on machines without a GPU (CI has none); they ran on an H100."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from pumamed.net import PumaMedNet, PumaMedNetConfig
from pumamed.net import checkpoint as ckpt
from pumamed.net.data import ArrayData, load_arrays
from pumamed.net.losses import mix_aux_loss
from pumamed.net.step import TrainStep, make_capturable, make_optimizer, set_learning_rate
from pumamed.net.train import TrainConfig, TrainingObjective, fit
from tests.conftest import TINY_PUMAMEDNET

pytestmark = pytest.mark.usefixtures("one_torch_thread")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA-graph capture)")


def _mix_aux_reference(logits, labels, ids, slices):
    """The loss as first written: select each dataset's rows (this waits for the device)."""
    total = logits.new_zeros(())
    for k, (start, stop, task) in enumerate(slices):
        rows = ids == k
        if not bool(rows.any()):
            continue
        if task == "multilabel":
            total = total + F.binary_cross_entropy_with_logits(logits[rows, start:stop], labels[rows, start:stop],
                                                               reduction="sum") / (stop - start)
        else:
            total = total + F.cross_entropy(logits[rows, start:stop], labels[rows, start:stop].argmax(1), reduction="sum")
    return total / len(logits)


@pytest.mark.parametrize("present", [(0, 1, 2), (0, 2)])  # a dataset may be absent from a batch
def test_masked_mix_loss_equals_row_selection(present):
    gen = torch.Generator().manual_seed(0)
    slices = [(0, 4, "multiclass"), (4, 6, "binary"), (6, 11, "multilabel")]
    ids = torch.tensor([present[i % len(present)] for i in range(12)])
    labels = torch.zeros(12, 11)
    for i, k in enumerate(ids.tolist()):
        start, stop, task = slices[k]
        if task == "multilabel":
            labels[i, start:stop] = (torch.rand(stop - start, generator=gen) > 0.5).float()
        else:
            labels[i, start + int(torch.randint(stop - start, (1,), generator=gen))] = 1.0
    logits = torch.randn(12, 11, generator=gen, requires_grad=True)
    ours, ref = mix_aux_loss(logits, labels, ids, slices), _mix_aux_reference(logits, labels, ids, slices)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(_mix_aux_reference(logits, labels, ids, slices), logits)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)


@pytest.fixture(scope="module")
def step_images(imaging_root) -> ArrayData:
    """24 BreastMNIST training images at 32 px (this module's own set; conftest's ``real_images``
    holds 32)."""
    return load_arrays(["breastmnist"], "train", 32).subset(24, seed=0)


def _tiny(data: ArrayData, **overrides) -> PumaMedNet:
    torch.manual_seed(0)
    cfg = {**TINY_PUMAMEDNET, "image_size": data.size, "num_classes": len(data.class_names), "task": data.task,
           "class_names": list(data.class_names), **overrides}
    return PumaMedNet(PumaMedNetConfig(**cfg))


def test_device_side_statistics_equal_per_step_values(step_images):
    """The epoch means that ``TrainStep`` reads once equal what reading every step gives."""
    cfg = TrainConfig(beta=2.0, sample_latent=False)
    model = _tiny(step_images)
    twin = copy.deepcopy(model)
    x = step_images.images.float() / 255
    y = step_images.labels
    step = TrainStep(TrainingObjective(model, cfg, step_images), model, torch.optim.AdamW(model.parameters(), 1e-3),
                     "cpu", clip_norm=10.0)
    objective = TrainingObjective(twin, cfg, step_images)
    optimizer = torch.optim.AdamW(twin.parameters(), 1e-3)
    per_step: dict[str, list] = {}
    for i in range(0, 24, 8):
        xb, yb = x[i:i + 8], y[i:i + 8]
        step(xb, xb, yb, torch.zeros_like(yb), 2.0, 0.0)
        loss, stats = objective(xb, xb, yb, torch.zeros_like(yb), 2.0, 0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 10.0)
        optimizer.step()
        for key, value in {"loss": loss, **stats}.items():
            per_step.setdefault(key, []).append(value.detach())
    means = step.epoch_stats()
    assert set(means) == set(per_step) and "kl_dims" in means and "cls" in means
    for key, values in per_step.items():
        expected = torch.stack(values).mean(0)
        assert torch.allclose(torch.as_tensor(means[key]), expected, rtol=1e-5, atol=1e-6), key
    # the accumulators restart at zero for the next epoch
    xb, yb = x[:8], y[:8]
    step(xb, xb, yb, torch.zeros_like(yb), 2.0, 0.0)
    assert step.epoch_stats()["loss"] == pytest.approx(objective(xb, xb, yb, torch.zeros_like(yb), 2.0, 0.0)[0].item(),
                                                       rel=0.2)


def test_training_state_keeps_a_tensor_learning_rate(tmp_path):
    """A capturable optimiser keeps its learning rate in a tensor: the resume state stores it as a
    number, and ``make_capturable`` turns it back into a tensor after loading."""
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=torch.tensor(0.01), foreach=False)
    set_learning_rate(optimizer, 0.004)
    net(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    ckpt.save_training_state(tmp_path, optimizer, {"epoch": 0})
    fresh = make_optimizer(torch.nn.Linear(3, 2).parameters(), 0.1, 1e-4, "cpu", capturable=False)
    ckpt.load_training_state(tmp_path, fresh)
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.004)
    make_capturable(fresh, "cpu")
    group = fresh.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == pytest.approx(0.004) and group["capturable"]
    set_learning_rate(fresh, 0.002)
    assert float(group["lr"]) == pytest.approx(0.002)


# --- CUDA ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def busi_on_gpu():
    """Real BUSI images at 64 px from the data directory, or from an array export
    ($PUMAMED_ARRAY_CACHE) on a GPU machine without the raw data."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    try:
        return load_arrays(["busi"], "train", 64)
    except Exception as exc:  # noqa: BLE001 - any missing data means skip here
        pytest.skip(f"BUSI not available: {exc}")


@cuda
def test_graph_replay_matches_the_eager_step(busi_on_gpu):
    """Same weights, same batches (the last one partial, so it runs eagerly): the graph-replayed
    step ends where the eager one does, up to bf16 rounding."""
    data = busi_on_gpu.subset(72, seed=0)
    device = torch.device("cuda")
    cfg = TrainConfig(beta=1.0, sample_latent=False)  # deterministic: no sampling, no dropout (linear head)
    eager_model = _tiny(data).to(device)
    graph_model = copy.deepcopy(eager_model)
    start = {k: v.detach().float().clone() for k, v in eager_model.state_dict().items()}
    x = (data.images.float() / 255).to(device)
    y = data.labels.to(device)
    steps = {}
    for name, model, graph in (("eager", eager_model, False), ("graph", graph_model, True)):
        optimizer = make_optimizer(model.parameters(), 1e-3, 1e-4, device, capturable=graph)
        step = TrainStep(TrainingObjective(model, cfg, data), model, optimizer, device, clip_norm=10.0, graph=graph)
        for i, start in enumerate(list(range(0, 64, 8)) + [64]):
            set_learning_rate(optimizer, 1e-3 * (1 + i) / 9)
            xb, yb = x[start:start + 8], y[start:start + 8]
            if start == 64:
                xb, yb = xb[:5], yb[:5]
            step(xb, xb, yb, torch.zeros_like(yb), 0.5, 0.0)
        steps[name] = (step, step.epoch_stats())
    assert steps["graph"][0].graph_active and not steps["eager"][0].graph_active
    # AdamW normalises each element's step, so elements with near-zero gradients can move either
    # way under bf16 rounding: compare the whole update, not element by element. A graph replaying
    # stale inputs or a frozen learning rate differs by the size of the update itself.
    moved = torch.cat([(a.float() - start[k]).flatten() for k, a in eager_model.state_dict().items()])
    apart = torch.cat([(a.float() - b.float()).flatten()
                       for a, b in zip(eager_model.state_dict().values(), graph_model.state_dict().values())])
    assert float(apart.norm()) < 0.1 * float(moved.norm()), (float(apart.norm()), float(moved.norm()))
    assert steps["graph"][1]["loss"] == pytest.approx(steps["eager"][1]["loss"], rel=2e-2)


@cuda
def test_fit_with_cuda_graphs_trains_resumes_and_records_it(busi_on_gpu, tmp_path):
    data = busi_on_gpu.subset(96, seed=0)
    model = _tiny(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, keep_resume_state=True, cuda_graphs=True)
    fit(model, data, data, cfg, tmp_path / "run", device="cuda", log=lambda *_: None)
    cfg2 = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    metrics = fit(_tiny(data), data, data, cfg2, tmp_path / "run", device="cuda", resume=True, log=lambda *_: None)
    history = metrics["history"]
    assert len(history) == 2 and all(h.get("cuda_graph") for h in history)
    assert all(math.isfinite(h["loss"]) for h in history) and len(history[-1]["kl_per_dim"]) == model.config.latent_dim
    after = ckpt.read_tensors(tmp_path / "run" / ckpt.WEIGHTS_FILE)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@cuda
def test_mix_pretraining_captures_with_auxiliary_heads(busi_on_gpu, tmp_path):
    """Pretraining on a mix adds the masked auxiliary loss; the whole step still captures."""
    import json

    from pumamed.cli import main

    code = main(["train", "--dataset", "busi,mini_mias", "--size", "64", "--widths", "8,16,32", "--latent", "8",
                 "--epochs", "1", "--max-steps-per-epoch", "6", "--batch-size", "16", "--workers", "0", "--quiet",
                 "--no-test", "--out", str(tmp_path / "mix")])
    assert code == 0
    history = json.loads((tmp_path / "mix" / ckpt.METRICS_FILE).read_text())["history"]
    assert history[0].get("cuda_graph") and math.isfinite(history[0]["aux"])
