"""Model cards (model_card.md) written beside every checkpoint."""

from __future__ import annotations

import datetime as _dt

from pumamed.net.baseline import BASELINE_NAMES


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _licences(names) -> list[str]:
    try:
        from pumamed.imaging import DATASETS
    except ImportError:  # pragma: no cover
        return []
    lines = []
    for name in names:
        info = DATASETS.get(name)
        if info is None:
            lines.append(f"- `{name}`: user-supplied data; licence as stated by its owner")
            continue
        lines.append(f"- `{name}` ({info.title}): {info.licence or 'see the dataset SOURCE.txt'}"
                     + (f". {info.citation}" if info.citation else ""))
    return lines


def _split_rules(names) -> list[str]:
    try:
        from pumamed.imaging import DATASETS
    except ImportError:  # pragma: no cover
        return []
    return [f"- `{n}`: test = {DATASETS[n].test_split}" for n in names if n in DATASETS]


def make_card(config: dict, metrics: dict) -> str:
    arch = config.get("arch", "pumamednet")
    model = config.get("model", {})
    data = config.get("data", {})
    training = config.get("training", {})
    names = data.get("datasets", [])
    title = ("PumaMedNet (denoising beta-VAE)" if arch == "pumamednet"
             else f"{BASELINE_NAMES.get(arch, arch)} baseline (from scratch)")
    lines = [f"# {title}: {', '.join(names) or 'unknown data'}", ""]
    lines.append("Research software for exploring medical images. **Not a medical device; not for diagnosis.**")
    lines += ["", "## Model", ""]
    lines.append(f"- architecture: `{arch}`, image size {model.get('image_size')} px, 1 channel")
    if arch == "pumamednet":
        lines.append(f"- latent dimensions: {model.get('latent_dim')}, encoder widths {model.get('widths')}, "
                     f"self-attention at {model.get('attention_resolution')} px, GroupNorm")
        lines.append(f"- reconstruction weight map: {model.get('weight_map')} (strength {model.get('weight_strength')})")
        if model.get("detail_channels"):
            lines.append(f"- hierarchical: a spatial detail code of {model['detail_channels']} x "
                         f"{model.get('detail_resolution')} x {model.get('detail_resolution')} beside the global code "
                         f"(KL weight {training.get('detail_beta')}; dropped for {model.get('detail_dropout')} of the "
                         f"training images, so the global code alone must draw them); explanations edit the global "
                         f"code and hold the detail code")
            if model.get("detail_prior") == "conditional":
                lines.append("- the detail code's prior is conditional on the global code (predicted by the decoder): "
                             "explanations hold only the image's residual detail, so the detail the global code "
                             "predicts (a lesion's texture) moves with an edit of the global code")
            if training.get("detail_swap_weight"):
                lines.append(f"- detail swap (weight {training['detail_swap_weight']}): each global code is also drawn "
                             f"with another image's detail code, and the classifier, weights held, must still name "
                             f"the global code's class on that picture")
        if training.get("ssim_weight"):
            lines.append(f"- reconstruction loss: weighted squared error + {training['ssim_weight']} x pixels x "
                         f"(1 - SSIM)")
        if training.get("fill_mask"):
            lines.append("- the augmentation's fill (pixels its warp brings in from outside the image) is left out of "
                         "the reconstruction loss")
        if training.get("output_gradient_floor"):
            lines.append(f"- output sigmoid trained with a floor of {training['output_gradient_floor']} on its backward "
                         f"slope, so pixels pushed into its tails stay trainable")
    if model.get("class_names"):
        lines.append(f"- task: {model.get('task')} over {', '.join(model['class_names'])}")
    cost = metrics.get("cost") or {}
    if cost:
        lines.append(f"- classification path: {cost.get('parameters'):,} parameters, "
                     f"{cost.get('flops', 0) / 1e6:.1f} MFLOPs per image, "
                     f"{_fmt(cost.get('cpu_latency_ms'), 2)} ms per image on CPU ({cost.get('cpu_threads')} threads)")
    lines += ["", "## Training", ""]
    if data.get("init"):
        lines.append(f"- initialised from `{data['init']}` (pretrained on {', '.join(data.get('init_datasets', [])) or 'a mix'})")
    if data.get("teacher"):
        lines.append(f"- classifier head distilled from {data['teacher'].get('description')} trained on the same "
                     f"split (weight {training.get('distill_weight')}, temperature "
                     f"{training.get('distill_temperature')}); the teacher is not needed to use this model")
    if training.get("walk_weight") and data.get("walk_reader"):
        lines.append(f"- walk term (weight {training['walk_weight']}, span {training.get('walk_span')}): global codes "
                     f"walked towards another class's centre were decoded with the image's own detail, and "
                     f"the {data['walk_reader'].get('description')}, trained on the original images of the same split, "
                     f"had to read on those pictures what the head reads on the walked codes; only the decoder "
                     f"learnt from it, and the reader is not needed to use this model (nor is it the judge of the "
                     f"faithfulness figures)")
    if training.get("global_read_weight") and data.get("walk_reader"):
        carrier = ("the next training image's detail code" if training.get("global_read_detail") == "other"
                   else "the detail at its prior mean")
        lines.append(f"- global read (weight {training['global_read_weight']}): each global code was also decoded "
                     f"with {carrier}, and the {data['walk_reader'].get('description')}, trained "
                     f"on the original images of the same split, had to read the image's class on that picture"
                     f"{' (blurred and noised, jitter ' + str(training['global_read_jitter']) + ')' if training.get('global_read_jitter') else ''}; "
                     f"the reader is not needed to use this model (nor is it the judge of the faithfulness figures)")
    if training.get("keep_epoch") == "last" and training.get("train_only", "all") == "all":
        lines.append("- the last epoch's weights were kept, not the best validation epoch's")
    if training.get("detail_independence_weight"):
        lines.append(f"- detail independence (weight {training['detail_independence_weight']}): the maximum mean "
                     f"discrepancy between the classes' residual detail codes was penalised, so what tells the "
                     f"classes apart is drawn from the global code that the walks move")
    refit = data.get("head_refit")
    if refit:
        form = "linear" if not refit.get("hidden") else f"one hidden layer of {refit['hidden']} units"
        lines.append(f"- classifier head refitted on the frozen encoder's codes of the clean training images "
                     f"(`python -m pumamed refit-head --model {refit.get('from')}`): {form}, weight decay "
                     f"{refit.get('weight_decay')}; validation macro AUC {_fmt(refit.get('val_macro_auc_before'))} -> "
                     f"{_fmt(refit.get('val_macro_auc_after'))}; encoder and decoder unchanged, so the decoder draws what "
                     f"the earlier head read: counterfactuals of this head convince an independent judge less often")
    lines.append(f"- data: {', '.join(names)}; train n = {data.get('n_train')}, validation n = {data.get('n_val')}")
    lines.append(f"- epochs {training.get('epochs_done')} of {training.get('epochs')} (best on validation: "
                 f"epoch {training.get('best_epoch')}), batch {training.get('batch_size')} x {training.get('world_size', 1)} "
                 f"process(es), AdamW lr {training.get('lr')}, beta {training.get('beta')} "
                 f"(warm-up {training.get('kl_warmup')}), capacity {training.get('capacity')}, seed {training.get('seed')}")
    if training.get("ema"):
        lines.append(f"- the weights are an exponential moving average of the trained ones (decay "
                     f"{training['ema']} per step, warmed up), validated and saved in their place")
    lines.append(f"- device: {training.get('device')}; training time {metrics.get('train_seconds')} s")
    where = {"device": " (drawn per batch on the training device)",
             "loader": " (torchvision v2, per image)"}.get(training.get("augmented_on"), "")
    lines.append("- denoising objective: flips / affine / perspective on input and target alike; blur, noise and "
                 f"random erasing on the input only{where}" if arch == "pumamednet" else
                 f"- augmentation: flips / affine / perspective{where}")
    lines += ["", "## Splits", ""]
    lines += _split_rules(names) or ["- as defined by the data layer"]
    lines.append("- model selection on the validation split only; the test split is used for reporting")
    val = metrics.get("val") or {}
    test = metrics.get("test") or {}
    lines += ["", "## Metrics", "", "| split | n | macro AUC | accuracy | balanced accuracy | recon. MSE |",
              "|---|---|---|---|---|---|"]
    for name, block in (("validation", val), ("test", test)):
        if block:
            lines.append(f"| {name} | {block.get('n')} | {_fmt((block.get('auc') or {}).get('macro'))} | "
                         f"{_fmt(block.get('accuracy'))} | {_fmt(block.get('balanced_accuracy'))} | "
                         f"{_fmt(block.get('recon_mse'), 5)} |")
    transfer = metrics.get("transfer") or {}
    if transfer:
        lines += ["", "Transfer from the pretrained encoder (test split):", ""]
        for key, block in transfer.items():
            auc = ((block.get("test") or {}).get("auc") or {}).get("macro")
            vauc = ((block.get("val") or {}).get("auc") or {}).get("macro")
            lines.append(f"- {key}: validation macro AUC {_fmt(vauc)}, test macro AUC {_fmt(auc)}")
    per = (test.get("auc") or {}).get("per_class") or {}
    if per:
        lines += ["", "Per-class test AUC: " + ", ".join(f"{k} {_fmt(v)}" for k, v in per.items())]
    lines += ["", "## Data licences", ""]
    lines += _licences(names) or ["- see the dataset sources"]
    lines += ["", "## Limitations", "",
              "- small, low-resolution public datasets; performance on other scanners, sites and populations is unknown",
              "- validation and test splits are carved from the public training data where official splits are "
              "held back, so the test figures are optimistic relative to an external test set",
              "", f"_Written {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `python -m pumamed train`._", ""]
    return "\n".join(lines)
