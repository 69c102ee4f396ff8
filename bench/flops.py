"""The FLOP floor of bench/cpu_compare.py: what the UNet and the VAE decoder compute, counted on their graphs,
and the CPU's fp32 peak that bounds how fast any fp32 kernel can run them.
"""
from __future__ import annotations

from pathlib import Path


def network_gflop(path: Path, contract, dims: dict, sizes: dict) -> dict:
    """GFLOP of one call of the network in ``path`` at a static shape (2 FLOP per multiply-add): its inputs
    are the contract's shapes with ``dims`` (the folder's fixed sizes) and ``sizes`` (the dynamic axes) put
    in. Counted on the OpenVINO graph read from the ONNX file: Convolution, GroupConvolution, MatMul (linear
    layers; attention's QK^T and AV, whose second operand is not a weight) and the rest (elementwise, norms,
    softmax) left out as they are memory-bound and < 1% of the count."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    model.reshape({s.name: [sizes.get(d, d) for d in s.resolve(dims)] for s in contract.inputs})
    counts = {"conv": 0.0, "matmul_linear": 0.0, "matmul_attention": 0.0}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Convolution", "GroupConvolution"):
            w = list(op.get_input_shape(1))
            per_out = (w[1] * w[2] * w[3]) if kind == "Convolution" else (w[2] * w[3] * w[4])
            counts["conv"] += 2.0 * _numel(op.get_output_shape(0)) * per_out
        elif kind == "MatMul":
            a = list(op.get_input_shape(0))
            k = a[-1] if not op.get_transpose_a() else a[-2]
            constant_b = op.input_value(1).get_node().get_type_name() in ("Constant", "Convert")
            counts["matmul_linear" if constant_b else "matmul_attention"] += 2.0 * _numel(op.get_output_shape(0)) * k
    counts = {k: v / 1e9 for k, v in counts.items()}
    counts["total"] = sum(counts.values())
    return counts


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def flop_floor(engines: Path, manifest, size: int, peak: float) -> dict:
    """The UNet's GFLOP per step (batch 2 for classifier-free guidance; 1 for a UNet that takes the guidance
    embedding, which runs no guidance batch) and the VAE decoder's at ``size`` px, and their shortest possible
    times at ``peak`` GFLOP/s."""
    from fashiongen.runtime.contracts import GUIDANCE_DIM, UNET, VAE_DECODER, network_contract

    latent = size // int(manifest.vae.downscale)
    sizes = {"latent_height": latent, "latent_width": latent, "image_height": size, "image_width": size}
    batch = 1 if manifest.dims.get(GUIDANCE_DIM) is not None else 2
    unet = network_gflop(engines / "unet.onnx", network_contract(UNET.name, manifest.dims), manifest.dims,
                         {**sizes, "batch": batch})
    vae = network_gflop(engines / "vae_decoder.onnx", network_contract(VAE_DECODER.name, manifest.dims), manifest.dims,
                        {**sizes, "batch": 1})
    return {"latent": latent, "counts": unet, "unet_gflop_per_step": unet["total"],
            "floor_step_s": unet["total"] / peak, "vae_gflop": vae["total"], "floor_vae_s": vae["total"] / peak}


def peak_gflops(given: float | None, log) -> tuple[float, str]:
    """The fp32 peak: ``--peak-gflops`` when given, else measured (bench/cpu_peak.py)."""
    if given:
        return given, "given (--peak-gflops)"
    from fashiongen.bench.cpu_peak import measure_peak_gflops

    log("measuring the CPU's fp32 peak (FMA kernel on every core) ...")
    measured = measure_peak_gflops()
    if measured is None:
        raise SystemExit("no C compiler to measure the fp32 peak: pass --peak-gflops")
    return measured, "measured (FMA-throughput kernel on every core, bench/cpu_peak.py)"
