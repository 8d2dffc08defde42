"""``python -m pumamed bench train``: training throughput of PumaMedNet against peer VAEs.

Peers, on the same real images, batch size, optimiser and precision, with a comparable parameter
count: MONAI's ``VarAutoEncoder`` and Pythae's ``BetaVAE`` (given the same convolutional
encoder/decoder as the MONAI peer, since Pythae's defaults are MLPs or CelebA-sized RGB nets).
Peers are optional (``pip install -r requirements-bench.txt``); a missing one is reported, not
fatal. Data loading is excluded for every contender (pre-made batches on the device) so the
figure is the model's training step; PumaMedNet's full step includes its weight-map network, and
a separate row adds its denoising augmentation drawn on the device (``train --augment-on device``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time

GRAPH_ROW = "PumaMedNet (CUDA graph)"


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default="brain_tumor_mri", help="real images to train on")
    parser.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR)")
    parser.add_argument("--size", type=int, default=64, help="image size (64 or 128)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed optimisation steps per contender and round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds; each times every contender in turn, and the median round is reported "
                             "(interleaving keeps a shared or throttling machine from favouring one contender)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    parser.add_argument("--peers", default="monai,pythae", help="comma-separated peers to include")
    parser.add_argument("--compile", action="store_true", help="also time PumaMedNet under torch.compile")
    parser.add_argument("--graphs", choices=["auto", "on", "off"], default="auto",
                        help="also time every contender replayed from a CUDA graph (auto: on CUDA devices)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                        help="memory format for every contender (auto: contiguous, as train uses by default; on an "
                             "H100 both gave the same CUDA-graph figures)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _peer_channels(target_params: int, size: int, latent: int):
    """MONAI channel widths whose parameter count is closest to ``target_params``."""
    from monai.networks.nets import VarAutoEncoder

    best = None
    for base in range(8, 68, 4):
        channels = (base, base * 2, base * 4, base * 8)
        net = VarAutoEncoder(spatial_dims=2, in_shape=(1, size, size), out_channels=1, latent_size=latent,
                             channels=channels, strides=(2, 2, 2, 2), num_res_units=0)
        n = sum(p.numel() for p in net.parameters())
        if best is None or abs(n - target_params) < abs(best[1] - target_params):
            best = (channels, n)
    return best[0]


def _monai_step_factory(size, latent, channels, beta):
    import torch
    from monai.networks.nets import VarAutoEncoder

    net = VarAutoEncoder(spatial_dims=2, in_shape=(1, size, size), out_channels=1, latent_size=latent,
                         channels=channels, strides=(2, 2, 2, 2), num_res_units=0)

    def loss_fn(x):
        recon, mu, logvar, _ = net(x)
        rec = torch.nn.functional.mse_loss(torch.sigmoid(recon.float()), x, reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar.float() - mu.float().pow(2) - logvar.float().exp()) / len(x)
        return rec + beta * kl

    return net, loss_fn


def _pythae_step_factory(size, latent, channels, beta):
    import torch
    from monai.networks.nets import VarAutoEncoder
    from pythae.models import BetaVAE, BetaVAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    # Same convolutional body as the MONAI peer, wrapped in Pythae's encoder/decoder interfaces.
    body = VarAutoEncoder(spatial_dims=2, in_shape=(1, size, size), out_channels=1, latent_size=latent,
                          channels=channels, strides=(2, 2, 2, 2), num_res_units=0)

    class Encoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.body = body

        def forward(self, x):
            mu, logvar = self.body.encode_forward(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.body = body

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body.decode_forward(z, use_sigmoid=False)))

    config = BetaVAEConfig(input_dim=(1, size, size), latent_dim=latent, beta=beta, reconstruction_loss="mse")
    net = BetaVAE(config, encoder=Encoder(), decoder=Decoder())

    def loss_fn(x):
        return net({"data": x}).loss

    return net, loss_fn


def _pumamed_step_factory(size, latent, beta, with_augmentation: bool, compiled: bool = False):
    """PumaMedNet and its training objective, stepped by the same :class:`TrainStep` as ``train``
    (gradient clipping and the device-side statistics included)."""
    import torch

    from pumamed.net import PumaMedNet, PumaMedNetConfig
    from pumamed.net.augment import BatchAugment
    from pumamed.net.data import ArrayData
    from pumamed.net.train import TrainConfig, TrainingObjective

    net = PumaMedNet(PumaMedNetConfig(image_size=size, latent_dim=latent))
    empty = ArrayData(images=torch.zeros(1, 1, size, size, dtype=torch.uint8), labels=None)

    def make_step(model, optimizer, device, graph):
        from pumamed.net.step import TrainStep, clip_norm_for

        objective = TrainingObjective(model, TrainConfig(beta=beta), empty)
        if compiled:
            objective = torch.compile(objective)
        step = TrainStep(objective, model, optimizer, device, clip_norm=clip_norm_for(size), graph=graph)
        augment = BatchAugment(device) if with_augmentation else None
        if augment is not None:
            augment.reseed(0)

        def run_step(x):
            source, target = augment(x) if augment is not None else (x, x)
            label = torch.zeros(len(x), dtype=torch.long, device=x.device)
            step(source, target, label, label, beta, 0.0)
            run_step.captured = step.graph_active

        return run_step

    return net, make_step


def _plain_step_factory(loss_fn):
    """A peer's step as its library would run it: forward, backward, AdamW (optionally replayed
    from a CUDA graph, to show what the same capture does for the peer)."""

    def make_step(model, optimizer, device, graph):
        from pumamed.config import autocast
        from pumamed.net.step import CudaGraphStep

        def body(x):
            with autocast(device, cache_enabled=not graph):
                loss = loss_fn(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        if not graph:
            return body
        graphed = CudaGraphStep(body, before_capture=lambda: optimizer.zero_grad(set_to_none=True))

        def run_step(x):
            graphed(x)
            run_step.captured = graphed.active

        return run_step

    return make_step


class _Contender:
    """One model + optimiser + step, prepared once; ``time(steps)`` returns images per second."""

    def __init__(self, net, make_step, batches, device, channels_last, graph=False):
        import torch

        from pumamed.net.step import make_optimizer

        self.net = net.to(device)
        self.batches = batches
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
            self.batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
        self.device = device
        self.graph = graph
        self.optimizer = make_optimizer(self.net.parameters(), 1e-3, 1e-4, device, capturable=graph)
        self.net.train()
        self.run_step = make_step(self.net, self.optimizer, device, graph)
        self.cursor = 0

    def step(self) -> int:
        x = self.batches[self.cursor % len(self.batches)]
        self.cursor += 1
        self.run_step(x)
        return len(x)

    def _sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def time(self, steps: int) -> float:
        self._sync()
        start = time.perf_counter()
        images = sum(self.step() for _ in range(steps))
        self._sync()
        return images / (time.perf_counter() - start)


def run(args) -> int:
    from pumamed.config import device_description, select_device, seed_everything
    from pumamed.net.data import load_arrays

    seed_everything(0)
    device = select_device(args.device)
    n_needed = args.batch_size * 4
    data = load_arrays([args.dataset], "train", args.size, data_dir=args.data_dir)
    images = data.images[:n_needed].float().div(255.0)
    batches = [images[i:i + args.batch_size].to(device) for i in range(0, len(images), args.batch_size)]
    batches = [b for b in batches if len(b) == args.batch_size] or batches[:1]
    beta = 4.0
    on_cuda = device.type == "cuda"
    channels_last = args.channels_last == "on"
    graphs = on_cuda and args.graphs != "off"
    if args.graphs == "on" and not on_cuda:
        print("note: CUDA graphs need a CUDA device; timing eager steps only", file=sys.stderr)

    contenders: list[tuple[str, str, _Contender | None, int | None]] = []

    def add(name, factory, note="", graph=False):
        try:
            net, make_step = factory()
        except ImportError as exc:
            contenders.append((name, f"not installed ({exc.name})", None, None))
            return
        params = sum(p.numel() for p in net.parameters())
        contenders.append((name, note, _Contender(net, make_step, batches, device, channels_last, graph=graph), params))

    def peer(factory):
        def build():
            net, loss_fn = factory()
            return net, _plain_step_factory(loss_fn)
        return build

    from pumamed.net import PumaMedNet, PumaMedNetConfig

    ours_params = sum(p.numel() for p in PumaMedNet(PumaMedNetConfig(image_size=args.size, latent_dim=args.latent)).parameters())
    ours = lambda **kw: (lambda: _pumamed_step_factory(args.size, args.latent, beta, **kw))  # noqa: E731
    add("PumaMedNet", ours(with_augmentation=False), "full training step: objective with weight-map net and attention, clipping")
    if graphs:
        add(GRAPH_ROW, ours(with_augmentation=False), "the same step replayed from a CUDA graph (train --cuda-graphs)", graph=True)
    add("PumaMedNet + on-device augmentation", ours(with_augmentation=True),
        "geometry and corruption drawn per batch on the device (train --augment-on device)")
    peers = [p.strip().lower() for p in args.peers.split(",") if p.strip()]
    try:
        channels = _peer_channels(ours_params, args.size, args.latent)
    except ImportError:
        channels = None
    for key, name, factory, note in (
            ("monai", "MONAI VarAutoEncoder", _monai_step_factory, f"channels={channels}"),
            ("pythae", "Pythae BetaVAE", _pythae_step_factory, f"same conv body as MONAI, channels={channels}")):
        if key in peers:
            build = peer(lambda f=factory: f(args.size, args.latent, channels, beta))
            add(name, build, note)
            if graphs:
                add(f"{name} (CUDA graph)", build, "the same capture applied to the peer", graph=True)
    if args.compile:
        add("PumaMedNet (torch.compile)", ours(with_augmentation=False, compiled=True), "compile time excluded (warm-up steps)")

    for _, _, contender, _ in contenders:
        if contender is not None:
            for _ in range(args.warmup):
                contender.step()
    rates: dict[int, list[float]] = {i: [] for i, c in enumerate(contenders) if c[2] is not None}
    for _ in range(max(1, args.rounds)):
        for i in rates:
            rates[i].append(contenders[i][2].time(args.steps))
    rows = []
    for i, (name, note, contender, params) in enumerate(contenders):
        if contender is None:
            rows.append({"contender": name, "images_per_s": None, "params": None, "note": note})
            continue
        if contender.graph and not getattr(contender.run_step, "captured", False):
            note += "; capture FAILED, so this row ran eagerly"
        rows.append({"contender": name, "images_per_s": round(statistics.median(rates[i]), 1), "params": params,
                     "rounds": [round(r, 1) for r in rates[i]], "note": note})

    def rate(name):
        return next((r["images_per_s"] for r in rows if r["contender"] == name), None)

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    eager_peers = [r["images_per_s"] for r in rows if r["images_per_s"] and not r["contender"].startswith("PumaMedNet")
                   and "(CUDA graph)" not in r["contender"]]
    graph_peers = [r["images_per_s"] for r in rows if r["images_per_s"] and not r["contender"].startswith("PumaMedNet")
                   and "(CUDA graph)" in r["contender"]]
    # "ours" is the step `train` runs on this device: graph-replayed on CUDA, eager elsewhere
    ours_name = GRAPH_ROW if rate(GRAPH_ROW) else "PumaMedNet"
    best_peer = max(eager_peers) if eager_peers else None
    result = {
        "device": device_description(device),
        "dataset": args.dataset, "size": args.size, "batch_size": args.batch_size,
        "latent": args.latent, "steps": args.steps, "rounds": args.rounds,
        "precision": "bf16/fp16 autocast" if on_cuda else "fp32",
        "memory_format": "channels_last" if channels_last else "contiguous",
        "rows": rows,
        "ours": ours_name,
        "baseline": "best peer as its library runs it" if best_peer else None,
        "ratio_vs_best_peer": ratio(rate(ours_name), best_peer),
        "ratio_eager_vs_best_peer": ratio(rate("PumaMedNet"), best_peer),
        "ratio_vs_best_peer_same_capture": ratio(rate(GRAPH_ROW), max(graph_peers) if graph_peers else None),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"training throughput on {result['device']}, {args.dataset} {args.size}px, batch {args.batch_size}")
        for r in rows:
            ips = "n/a" if r["images_per_s"] is None else f"{r['images_per_s']:9.1f} img/s"
            params = "" if r["params"] is None else f"{r['params'] / 1e6:6.2f} M params"
            print(f"  {r['contender']:34} {ips:>16}  {params}  {r['note']}")
        if result["ratio_vs_best_peer"] is not None:
            print(f"{ours_name} / best peer: {result['ratio_vs_best_peer']:.2f}x")
        if result["ratio_vs_best_peer_same_capture"] is not None:
            print(f"both replayed from CUDA graphs: {result['ratio_vs_best_peer_same_capture']:.2f}x")
    return 0
