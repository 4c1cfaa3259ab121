"""IResNet-50 training throughput (images/s) on TensorFlow, JAX and PyTorch, against the GPU's peak.

One training step = forward + backward + SGD (momentum 0.9, weight decay 5e-4) of an IResNet-50 at
112x112 with an ArcFace head (`--classes` centres, d = 512), on one synthetic batch held in device
memory (no input pipeline), in bf16 (default) or fp16 mixed precision. Each Keras backend runs in its
own subprocess (`KERAS_BACKEND` is fixed per process); beside them, when torch is installed, a plain
PyTorch IResNet-50 step in the style of insightface's arcface_torch (the model written here from the
architecture: NCHW, channels-last memory on GPU, `torch.autocast`, the embedding `fc` in float32,
a GradScaler for fp16) is the reference of what the hardware does without Keras.

It prints images/s, each backend's ratio to the TensorFlow figure of the same run, the achieved
TFLOPS and the fraction of the device's dense 16-bit tensor peak (a table by device name below;
`--peak-tflops` overrides it). FLOPs are counted from the layer shapes: multiply-accumulates of the
convolutions and dense layers (IResNet-50 at 112x112: 6.3 G, the figure insightface lists as
"GFLOPs"), times 2 for FLOPs, times 3 for a training step (forward, and the backward's two products).

With no GPU (or `--tiny`) it runs a tiny configuration on the CPU instead (IResNet with one block per
stage, widths 16-128, 32x32, batch 8, 3 timed steps) and says so: a smoke test that the code runs,
not a throughput figure (`--force-full` runs IResNet-50 on the CPU anyway).

    python benchmarks/gpu_throughput.py                                   # all installed, bf16
    python benchmarks/gpu_throughput.py --precision fp16 --batch-size 256 --steps 50
    python benchmarks/gpu_throughput.py --tiny --backends tensorflow      # CPU smoke (CI)
"""

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

RUNNERS = ("tensorflow", "jax", "torch", "torch-native")

# Dense (no sparsity) 16-bit tensor-core peak in TFLOPS: (bf16, fp16), by a substring of the device
# name, most specific first. NVIDIA data sheets; bf16 None where the GPU has no bf16 tensor cores.
PEAK_TFLOPS = (
    ("GH200", (989.0, 989.0)),
    ("H200", (989.0, 989.0)),
    ("H100 NVL", (835.0, 835.0)),
    ("H100 PCIe", (756.0, 756.0)),
    ("H100", (989.0, 989.0)),  # SXM5 / HBM3
    ("H800", (989.0, 989.0)),
    ("B200", (2250.0, 2250.0)),
    ("A100", (312.0, 312.0)),
    ("A800", (312.0, 312.0)),
    ("L40S", (362.0, 362.0)),
    ("L40", (181.0, 181.0)),
    ("L4", (121.0, 121.0)),
    ("A10G", (70.0, 70.0)),
    ("A10", (125.0, 125.0)),
    ("V100", (None, 125.0)),
    ("T4", (None, 65.0)),
)


def peak_tflops(device_name, precision):
    """The dense 16-bit peak of `device_name` (TFLOPS) for `precision` ("bf16"/"fp16"), or None."""
    for key, (bf16, fp16) in PEAK_TFLOPS:
        if key.lower() in (device_name or "").lower():
            return bf16 if precision == "bf16" else fp16
    return None


# -- the configuration and its FLOPs --------------------------------------------------------------------
FULL = dict(stage_blocks=(3, 4, 14, 3), stage_filters=(64, 128, 256, 512), image_size=112, batch_size=128,
            steps=30, warmup=5, classes=10_000, embedding_dim=512)
TINY = dict(stage_blocks=(1, 1, 1, 1), stage_filters=(16, 32, 64, 128), image_size=32, batch_size=8,
            steps=3, warmup=1, classes=100, embedding_dim=64)


def forward_macs(cfg):
    """Multiply-accumulates of one image's forward pass: the convolutions, the embedding fc, the head."""
    size, f0 = cfg["image_size"], cfg["stage_filters"][0]
    macs = size * size * 9 * 3 * f0  # stem, stride 1
    channels = f0
    for blocks, filters in zip(cfg["stage_blocks"], cfg["stage_filters"]):
        half = size // 2
        macs += size * size * 9 * channels * filters  # block 0 conv1 (stride 1)
        macs += half * half * 9 * filters * filters  # block 0 conv2 (stride 2)
        macs += half * half * channels * filters  # 1x1 downsample
        macs += (blocks - 1) * 2 * half * half * 9 * filters * filters
        size, channels = half, filters
    macs += size * size * channels * cfg["embedding_dim"]  # fc
    return macs + cfg["embedding_dim"] * cfg["classes"]  # ArcFace cosines


def train_flops(cfg):
    """FLOPs of one image's training step: 2 FLOPs per MAC, x3 (forward, grad input, grad weights)."""
    return 3 * 2 * forward_macs(cfg)


