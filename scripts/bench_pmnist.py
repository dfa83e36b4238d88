"""Training throughput of the pmnist experiment against PyTorch, measured in one run.

    python -m scripts.bench_pmnist [--norms layer none batch] [--batch-sizes 128 4]

lnorm side: the real thing end to end — `experiments.pmnist.build` on a synthetic dataset in
the MNIST file format, trained by `lnorm.trainer.train` (data pipeline, chunked compiled steps,
metric fetches, progress bar off), after a warm-up run that compiles the step. PyTorch side:
the same MLP and optimiser (`torch.optim.Adam(fused=True)`), batches gathered from the same
in-memory arrays, a plain Python loop. Prints examples/s for each and the ratio lnorm/torch.
Baseline named in the output: PyTorch (CPU build) in the same process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from experiments.pmnist import build
from experiments.run import resolve
from lnorm.data.mnist import read_pair, write_synthetic
from lnorm.trainer import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRAIN_EXAMPLES = 20_000


def lnorm_throughput(norm: str, batch_size: int, steps: int, data: Path, work: Path) -> float:
    overrides = [
        "+exp=pmnist", f"norm={norm}", f"data.batch_size={batch_size}",
        f"data.manual_dir={data}", f"data.data_dir={work / 'prepared'}",
        "data.verify_md5=false", "data.validation_size=1000",
        f"train.log_every={steps}", f"train.checkpoint_every={10 * steps}",
        "train.progress=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    conf, _, _ = resolve(cfg)
    timings = []
    # A warm-up run, then the timed one. Same length: the run length is part of the compiled
    # step's cache key (the learning-rate schedule), so a shorter warm-up would leave the timed
    # run compiling its own step.
    for attempt in range(2):
        conf.train.epochs, conf.train.steps, conf.train.eval_every = None, steps, 10 * steps
        task = build(conf, work / f"run-{norm}-{batch_size}-{attempt}")
        task.evaluators = {}
        start = time.perf_counter()
        train(task, conf.train, work / f"run-{norm}-{batch_size}-{attempt}")
        timings.append(time.perf_counter() - start)
    return steps * batch_size / timings[-1]


def torch_throughput(norm: str, batch_size: int, steps: int, images: np.ndarray,
                     labels: np.ndarray) -> float:
    import torch

    def block(din: int, dout: int, normed: bool) -> list:
        if norm == "layer" and normed:
            return [torch.nn.Linear(din, dout, bias=False), torch.nn.LayerNorm(dout, eps=1e-5)]
        if norm == "batch":
            return [torch.nn.Linear(din, dout, bias=False), torch.nn.BatchNorm1d(dout, eps=1e-5)]
        return [torch.nn.Linear(din, dout)]

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        *block(784, 1000, True), torch.nn.ReLU(), *block(1000, 1000, True), torch.nn.ReLU(),
        *block(1000, 10, False),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    rng = np.random.default_rng(0)

    def run(n: int) -> None:
        for _ in range(n):
            idx = torch.from_numpy(rng.integers(0, len(images), batch_size))
            x = x_all[idx].float().div_(255.0)
            loss = torch.nn.functional.cross_entropy(model(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        float(loss.detach())

    run(20)
    start = time.perf_counter()
    run(steps)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["layer", "none", "batch"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 4])
    parser.add_argument("--steps-128", type=int, default=400)
    parser.add_argument("--steps-4", type=int, default=6000)
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_synthetic(work / "idx", num_examples=TRAIN_EXAMPLES, seed=0)
        images, labels = read_pair(data / "train-images-idx3-ubyte.gz",
                                   data / "train-labels-idx1-ubyte.gz")
        images = images.reshape(len(images), -1).copy()  # writable, as torch.from_numpy wants
        labels = labels.astype(np.int64)
        print(f"{'norm':>6} {'batch':>5} {'lnorm ex/s':>11} {'torch ex/s':>11} {'ratio':>6}")
        for batch_size in args.batch_sizes:
            steps = args.steps_128 if batch_size >= 64 else args.steps_4
            for norm in args.norms:
                ours = lnorm_throughput(norm, batch_size, steps, data, work)
                theirs = torch_throughput(norm, batch_size, steps, images, labels)
                print(f"{norm:>6} {batch_size:>5} {ours:>11.0f} {theirs:>11.0f} "
                      f"{ours / theirs:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
