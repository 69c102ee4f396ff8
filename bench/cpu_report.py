"""The report of bench/cpu_compare.py: the table of every contender's medians, the goals each exact and fast
mode is held to (with the most the FLOP floor allows), the machine it ran on, and a bar chart.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from statistics import median

from .cpu_workers import CONTENDERS, FASHIONGEN, FEW_STEP, RSS_ONLY, has_cutout, setup

REFERENCE = "fashiongen-ort"
EXACT = ("fashiongen-ort", "fashiongen-openvino")

#: FastSD CPU's own published timings, per image side, quoted as published (not measured here: another CPU, a
#: trained model, OpenVINO). Its README of 2023-11-18 gives them for its OpenVINO mode, whose models it describes as
#: "LCM-LoRA baked in models" (SD 1.5 with LCM-LoRA fused, LCM scheduler); it does not state the steps. Later
#: README versions quote only other models (SD Turbo, SDXS, Hyper-SD), so these are its LCM-LoRA / OpenVINO figures.
FASTSD_CPU_SOURCE = ("FastSD CPU README, github.com/rupeshs/fastsdcpu/blob/d058ef95386bf0bfdcd68b5219ab74079e2e52aa/"
                     "Readme.md")
FASTSD_CPU = {
    512: (10.0, "Intel Core i7-12700",
          '"Using OpenVINO, it took 10 seconds to create a single 512x512 image on a Core i7-12700."'),
    256: (2.3, "Intel Core i7 (model not named)",
          '"Near real-time inference on CPU using OpenVINO ... (Resolution : 256x256,Latency : 2.3s on Intel Core i7)"'),
}


def machine_name() -> str:
    """CPU model, vector ISA and core count (from /proc/cpuinfo where there is one)."""
    from fashiongen.runtime.cpu import cpu_flags
    from fashiongen.runtime.fastmodes import has_int8_dot_product

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = cpu_flags()
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    int8 = ", INT8 dot products" if " avx2" in flags and has_int8_dot_product() else ""
    return f"{model}, {isa}{int8}, {os.cpu_count()} cores, Python {platform.python_version()}"



def med(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return median(values) if values else None


def fmt(v, digits=2):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:.{digits}f}"


def markdown(report: dict) -> str:
    rows = report["contenders"]
    ref = rows[REFERENCE]
    flop = report["flop_floor"]
    lines = [f"# CPU text → image, side by side ({report['machine']})", "",
             f"{report['model']}, {report['size']}x{report['size']}, "
             f"{report['steps']} steps (PNDM), guidance 7.5, seed {report['seed']}; {report['rounds']} rounds, "
             "each contender in a fresh process per round, rounds interleaved; medians. Cold start: process spawn "
             "to ready to run; stages and end to end: the first image after that; warm end to end: the same "
             f"request again in the same process ({report.get('images', 1)} images per process). Ratios: the "
             f"contender's end to end over {REFERENCE}'s (> 1: this runtime is faster).", "",
             "| contender | cold start s | text enc s | UNet step s | UNet GFLOP/s (% of peak) | VAE dec s | "
             "cutout s | end to end s | warm end to end s | x vs ORT exact | peak RSS GB | PSNR vs exact dB |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows.items():
        step = r.get("unet_step")
        full = name not in FEW_STEP and (name not in FASHIONGEN or (not setup(name).size
                                                                    and "deepcache" not in (setup(name).fast or "")))
        rate = "-"  # the count is a whole UNet call at the report's size: not a shallow step, not another size
        if step and full:
            rate = f"{flop['unet_gflop_per_step'] / step:.0f} ({100 * flop['unet_gflop_per_step'] / step / report['peak_gflops']:.0f}%)"
        ratio = r["total"] / ref["total"] if r.get("total") and ref.get("total") else None
        lines.append(f"| {name} | {fmt(r.get('cold_start'), 1)} | {fmt(r.get('text_encoder'))} | {fmt(step, 3)} | "
                     f"{rate} | {fmt(r.get('vae_decoder'))} | {fmt(r.get('cutout'))} | {fmt(r.get('total'), 1)} | "
                     f"{fmt(r.get('total_warm'), 1)} | {fmt(ratio)} | "
                     f"{fmt(r['peak_rss_mb'] / 1024 if r.get('peak_rss_mb') else None)} | {fmt(r.get('psnr_vs_exact'), 1)} |")
    lines += ["", f"FLOP floor: the UNet does {flop['unet_gflop_per_step']:.0f} GFLOP per guided step (batch 2, "
              f"{flop['latent']}x{flop['latent']} latents; conv {flop['counts']['conv']:.0f}, linear "
              f"{flop['counts']['matmul_linear']:.0f}, attention {flop['counts']['matmul_attention']:.0f}), the VAE "
              f"decoder {flop['vae_gflop']:.0f} GFLOP. At the CPU's fp32 peak of {report['peak_gflops']:.0f} GFLOP/s "
              f"({report['peak_source']}) a step takes at least {flop['floor_step_s']:.3f} s, {report['steps']} steps "
              f"{flop['floor_step_s'] * report['steps']:.1f} s, and the decode {flop['floor_vae_s']:.2f} s."]
    lines += few_step_table(report)
    if report.get("skipped"):
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    lines += ["", "Goals:"] + [f"- {g}" for g in report["goals"]]
    return "\n".join(lines) + "\n"


def few_step_table(report: dict) -> list[str]:
    """The few-step contenders against this runtime's exact mode (the report's --steps and --size), with FastSD
    CPU's published figure for the same image side beside them; no lines when none ran."""
    rows = {n: r for n, r in report["contenders"].items() if n in FEW_STEP and r.get("total")}
    if not rows:
        return []
    exact = report["contenders"][REFERENCE]
    lines = ["", f"Few-step shots: 4 LCM steps at guidance 1 (one UNet batch a step) with the tiny VAE decoder, on "
             "the same architecture with a random LoRA of LCM-LoRA's shape merged; this runtime's rows include the "
             f"cutout. Speed-up: {REFERENCE}'s {report['steps']}-step {report['size']} px end to end over the row's.",
             "", "| contender | px | end to end s | of which cutout s | speed-up over the exact mode | "
             "FastSD CPU, as published |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, r in rows.items():
        seconds, hardware, quote = FASTSD_CPU[FEW_STEP[name]]
        lines.append(f"| {name} | {FEW_STEP[name]} | {fmt(r['total'], 2)} | {fmt(r.get('cutout'))} | "
                     f"{exact['total'] / r['total']:.1f}x | {seconds:g} s on {hardware} |")
    lines += [""] + [f"- {name}: {CONTENDERS[name][1]}" for name in rows]
    lines += [f"- FastSD CPU at {side} px: {quote} ({FASTSD_CPU_SOURCE}; another CPU, a trained model, OpenVINO: "
              "not measured here)" for side, (_, _, quote) in sorted(FASTSD_CPU.items())
              if side in {FEW_STEP[n] for n in rows}]
    return lines


def goals(report: dict) -> list[str]:
    rows = report["contenders"]
    out = []
    exact_name = min((n for n in EXACT if n in rows and rows[n].get("total")), key=lambda n: rows[n]["total"],
                     default=None)
    if exact_name is None:
        return ["no exact-mode result"]
    exact = rows[exact_name]
    def speedup(name):
        r = rows.get(name)
        return r["total"] / exact["total"] if r and r.get("total") else None
    flop = report["flop_floor"]
    # The exact mode's end to end had its UNet and VAE decoder run at 100% of the fp32 peak (the rest as measured):
    # no fp32 kernel can beat it, so a goal above contender / this is out of reach without fewer FLOPs.
    floor_total = (exact["total"] - (exact.get("unet_total") or 0) - (exact.get("vae_decoder") or 0)
                   + exact.get("unet_calls", 0) * flop["floor_step_s"] + flop["floor_vae_s"])

    def verdict(name, goal):
        s = speedup(name)
        if not s:
            return "not measured"
        ceiling = rows[name]["total"] / floor_total
        return f"{fmt(s)}x (goal >= {goal}x, at most {ceiling:.2f}x with the UNet and VAE decoder at 100% of the " \
               f"fp32 peak): {'met' if s >= goal else 'not met'}"
    out.append(f"exact fp32 ({exact_name}) vs diffusers PyTorch: {verdict('diffusers-pytorch', 2)}")
    for name in ("optimum-onnx", "optimum-intel"):
        out.append(f"exact fp32 vs {name}: {verdict(name, 1.1)}")
    if exact.get("unet_step"):
        share = flop["unet_gflop_per_step"] / exact["unet_step"] / report["peak_gflops"]
        out.append(f"UNet step at {100 * share:.0f}% of the fp32 peak (goal >= 85%): {'met' if share >= 0.85 else 'not met'}")
    for name, fast in rows.items():
        if name not in FASHIONGEN or not setup(name).fast or has_cutout(name) or not fast.get("total"):
            continue
        s = exact["total"] / fast["total"]
        p = fast.get("psnr_vs_exact")
        out.append(f"fast mode {name}: {s:.2f}x the exact mode (goal >= 3x), PSNR {fmt(p, 1)} dB vs exact (goal >= 30): "
                   f"{'met' if s >= 3 and p and p >= 30 else 'not met'}")
    opt = rows.get("optimum-onnx")
    if opt and opt.get("cold_start"):
        r = exact["cold_start"] / opt["cold_start"]
        out.append(f"cold start {exact['cold_start']:.1f} s = {r:.2f} of optimum-onnx's (goal < 0.33): {'met' if r < 1 / 3 else 'not met'}")
    whole = rows.get("fashiongen-ort-512-cutout")
    if whole and whole.get("peak_rss_mb"):
        out.append(f"peak RSS of a whole 512 px product shot (txt2img + cutout, ORT): {whole['peak_rss_mb'] / 1024:.2f} GB")
    others = [r["peak_rss_mb"] for n, r in rows.items() if not n.startswith("fashiongen") and r.get("peak_rss_mb")]
    if others:
        out.append(f"peak RSS {exact['peak_rss_mb'] / 1024:.2f} GB vs lowest contender {min(others) / 1024:.2f} GB: "
                   f"{'met' if exact['peak_rss_mb'] <= min(others) else 'not met'}")
    for px in sorted(set(FEW_STEP.values())):  # the same few-step recipe, ours against diffusers' own
        ours, theirs = rows.get(f"fashiongen-lcm-{px}", {}), rows.get(f"diffusers-lcm-{px}", {})
        if ours.get("total") and theirs.get("total"):
            ratio = theirs["total"] / ours["total"]
            out.append(f"few-step {px} px shot: {ours['total']:.2f} s with its cutout, {ratio:.2f}x diffusers' LCM-LoRA + "
                       f"AutoencoderTiny pipeline without one (goal >= 1x): {'met' if ratio >= 1 else 'not met'}")
    shot = rows.get("fashiongen-shot")
    for key, when in (("total", "first image after loading"), ("total_warm", "warm process")):
        if shot and shot.get(key):
            out.append(f"full-size {report['size']} px product shot ({report['steps']} steps, guidance, cutout), "
                       f"{when}: {shot[key]:.1f} s (target < 10 s): {'met' if shot[key] < 10 else 'not met'}")
    return out


def chart(report: dict, path: Path) -> None:
    """A horizontal bar chart of end-to-end medians (Pillow only)."""
    from PIL import Image, ImageDraw

    rows = [(n, r["total"]) for n, r in report["contenders"].items() if r.get("total") and n not in RSS_ONLY]
    if not rows:
        return
    width, bar_h, left = 900, 34, 230
    img = Image.new("RGB", (width, 60 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), f"end to end, {report['size']} px, {report['steps']} steps, median s (lower is better)", fill="black")
    top = max(t for _, t in rows)
    for i, (name, total) in enumerate(rows):
        y = 40 + i * bar_h
        w = int((width - left - 80) * total / top)
        color = (40, 110, 200) if name.startswith("fashiongen") else (150, 150, 150)
        draw.text((10, y + 8), name, fill="black")
        draw.rectangle([left, y + 4, left + w, y + bar_h - 6], fill=color)
        draw.text((left + w + 6, y + 8), f"{total:.1f}", fill="black")
    img.save(path)
