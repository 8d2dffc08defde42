"""``python -m pumamed bench augment``: images/s of the denoising augmentation, batched on the
device (:class:`pumamed.net.augment.BatchAugment`, ``train --augment-on device``) against the
torchvision v2 transforms drawn image by image in DataLoader workers (``--augment-on loader``).

Both start from the same decoded uint8 images in memory and end with a ``(source, target)``
float batch on the training device, so the figure is what the training loop waits for. The
baseline runs with each ``--workers`` setting and the ratio is taken against the faster one.
Rounds alternate the contenders and medians are reported.
"""

from __future__ import annotations

import json
import statistics
import time


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default="brain_tumor_mri", help="real images to augment")
    parser.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR)")
    parser.add_argument("--size", type=int, default=64, help="image size (default 64)")
    parser.add_argument("--images", type=int, default=2048, help="images per timed epoch (default 2048)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="*", default=None,
                        help="DataLoader workers tried for the baseline (default: 0 2 on CPU, 0 8 on GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: automatic)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def run(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from pumamed.config import device_description, select_device
    from pumamed.net.augment import BatchAugment
    from pumamed.net.data import DenoisingDataset, load_arrays
    from pumamed.net.train import device_batches, resident_images

    device = select_device(args.device)
    data = load_arrays([args.dataset], "train", args.size, data_dir=args.data_dir)
    data = data.subset(min(args.images, len(data)), seed=0)
    workers = args.workers if args.workers is not None else ([0, 8] if device.type == "cuda" else [0, 2])
    dataset = DenoisingDataset(data)

    def loader_epoch(num_workers: int) -> float:
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        start = time.perf_counter()
        n = 0
        for source, target, _, _ in loader:
            source, target = source.to(device, non_blocking=True), target.to(device, non_blocking=True)
            n += len(source)
        _sync(device)
        return n / (time.perf_counter() - start)

    augment = BatchAugment(device)
    images = resident_images(data.images, device)

    def device_epoch() -> float:
        order = torch.randperm(len(data)).tolist()
        batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        _sync(device)
        start = time.perf_counter()
        n = 0
        for source, _, _, _ in device_batches(data, images, batches, augment):
            n += len(source)
        _sync(device)
        return n / (time.perf_counter() - start)

    contenders = {f"v2 per image, DataLoader workers={w}": (lambda w=w: loader_epoch(w)) for w in workers}
    ours = "BatchAugment on the device"
    contenders[ours] = device_epoch
    device_epoch()  # warm-up (kernels, allocator)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(1, args.rounds)):
        for name, epoch in contenders.items():
            rates[name].append(epoch())
    medians = {name: statistics.median(r) for name, r in rates.items()}
    baseline = max((n for n in medians if n != ours), key=medians.get)
    result = {
        "device": device_description(device), "dataset": args.dataset, "size": args.size,
        "images": len(data), "batch_size": args.batch_size, "rounds": args.rounds,
        "rows": [{"contender": n, "images_per_s": round(medians[n], 1), "rounds": [round(r, 1) for r in rates[n]]}
                 for n in contenders],
        "baseline": baseline,
        "ratio_vs_baseline": round(medians[ours] / medians[baseline], 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"denoising augmentation on {result['device']}, {args.dataset} {args.size}px, batch {args.batch_size}")
        for row in result["rows"]:
            print(f"  {row['contender']:40} {row['images_per_s']:10.1f} img/s")
        print(f"{ours} / {baseline}: {result['ratio_vs_baseline']:.2f}x")
    return 0