# -- workers -------------------------------------------------------------------------------------------
def _time_steps(step, sync, steps, warmup):
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def keras_worker(cfg, precision):
    backend = os.environ["KERAS_BACKEND"]
    import keras
    import numpy as np

    import keras_facemargin as kfm

    gpu, device = False, "CPU"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        gpu = bool(gpus)
        if gpu:
            device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    elif backend == "jax":
        import jax

        gpu = jax.default_backend() == "gpu"
        device = jax.devices()[0].device_kind if gpu else "CPU"
    else:
        import torch

        gpu = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if gpu else "CPU"
        if not gpu:
            torch.backends.mkldnn.enabled = False  # torch 2.13 CPU oneDNN bug (benchmarks/backends.py)
    policy = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16", "fp32": "float32"}[precision]
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    backbone = kfm.backbones.IResNet(stage_blocks=cfg["stage_blocks"], stage_filters=cfg["stage_filters"],
                                     image_size=cfg["image_size"], embedding_dim=cfg["embedding_dim"])
    model = kfm.FaceRecognizer(backbone, kfm.layers.ArcMarginDense(cfg["classes"]))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    b, s = cfg["batch_size"], cfg["image_size"]
    labels = keras.ops.convert_to_tensor(rng.integers(0, cfg["classes"], b).astype("int32"))
    x = {"images": keras.ops.convert_to_tensor(rng.uniform(-1, 1, (b, s, s, 3)).astype("float32")),
         "labels": labels}
    last = {}

    def step():
        last["logs"] = model.train_on_batch(x, labels, return_dict=True)  # device tensors in, loss out

    seconds = _time_steps(step, lambda: float(last["logs"]["loss"]), cfg["steps"], cfg["warmup"])
    return {"seconds_per_step": seconds, "device": device, "gpu": gpu, "loss": float(last["logs"]["loss"]),
            "runner": f"keras/{backend}", "policy": policy}


def _torch_model(cfg):
    """An insightface-style IResNet in plain PyTorch (IBasicBlock: BN-conv-BN-PReLU-conv(stride)-BN +
    shortcut; a 1x1 conv + BN downsample on the first block of each stage; BN-flatten-fc-BN head)."""
    import torch
    from torch import nn

    def conv(cin, cout, k, stride):
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1, self.conv1 = nn.BatchNorm2d(cin, eps=1e-5), conv(cin, cout, 3, 1)
            self.bn2, self.prelu = nn.BatchNorm2d(cout, eps=1e-5), nn.PReLU(cout)
            self.conv2, self.bn3 = conv(cout, cout, 3, stride), nn.BatchNorm2d(cout, eps=1e-5)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout, eps=1e-5))

        def forward(self, x):
            y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return y + (x if self.down is None else self.down(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            f = cfg["stage_filters"]
            self.stem = nn.Sequential(conv(3, f[0], 3, 1), nn.BatchNorm2d(f[0], eps=1e-5), nn.PReLU(f[0]))
            layers, cin = [], f[0]
            for blocks, cout in zip(cfg["stage_blocks"], f):
                layers += [Block(cin, cout, 2)] + [Block(cout, cout, 1) for _ in range(blocks - 1)]
                cin = cout
            self.body = nn.Sequential(*layers)
            self.bn = nn.BatchNorm2d(cin, eps=1e-5)
            side = cfg["image_size"] // 16
            self.fc = nn.Linear(cin * side * side, cfg["embedding_dim"])
            self.features = nn.BatchNorm1d(cfg["embedding_dim"], eps=1e-5)
            self.features.weight.requires_grad_(False)  # scale fixed at 1, as insightface

        def forward(self, x, autocast):
            with autocast():
                x = torch.flatten(self.bn(self.body(self.stem(x))), 1)
            return self.features(self.fc(x.float()))  # the embedding head in float32

    return Net()


def torch_native_worker(cfg, precision):
    import contextlib
    import math

    import torch
    import torch.nn.functional as F

    gpu = torch.cuda.is_available()
    dev = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)
    model = _torch_model(cfg).to(dev)
    centres = torch.nn.Parameter(torch.randn(cfg["classes"], cfg["embedding_dim"], device=dev) * 0.01)
    memory = torch.channels_last if gpu else torch.contiguous_format
    model = model.to(memory_format=memory)
    params = list(model.parameters()) + [centres]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=dtype)

    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    b, s = cfg["batch_size"], cfg["image_size"]
    images = torch.empty(b, 3, s, s, device=dev).uniform_(-1, 1).contiguous(memory_format=memory)
    labels = torch.randint(0, cfg["classes"], (b,), device=dev)
    scale, margin = 64.0, 0.5
    last = {}

    def step():
        emb = model(images, autocast)
        cos = F.linear(F.normalize(emb), F.normalize(centres)).clamp(-1 + 1e-7, 1 - 1e-7)  # fp32, as PartialFC
        target = cos.gather(1, labels[:, None])
        theta = torch.acos(target)
        logits = cos.scatter(1, labels[:, None], torch.cos(theta + margin)) * scale
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5)  # as arcface_torch
        scaler.step(opt)
        scaler.update()
        last["loss"] = loss

    def sync():
        if gpu:
            torch.cuda.synchronize()

    seconds = _time_steps(step, sync, cfg["steps"], cfg["warmup"])
    loss = float(last["loss"])
    assert math.isfinite(loss), loss
    return {"seconds_per_step": seconds, "device": torch.cuda.get_device_name(0) if gpu else "CPU", "gpu": gpu,
            "loss": loss, "runner": "plain torch", "policy": precision}


