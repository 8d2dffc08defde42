"""``python -m pumamed bench loading``: images/s of our loader vs ``torchvision.datasets.ImageFolder``.

Both produce the same sample: a float32 1 x S x S tensor in [0, 1] (grey, resized to S) and the
class index, through a ``DataLoader`` (batch 64, no shuffle). The baseline uses torchvision's
default PIL loader with the v2 transforms ``Grayscale -> Resize((S, S)) -> ToImage ->
ToDtype(float32, scale=True)``, with ``num_workers`` 0 and 2 (the two CPU cores); the ratio is
taken against the *faster* baseline. Ours is timed cold (first epoch: decode + resize into the
in-memory cache, emptied before each round) and warm (the next epoch). Files are read once
beforehand so the OS page cache is warm for everyone; rounds alternate the loaders and medians
are reported, so background load affects all of them alike.
"""

from __future__ import annotations

import json
import time


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default="brain_tumor_mri",
                        help="a class-folder dataset: brain_tumor_mri, busi, or a folder path (default brain_tumor_mri)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--limit", type=int, default=0, help="use only this many images (0 = all)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds (each: one baseline epoch per setting, our cold + cached epoch)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline-workers", type=int, nargs="*", default=[0, 2],
                        help="DataLoader num_workers values tried for the baseline (default 0 2)")
    parser.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _epoch(loader) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for images, _ in loader:
        n += images.shape[0]
    return time.perf_counter() - start, n


def run(args) -> int:
    from pathlib import Path

    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets
    from torchvision.transforms import v2

    from pumamed.errors import InputError
    from pumamed.imaging import DATASETS, clear_image_cache, load_dataset
    from pumamed.imaging.dataset import ImagingDataset

    torch.set_num_threads(1)
    name = args.dataset
    if name in DATASETS and DATASETS[name].reader != "folder":
        raise InputError(f"{name} is not a class-folder dataset; ImageFolder cannot read it "
                         "(use brain_tumor_mri, busi or a folder)")
    full = load_dataset(name, split="all", size=args.size, data_dir=args.data_dir)
    paths = list(full.metadata["path"])
    # ImageFolder needs the folder whose children are the classes.
    class_roots = sorted({str(Path(p).parent.parent) for p in paths})
    if len(class_roots) != 1:
        raise InputError(f"{name}: images sit in several split folders ({len(class_roots)}); "
                         "point --dataset at one of them")
    size = args.size
    baseline_transform = v2.Compose([v2.Grayscale(num_output_channels=1), v2.Resize((size, size), antialias=True),
                                     v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    baseline = datasets.ImageFolder(class_roots[0], transform=baseline_transform)
    position = {path: i for i, (path, _) in enumerate(baseline.samples)}
    chosen = np.arange(len(paths))
    if args.limit and args.limit < len(paths):
        chosen = np.sort(np.random.default_rng(0).choice(len(paths), args.limit, replace=False))
    baseline_indices = [position[paths[i]] for i in chosen]
    if any(baseline.targets[b] != int(full.labels[i]) for b, i in zip(baseline_indices, chosen)):
        raise RuntimeError("baseline and our loader disagree on labels; the comparison would be meaningless")
    n_images = len(chosen)
    for i in chosen:  # warm the OS page cache for both loaders
        Path(paths[i]).read_bytes()

    results = {"dataset": name, "size": size, "images": n_images, "batch_size": args.batch_size,
               "rounds": args.rounds, "torch_threads": torch.get_num_threads(), "baseline": {}, "ours": {}}
    baseline_loaders = {f"workers={w}": DataLoader(Subset(baseline, baseline_indices), batch_size=args.batch_size,
                                                   num_workers=w) for w in args.baseline_workers}
    baseline_rates = {key: [] for key in baseline_loaders}
    cold_rates, warm_rates = [], []
    # Rounds alternate the loaders so that load from other processes hits all of them alike;
    # medians are reported.
    for _ in range(args.rounds):
        for key, loader in baseline_loaders.items():
            seconds, n = _epoch(loader)
            baseline_rates[key].append(n / seconds)
        clear_image_cache()
        ours = ImagingDataset(full.table, full.indices[chosen], "all", size, full.split_rule)
        loader = DataLoader(ours, batch_size=args.batch_size, num_workers=0)
        seconds, n = _epoch(loader)
        cold_rates.append(n / seconds)
        seconds, n = _epoch(loader)
        warm_rates.append(n / seconds)
    median = lambda values: float(np.median(values))  # noqa: E731
    for key, values in baseline_rates.items():
        results["baseline"][key] = {"images_per_s": median(values), "rounds": values}
    results["ours"] = {"first_epoch_images_per_s": median(cold_rates), "cached_epoch_images_per_s": median(warm_rates),
                       "first_epoch_rounds": cold_rates, "cached_epoch_rounds": warm_rates}
    best_name, best = max(((k, v["images_per_s"]) for k, v in results["baseline"].items()), key=lambda kv: kv[1])
    results["best_baseline"] = best_name
    results["ratio_first_epoch"] = median(cold_rates) / best
    results["ratio_cached_epoch"] = median(warm_rates) / best
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"loading benchmark: {name}, {n_images} images, {size}x{size}, batch {args.batch_size}, "
          f"median of {args.rounds} alternating rounds")
    for key, value in results["baseline"].items():
        print(f"  torchvision ImageFolder + v2 ({key}): {value['images_per_s']:,.0f} images/s")
    print(f"  pumamed load_dataset (workers=0): first epoch {results['ours']['first_epoch_images_per_s']:,.0f} "
          f"images/s (decode into cache), cached epoch {results['ours']['cached_epoch_images_per_s']:,.0f} images/s")
    print(f"  ratio vs best baseline ({best_name}): first epoch {results['ratio_first_epoch']:.2f}x, "
          f"cached epoch {results['ratio_cached_epoch']:.1f}x")
    return 0
