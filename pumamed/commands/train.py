"""``python -m pumamed train``: pretrain, transfer or fine-tune PumaMedNet, or train the ResNet-18
baseline, on datasets of the data directory. Multi-GPU: ``torchrun --nproc_per_node N -m pumamed
train ...`` (DDP; --batch-size is per process)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train PumaMedNet (pretraining on a mix, transfer, fine-tuning) or the ResNet-18 baseline",
        description="Train PumaMedNet or the ResNet-18 baseline. Several datasets (comma-separated) pretrain "
                    "on their mix; one dataset with --init transfers a pretrained model to it.")
    p.add_argument("--dataset", required=True, help="dataset name(s), comma-separated (e.g. brain_tumor_mri)")
    p.add_argument("--data-dir", help="data directory (default: $PUMAMED_DATA_DIR or ./data)")
    p.add_argument("--arch", choices=["pumamednet", "resnet18", "convnet"], default="pumamednet",
                   help="pumamednet (default), or a baseline classifier: resnet18 (the documented baseline and "
                        "judge), convnet (a plain VGG-style net, an independent reader for --walk-reader)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (64, 128, 256)")
    p.add_argument("--latent", type=int, default=None, help="latent dimensions (default 32; with --init: the pretrained model's, unless the image size differs, where the latent projections start fresh)")
    p.add_argument("--widths", default=None,
                   help="encoder widths, one per halving of the image (default 16,32,64,128; with --init: the "
                        "pretrained model's)")
    p.add_argument("--weight-map", choices=["learned", "error", "none"], default=None,
                   help="per-pixel weights of the reconstruction loss (default learned; with --init: the "
                        "pretrained model's)")
    p.add_argument("--decoder", choices=["transposed", "upsample"], default=None,
                   help="decoder: transposed (lean; the default) or upsample (the first release's, about 3.5x "
                        "the FLOPs); with --init, the pretrained model's unless given")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    p.add_argument("--kl-warmup", type=float, default=0.3, help="fraction of training over which beta rises from 0")
    p.add_argument("--capacity", type=float, default=0.0, help="KL capacity annealing target in nats (0: off)")
    p.add_argument("--aux-weight", type=float, default=10.0, help="weight of the auxiliary label heads on a mix")
    p.add_argument("--cls-weight", type=float, default=50.0, help="weight of the classifier loss")
    p.add_argument("--classifier-hidden", type=int, default=0, help="hidden units of an MLP head (0: linear)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers when augmenting in the loader (default: 0 on CPU, 8 on GPU)")
    p.add_argument("--no-augment", action="store_true", help="no geometric augmentation")
    p.add_argument("--no-denoise", action="store_true", help="no input corruption")
    p.add_argument("--augment-on", choices=["auto", "loader", "device"], default="auto",
                   help="loader: torchvision v2 per image in DataLoader workers; device: whole batches on the "
                        "training device (pumamed.net.augment); auto (default): device on CUDA, loader elsewhere")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format on CUDA")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="replay each training step from a CUDA graph where possible: one process on a CUDA "
                        "device, bf16 or fp32 (default: on; --no-cuda-graphs runs every step eagerly)")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap on steps per epoch (quick runs)")
    p.add_argument("--init", help="checkpoint folder of a pretrained PumaMedNet to transfer from")
    p.add_argument("--keep-head", action="store_true",
                   help="with --init on the same dataset, classes and size: continue its classifier head "
                        "instead of starting a fresh one (the default, as a transfer to new classes needs)")
    p.add_argument("--teacher", help="checkpoint folder of a trained classifier (e.g. the ResNet-18 baseline, same "
                                     "classes; one of another image size reads the images resized to its own) "
                                     "whose soft labels the classifier head also learns from; "
                                     "several folders, comma-separated, teach as one ensemble (mean logits)")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="with --teacher: share of the classification loss given to the teacher's soft labels")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="with --teacher: softening temperature")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="validate and save an exponential moving average of the weights, with this decay per "
                        "step (e.g. 0.99; default 0: the weights as trained)")
    p.add_argument("--detail-channels", type=int, default=None,
                   help="channels of a spatial detail code beside the global code (a hierarchical model whose "
                        "reconstructions keep texture; default 0: none; with --init: the pretrained model's)")
    p.add_argument("--detail-resolution", type=int, default=16,
                   help="width in px of the detail code's maps (one of the encoder's feature-map sizes)")
    p.add_argument("--detail-dropout", type=float, default=0.5,
                   help="share of training images decoded without their detail code, so the global code alone "
                        "must still draw the image")
    p.add_argument("--detail-prior", choices=("standard", "conditional"), default=None,
                   help="the detail code's prior: standard N(0, I), or conditional on the global code (the "
                        "explanations then hold only the image's residual detail, and the detail the global code "
                        "predicts moves with it); default: the --init model's, else standard")
    p.add_argument("--detail-beta", type=float, default=1.0, help="weight of the detail code's KL term")
    p.add_argument("--detail-swap", dest="detail_swap_weight", type=float, default=0.0, metavar="WEIGHT",
                   help="hierarchical models: decode each global code with another image's detail code too, and "
                        "train the decoder so that the classifier (weights held) names the global code's class on "
                        "that picture (so the evidence, and a counterfactual, follow the global code); e.g. 50")
    p.add_argument("--walk-weight", type=float, default=0.0, metavar="WEIGHT",
                   help="with --walk-reader: walk each global code towards another class's centre, decode it with "
                        "the image's own detail, and train the decoder so that the reader reads on that picture "
                        "what the model's head reads on the walked code (e.g. 50; default 0: off)")
    p.add_argument("--global-read", dest="global_read_weight", type=float, default=0.0, metavar="WEIGHT",
                   help="with --walk-reader: decode each global code with the detail at its prior mean (the global "
                        "code alone) and train the model so that the reader reads the image's class on that picture "
                        "(e.g. 50; default 0: off)")
    p.add_argument("--global-read-jitter", type=float, default=0.0, metavar="J",
                   help="the reader of --global-read sees each picture blurred (partly resampled by a factor 1 - J) "
                        "and with noise (sd up to J/5), so the cues it reads must survive both (default 0)")
    p.add_argument("--global-read-detail", choices=("prior", "other"), default="prior",
                   help="the detail code --global-read decodes each global code with: its prior mean (default: the "
                        "global code alone, a smooth picture) or the next training image's (real texture that says "
                        "nothing of this image's class)")
    p.add_argument("--keep-epoch", choices=("best", "last"), default="best",
                   help="keep the best validation epoch (default) or the last (for a training term that trades a "
                        "little validation AUC for pictures)")
    p.add_argument("--walk-reader", "--reader", dest="walk_reader", metavar="DIR[,DIR...]",
                   help="checkpoint folder of a classifier trained on the original images (same classes), e.g. "
                        "train --arch convnet, or several separated by commas (a panel: each must read the "
                        "pictures); never the judge that scores the counterfactuals")
    p.add_argument("--detail-independence", dest="detail_independence_weight", type=float, default=0.0,
                   metavar="WEIGHT",
                   help="hierarchical models with a classifier: penalise, with this weight, how much the classes' "
                        "residual detail codes differ (maximum mean discrepancy), so what tells the classes apart "
                        "is drawn from the global code that the walks move (default 0: off)")
    p.add_argument("--train-only", choices=["all", "decoder"], default="all",
                   help="decoder: only the decoder (and the loss-weight net) learns, the encoder and the classifier "
                        "of the --init model are held, and the last epoch is kept (default all)")
    p.add_argument("--walk-span", type=float, default=2.0, metavar="F",
                   help="the walk term draws its share of the class centres' distance from [0, F] (default 2)")
    p.add_argument("--output-gradient-floor", type=float, default=0.01, metavar="SLOPE",
                   help="the decoder's output sigmoid backpropagates at least this slope, so pixels pushed deep "
                        "into its tail can still be corrected (default 0.01; 0: the plain sigmoid, as runs before "
                        "2026-12-07's S6 in docs/faithfulness.md)")
    p.add_argument("--no-fill-mask", dest="fill_mask", action="store_false",
                   help="redraw the augmentation's black fill (pixels its warp brought in from outside the image) "
                        "as part of the reconstruction loss, as runs before 2026-12-07's S6 did; by default the "
                        "loss leaves it out")
    p.add_argument("--ssim-weight", type=float, default=0.0,
                   help="weight of a (1 - SSIM) structure term beside the weighted squared error (e.g. 0.1)")
    p.add_argument("--out", help="output checkpoint folder (default: runs/<datasets>_<arch>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--keep-state", action="store_true", help="keep the resume state after the run finishes")
    p.add_argument("--no-test", action="store_true", help="do not report the test split at the end")
    p.add_argument("--no-calibrate", action="store_true",
                   help="do not fit the trust signals (temperature, OOD threshold) at the end; "
                        "python -m pumamed calibrate --model DIR does it later")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    import json
    from pathlib import Path

    import torch

    from pumamed.errors import InputError
    from pumamed.net.pipeline import RunSpec, run
    from pumamed.net.distributed import is_main_process
    from pumamed.net.train import TrainConfig

    names = [n.strip() for n in args.dataset.split(",") if n.strip()]
    try:
        widths = tuple(int(w) for w in args.widths.split(",")) if args.widths is not None else (16, 32, 64, 128)
    except ValueError as exc:
        raise InputError(f"--widths must be comma-separated integers, got {args.widths!r}") from exc
    if args.keep_head and not args.init:
        raise InputError("--keep-head continues the classifier head of an --init model: give --init DIR")
    workers = args.workers if args.workers is not None else (8 if torch.cuda.is_available() else 0)
    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, beta=args.beta,
        kl_warmup=args.kl_warmup, capacity=args.capacity, aux_weight=args.aux_weight, cls_weight=args.cls_weight,
        augment=not args.no_augment, denoise=not args.no_denoise, augment_on=args.augment_on, seed=args.seed,
        distill_weight=args.distill_weight, distill_temperature=args.distill_temperature, ema=args.ema,
        detail_beta=args.detail_beta, ssim_weight=args.ssim_weight, detail_swap_weight=args.detail_swap_weight,
        walk_weight=args.walk_weight, walk_span=args.walk_span, train_only=args.train_only,
        detail_independence_weight=args.detail_independence_weight,
        global_read_weight=args.global_read_weight, global_read_jitter=args.global_read_jitter,
        global_read_detail=args.global_read_detail,
        keep_epoch=args.keep_epoch,
        output_gradient_floor=args.output_gradient_floor, fill_mask=args.fill_mask,
        num_workers=workers,
        channels_last=args.channels_last, cuda_graphs=args.cuda_graphs, max_steps_per_epoch=args.max_steps_per_epoch,
        keep_resume_state=args.keep_state, progress=not args.quiet)
    teachers = tuple(Path(f.strip()) for f in (args.teacher or "").split(",") if f.strip())
    readers = tuple(Path(f.strip()) for f in (args.walk_reader or "").split(",") if f.strip())
    out = Path(args.out) if args.out else Path("runs") / f"{'+'.join(names)}_{args.arch}"
    spec = RunSpec(datasets=names, out=out, arch=args.arch, size=args.size, latent=args.latent or 32, widths=widths,
                   weight_map=args.weight_map or "learned",
                   architecture_given=tuple(name for name in ("latent", "widths", "weight_map", "detail_channels")
                                            if getattr(args, name) is not None), decoder=args.decoder, classifier_hidden=args.classifier_hidden,
                   detail_channels=args.detail_channels or 0, detail_resolution=args.detail_resolution,
                   detail_dropout=args.detail_dropout, detail_prior=args.detail_prior,
                   init=Path(args.init) if args.init else None, keep_head=args.keep_head, teacher=teachers,
                   walk_reader=readers[0] if len(readers) == 1 else (readers or None),
                   resume=args.resume, data_dir=args.data_dir,
                   report_test=not args.no_test, calibrate=not args.no_calibrate, train=train_cfg)
    metrics = run(spec, log=print)
    if is_main_process():
        summary = {"out": str(out), "best_epoch": metrics.get("best_epoch"),
                   "val_auc": ((metrics.get("val") or {}).get("auc") or {}).get("macro"),
                   "test_auc": ((metrics.get("test") or {}).get("auc") or {}).get("macro"),
                   "train_seconds": metrics.get("train_seconds")}
        if metrics.get("transfer"):
            summary["transfer"] = {k: {s: ((v.get(s) or {}).get("auc") or {}).get("macro") for s in ("val", "test")}
                                   for k, v in metrics["transfer"].items()}
        print(json.dumps(summary))
    return 0