# -- parent --------------------------------------------------------------------------------------------
def _gpu_present():
    if not shutil.which("nvidia-smi"):
        return False
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and "GPU" in proc.stdout


def _installed(runner):
    return importlib.util.find_spec("torch" if runner == "torch-native" else runner) is not None


def run_runner(runner, cfg, precision, timeout):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                           os.environ.get("PYTHONPATH", "")]))
    env["KERAS_BACKEND"] = "torch" if runner == "torch-native" else runner
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", runner, "--precision", precision,
           "--config", json.dumps(cfg)]
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-3:] or [f"exit {proc.returncode}"]
        return {"error": " | ".join(tail)[-500:]}
    out = json.loads(lines[-1][len("RESULT "):])
    out["wall_s"] = time.time() - start
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", nargs="+", default=list(RUNNERS), choices=RUNNERS)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--tiny", action="store_true", help="the tiny CPU smoke configuration")
    p.add_argument("--force-full", action="store_true", help="IResNet-50 even without a GPU")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps", type=int, help="timed steps (after the warm-up steps)")
    p.add_argument("--warmup", type=int)
    p.add_argument("--classes", type=int)
    p.add_argument("--peak-tflops", type=float, help="the device's 16-bit peak, if not in the table")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per backend")
    p.add_argument("--worker", choices=RUNNERS, help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cfg = json.loads(args.config)
        fn = torch_native_worker if args.worker == "torch-native" else keras_worker
        out = fn(cfg, args.precision)
        out["images_per_s"] = cfg["batch_size"] / out["seconds_per_step"]
        print("RESULT " + json.dumps(out), flush=True)
        return 0

    gpu = _gpu_present()
    tiny = args.tiny or (not gpu and not args.force_full)
    cfg = dict(TINY if tiny else FULL)
    for key in ("batch_size", "steps", "warmup", "classes"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    load = os.getloadavg()
    if tiny:
        why = "--tiny" if args.tiny else "no GPU found (nvidia-smi)"
        print(f"{why}: the TINY configuration on the CPU: IResNet {cfg['stage_blocks']} x {cfg['stage_filters']}, "
              f"{cfg['image_size']}x{cfg['image_size']}, batch {cfg['batch_size']}, {cfg['steps']} steps; a smoke "
              "test of the code, not a throughput figure.", flush=True)
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, {os.cpu_count()} CPUs; precision {args.precision}; "
          f"forward {forward_macs(cfg) / 1e9:.2f} GMAC/image, training {train_flops(cfg) / 1e9:.1f} GFLOP/image",
          flush=True)
    results = {}
    for runner in args.backends:
        if not _installed(runner):
            print(f"{runner}: not installed, skipped", flush=True)
            continue
        results[runner] = r = run_runner(runner, cfg, args.precision, args.timeout)
        if "error" in r:
            print(f"{runner}: FAILED: {r['error']}", flush=True)
        else:
            print(f"{runner}: {r['images_per_s']:.1f} images/s ({1000 * r['seconds_per_step']:.1f} ms/step, "
                  f"{r['device']}, {r['policy']}, loss {r['loss']:.3f}, {r['wall_s']:.0f} s in all)", flush=True)
    print_table(results, cfg, args, tiny)
    return 0 if results and all("error" not in r for r in results.values()) else 1


def print_table(results, cfg, args, tiny):
    base = results.get("tensorflow", {}).get("images_per_s")
    name = "IResNet-50" if cfg["stage_blocks"] == FULL["stage_blocks"] else f"IResNet {cfg['stage_blocks']}"
    print(f"\n{name}, {cfg['image_size']}x{cfg['image_size']}, batch {cfg['batch_size']}, ArcFace head "
          f"{cfg['classes']:,} classes, {args.precision}, {cfg['steps']} timed steps after {cfg['warmup']}"
          + (" (TINY CPU configuration)" if tiny else "") + "\n")
    print("| runner | device | images/s | x TF | TFLOPS | of peak |")
    print("|---|---|---|---|---|---|")
    for runner, r in results.items():
        if "error" in r:
            print(f"| {runner} | - | failed | - | - | - |")
            continue
        tflops = r["images_per_s"] * train_flops(cfg) / 1e12
        peak = args.peak_tflops or (peak_tflops(r["device"], args.precision) if r["gpu"] else None)
        ratio = f"{r['images_per_s'] / base:.2f}" if base else "-"
        frac = f"{100 * tflops / peak:.1f}% of {peak:g}" if peak else "- (no peak known)"
        print(f"| {r['runner']} | {r['device']} | {r['images_per_s']:.1f} | {ratio} | {tflops:.3f} | {frac} |")


if __name__ == "__main__":
    sys.exit(main())
