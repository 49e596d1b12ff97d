"""The settings forms' choices and how the dataset tab's form becomes TrainOptions."""
from __future__ import annotations

from typing import Any

from distill.app.service import DistillApp, ScanEntry

PRESET_CHOICES = [("Auto: sized to the dataset", "auto"), ("Quick look: small and fast", "quick")]
DEVICE_CHOICES = [("Auto", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda"), ("Apple GPU (MPS)", "mps")]
FORM_KEYS = ("preset", "minutes", "device", "levels", "codebook", "seed", "hidden", "layers", "heads", "dropout", "lr")


def options_from_form(app: DistillApp, entry: ScanEntry, values) -> tuple[Any, list[str], str | None]:
    """The settings form -> TrainOptions with only the fields the user changed as overrides."""
    v = dict(zip(FORM_KEYS, values))
    try:
        base = app.options(v["preset"], v["minutes"], v["device"], v["seed"], v["levels"])
        plan = app.plan(entry, base)
    except Exception as exc:
        return None, [], str(exc)
    vq, pr = plan.vqvae_config, plan.prior_config
    vq_o, pr_o, edited = {}, {}, []
    checks = [("codebook", vq, "codebook_size", int, vq_o, "codes per level"),
              ("hidden", pr, "hidden_size", int, pr_o, "prior width"),
              ("layers", pr, "num_layers", int, pr_o, "prior layers"),
              ("heads", pr, "num_heads", int, pr_o, "heads"),
              ("dropout", pr, "dropout", float, pr_o, "dropout"),
              ("lr", pr, "learning_rate", float, pr_o, "learning rate")]
    for key, cfg, attr, cast, target, words in checks:
        value = v.get(key)
        if value is None or value == "":
            continue
        value = cast(value)
        if abs(float(value) - float(getattr(cfg, attr))) > 1e-12:
            target[attr] = value
            edited.append(words)
    hid = pr_o.get("hidden_size", pr.hidden_size)
    nh = pr_o.get("num_heads", pr.num_heads)
    if hid % nh:
        return None, edited, f"The prior width ({hid}) must be a multiple of the number of heads ({nh})."
    options = app.options(v["preset"], v["minutes"], v["device"], v["seed"], v["levels"], vq_o, pr_o)
    return options, edited, None


def progress_cb(progress):
    """A scan's (done, total) callback that moves a gr.Progress bar."""
    def cb(done: int, total: int) -> None:
        try:
            progress((done, max(total, 1)), desc="Reading audio files")
        except Exception:
            pass

    return cb


def form_for_job(app: DistillApp, manifest: dict | None, entry: ScanEntry | None) -> tuple[dict[str, Any], dict | None]:
    """The settings form's values ({FORM_KEYS key: value}) that a job was started with, from its manifest's
    options, and the tier card they give on `entry` (None without it). ({}, None) when the manifest has none.

    A reloaded page shows these rather than the defaults, so the next Start repeats what the user chose."""
    opts = (manifest or {}).get("options")
    if not isinstance(opts, dict):
        return {}, None
    try:
        options = app.options(opts.get("preset") or "auto", opts.get("minutes"), opts.get("device") or "auto",
                              opts.get("seed") or 0, opts.get("num_quantizers") or 3,
                              opts.get("vqvae_overrides"), opts.get("prior_overrides"))
    except (ValueError, TypeError):
        return {}, None
    values = {"preset": options.preset, "minutes": options.minutes, "device": options.device,
              "levels": options.num_quantizers, "seed": options.seed}
    vq, pr, card = (manifest or {}).get("vqvae_config"), (manifest or {}).get("prior_config"), None
    if entry is not None:
        try:
            plan = app.plan(entry, options)
            vq, pr, card = vars(plan.vqvae_config), vars(plan.prior_config), plan.tier_card
        except Exception:  # the dataset shown is not the job's any more: the saved configs stand
            pass
    vq = {**(vq if isinstance(vq, dict) else {}), **options.vqvae_overrides}
    pr = {**(pr if isinstance(pr, dict) else {}), **options.prior_overrides}
    for key, cfg, attr in (("codebook", vq, "codebook_size"), ("hidden", pr, "hidden_size"),
                           ("layers", pr, "num_layers"), ("heads", pr, "num_heads"), ("dropout", pr, "dropout"),
                           ("lr", pr, "learning_rate")):
        if cfg.get(attr) is not None:
            values[key] = cfg[attr]
    return values, card
