"""``python -m pumamed bench explorer``: latency of what the image explorer page does, against a
naive path measured in the same run.

Three ways to do the same work are timed for one model on one device:

``model``
    the bare PyTorch calls, batched, under ``torch.inference_mode`` (the floor);
``page``
    :class:`pumamed.explain.session.ExplorerSession`, the exact code the page calls (NumPy in
    and out, input checks, batching, the decode cache; codes are fresh each repeat so the cache
    never hides work), plus the PNG export where the page makes one;
``naive``
    what a straightforward script does: load the checkpoint from disk for every request and
    decode one image at a time under ``torch.no_grad``.

The ratio ``naive / page`` is the speed-up the page's design buys. Figures are medians (or, with
``--statistic min``, minima) over ``--repeats`` runs after one warm-up. Targets (issue 5, CPU, 128 px): one decode < 20 ms,
8 x 9 traversal grid < 300 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGETS_MS = {"decode_one": 20.0, "traversal_grid_8x9": 300.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint folder (default: the first 128-px PumaMedNet in the models directory, "
                             "else a fresh randomly initialised 128-px PumaMedNet with the default config)")
    parser.add_argument("--size", type=int, default=128, help="image size of the fresh model when none is found")
    parser.add_argument("--device", default="cpu", help="cpu (default, as the targets are stated), cuda, mps or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per figure (median reported)")
    parser.add_argument("--memory-format", choices=("auto", "channels_last", "contiguous"), default="auto",
                        help="memory layout of the page path (auto: channels_last on CPU, as the page uses)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per model call in the page path (default: the session's, 16 on CPU)")
    parser.add_argument("--statistic", choices=("median", "min"), default="median",
                        help="summary of the repeats: median (default), or min on a machine shared with other "
                             "jobs, where the median measures the contention")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


_STATISTIC = {"name": "median"}  # set by run(): median (default) or min of the timed repeats


def _time_ms(fn, repeats: int, sync=None) -> float:
    fn()  # warm-up: allocator, kernels, lazy imports
    if sync:
        sync()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return min(times) if _STATISTIC["name"] == "min" else statistics.median(times)


def _find_model(args) -> tuple[Path, str, tempfile.TemporaryDirectory | None]:
    """(checkpoint folder, how it was chosen, temp dir to clean up)."""
    from pumamed import config
    from pumamed.catalog import list_checkpoints
    from pumamed.errors import CheckpointError

    if args.model is not None:
        if not Path(args.model).is_dir():
            raise CheckpointError(f"--model {args.model} is not a checkpoint folder")
        return Path(args.model), f"checkpoint {args.model}", None
    for info in list_checkpoints(config.models_dir()):
        cfg = info.config or {}
        if info.usable and cfg.get("arch", "pumamednet") == "pumamednet" and \
                int(cfg.get("model", {}).get("image_size", 0)) == args.size:
            return info.path, f"checkpoint {info.path} ({args.size} px)", None
    from pumamed.net import PumaMedNet, PumaMedNetConfig, save_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="pumamed_bench_explorer_")
    folder = Path(tmp.name) / f"fresh_{args.size}px"
    save_checkpoint(folder, PumaMedNet(PumaMedNetConfig(image_size=args.size)),
                    card_text="# benchmark model\n\nRandomly initialised; latency only.\n")
    why = (f"no {args.size}-px PumaMedNet checkpoint in {config.models_dir()}: a fresh randomly initialised "
           f"{args.size}-px PumaMedNet with the default config (latency does not depend on the weights)")
    return folder, why, tmp


def run(args) -> int:
    import numpy as np
    import torch

    from pumamed.config import device_description, select_device
    from pumamed.explain.export import grid_png
    from pumamed.explain.masking import Box, harmonic_inpaint, rectangle_mask
    from pumamed.explain.session import load_session
    from pumamed.net import PumaMedNetConfig, count_parameters, load_model

    _STATISTIC["name"] = args.statistic
    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = select_device(None if args.device == "auto" else args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    folder, origin, tmp = _find_model(args)
    try:
        load_start = time.perf_counter()
        channels_last = None if args.memory_format == "auto" else args.memory_format == "channels_last"
        session = load_session(folder, device=device, channels_last=channels_last, batch_size=args.batch_size)
        load_ms = (time.perf_counter() - load_start) * 1000.0
        model = session.model
        size, latent = session.image_size, session.latent_dim
        rng = np.random.default_rng(0)
        image = rng.uniform(size=(size, size)).astype(np.float32)
        x = torch.from_numpy(image)[None, None].to(device)
        mask = rectangle_mask(size, [Box(0.3, 0.3, 0.25, 0.25)])
        k, m = 8, 9
        counter = iter(range(10**9))

        def fresh_codes(n):  # new codes every call: the decode cache must not hide work
            return np.random.default_rng(next(counter)).standard_normal((n, latent)).astype(np.float32)

        def naive_model():
            return load_model(folder, device=device).model

        figures: dict[str, dict[str, float]] = {}

        # --- encode + decode of one image
        def model_recon():
            with torch.inference_mode():
                mu, _ = model.encode(x)
                return model.decode(mu)

        def naive_recon():
            net = naive_model()
            with torch.no_grad():
                mu, _ = net.encode(x)
                return net.decode(mu)

        figures["encode_decode_one"] = {
            "model": _time_ms(model_recon, args.repeats, sync),
            "page": _time_ms(lambda: session.reconstruct_batch(image[None]), args.repeats, sync),
            "naive": _time_ms(naive_recon, args.repeats, sync),
        }

        # --- one decode (a slider move)
        def model_decode():
            with torch.inference_mode():
                return model.decode(torch.from_numpy(fresh_codes(1)).to(device))

        def naive_decode():
            net = naive_model()
            with torch.no_grad():
                return net.decode(torch.from_numpy(fresh_codes(1)).to(device))

        figures["decode_one"] = {
            "model": _time_ms(model_decode, args.repeats, sync),
            "page": _time_ms(lambda: session.decode(fresh_codes(1)), args.repeats, sync),
            "naive": _time_ms(naive_decode, args.repeats, sync),
        }
        cached = fresh_codes(1)
        session.decode(cached)
        figures["decode_one_cached"] = {"page": _time_ms(lambda: session.decode(cached), args.repeats)}

        # --- the 8 x 9 traversal grid
        dims = list(range(min(k, latent)))

        def model_grid():
            from pumamed.explain.traversal import traversal_latents, traversal_offsets

            codes = traversal_latents(fresh_codes(1)[0], dims, traversal_offsets(m, 3.0))
            with torch.inference_mode():
                return model.decode(torch.from_numpy(codes).to(device))

        def page_grid():
            grid = session.traverse(fresh_codes(1)[0], dims, n_steps=m, span=3.0)
            return grid_png(grid.images, grid.row_labels(), grid.column_labels(), scale=1)

        def naive_grid():
            from pumamed.explain.traversal import traversal_latents, traversal_offsets

            net = naive_model()
            codes = traversal_latents(fresh_codes(1)[0], dims, traversal_offsets(m, 3.0))
            with torch.no_grad():
                return [net.decode(torch.from_numpy(c[None]).to(device)) for c in codes]

        figures["traversal_grid_8x9"] = {
            "model": _time_ms(model_grid, args.repeats, sync),
            "page": _time_ms(lambda: session.traverse(fresh_codes(1)[0], dims, n_steps=m, span=3.0),
                               args.repeats, sync),
            "naive": _time_ms(naive_grid, max(3, args.repeats // 2), sync),
        }
        figures["traversal_grid_8x9_with_png"] = {"page": _time_ms(page_grid, args.repeats, sync)}

        # --- masked reconstruction (+ reference + harmonic baseline)
        masked_input = np.where(mask, 0.0, image).astype(np.float32)

        def model_masked():
            batch = torch.from_numpy(np.stack([masked_input, image]))[:, None].to(device)
            with torch.inference_mode():
                mu, _ = model.encode(batch)
                return model.decode(mu)

        def naive_masked():
            net = naive_model()
            outs = []
            with torch.no_grad():
                for picture in (masked_input, image):
                    mu, _ = net.encode(torch.from_numpy(picture)[None, None].to(device))
                    outs.append(net.decode(mu))
            return outs, harmonic_inpaint(masked_input, mask)

        figures["masked_reconstruction"] = {
            "model": _time_ms(model_masked, args.repeats, sync),
            "page": _time_ms(lambda: session.masked(image, mask), args.repeats, sync),
            "naive": _time_ms(naive_masked, args.repeats, sync),
        }
        figures["harmonic_baseline_only"] = {"page": _time_ms(lambda: harmonic_inpaint(masked_input, mask),
                                                                args.repeats)}

        for row in figures.values():
            if "naive" in row and row.get("page"):
                row["naive_over_page"] = row["naive"] / row["page"]
        config = model.config if isinstance(model.config, PumaMedNetConfig) else None
        report = {
            "benchmark": "explorer",
            "device": device_description(device),
            "torch_threads": torch.get_num_threads(),
            "model": origin,
            "image_size": size,
            "latent_dim": latent,
            "parameters": count_parameters(model),
            "widths": list(config.widths) if config else None,
            "channels_last": session.channels_last,
            "page_batch_size": session.batch_size,
            "model_load_ms": load_ms,
            "repeats": args.repeats,
            "statistic": args.statistic,
            "figures_ms": figures,
            "targets_ms": TARGETS_MS,
            "targets_met": {name: figures[name]["page"] < limit for name, limit in TARGETS_MS.items()},
        }
    finally:
        if tmp is not None:
            tmp.cleanup()

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    out = sys.stdout
    print(f"explorer benchmark on {report['device']} ({report['torch_threads']} torch threads)", file=out)
    print(f"model: {origin}", file=out)
    print(f"       {size}x{size} px, {latent} latent dims, {report['parameters']:,} parameters; "
          f"checkpoint load {load_ms:.0f} ms", file=out)
    print(f"page path: {'channels_last' if session.channels_last else 'contiguous'} layout, "
          f"{session.batch_size} images per model call", file=out)
    print(f"{'figure (' + args.statistic + ' ms)':34s} {'model':>9s} {'page':>9s} {'naive':>10s} {'naive/page':>11s}", file=out)
    for name, row in figures.items():
        cells = [f"{row[c]:9.1f}" if c in row else f"{'-':>9s}" for c in ("model", "page")]
        naive = f"{row['naive']:10.1f}" if "naive" in row else f"{'-':>10s}"
        ratio = f"{row['naive_over_page']:10.1f}x" if "naive_over_page" in row else f"{'-':>11s}"
        print(f"{name:34s} {cells[0]} {cells[1]} {naive} {ratio}", file=out)
    for name, limit in TARGETS_MS.items():
        status = "met" if report["targets_met"][name] else "MISSED"
        print(f"target {name} < {limit:.0f} ms: {status} ({figures[name]['page']:.1f} ms)", file=out)
    return 0
