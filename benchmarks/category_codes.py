"""How well PSLDH's category network separates its codes under different training settings (no
hashing network is trained): minimum and mean pairwise Hamming distance of G = sgn(Ĝ) for the
panel's label counts (10, 21, 24) at 16, 32 and 64 bits, two seeds each (the min column shows
both seeds' minima). Prints one line per setting (it writes no file); the panel page quotes it.

    python benchmarks/category_codes.py [setting ...]
"""
import sys
import time

import torch

from dchml.method.methods import get_method
from dchml.method.models import HashModel
from dchml.train import TrainConfig

SETTINGS = {
    "default": {},
    "steps5k_tol0": dict(proxy_steps=5000, proxy_tol=0.0),
    "lr1e-2": dict(proxy_lr=1e-2),
    "lr1e-2_5k_tol0": dict(proxy_lr=1e-2, proxy_steps=5000, proxy_tol=0.0),
    "beta0.1": dict(beta=0.1),
    "beta0.1_lr1e-2_5k": dict(beta=0.1, proxy_lr=1e-2, proxy_steps=5000, proxy_tol=0.0),
    "beta1_lr1e-2_5k": dict(beta=1.0, proxy_lr=1e-2, proxy_steps=5000, proxy_tol=0.0),
    "paper_sgd": dict(proxy_optimizer="sgd", proxy_lr=1e-3, proxy_steps=200, proxy_tol=0.0),
    # torch's default Linear init, as the public Label_net (its Xavier init is commented out)
    "torchinit": dict(_init="torch"),
    "torchinit_5k_tol0": dict(_init="torch", proxy_steps=5000, proxy_tol=0.0),
    "torchinit_lr1e-2_5k": dict(_init="torch", proxy_lr=1e-2, proxy_steps=5000, proxy_tol=0.0),
}
CASES = [(10, 16), (10, 64), (21, 16), (21, 32), (21, 64), (24, 16), (24, 32), (24, 64)]


def main(names):
    torch.set_num_threads(1)
    for name in names or list(SETTINGS):
        out = []
        for c, k in CASES:
            mins, means, steps, secs = [], [], [], []
            for seed in (0, 1):
                settings = dict(SETTINGS[name])
                init = settings.pop("_init", None)
                cfg = TrainConfig(method="psldh", bits=k, seed=seed, **settings)
                torch.manual_seed(seed)  # as a run: the category network is the first module built after seeding
                model = HashModel(bits=k, n_labels=c, image_dim=8, modalities=("image",))
                if init == "torch":
                    model.phnet.net[0].reset_parameters()
                    model.phnet.net[2].reset_parameters()
                began = time.perf_counter()
                diag = get_method("psldh").make_category_codes(model, cfg)
                secs.append(time.perf_counter() - began)
                mins.append(diag["min_hamming"])
                means.append(diag["mean_hamming"])
                steps.append(diag["steps"])
            out.append(f"c{c}/k{k}: min {min(mins):.0f},{max(mins):.0f} mean {sum(means) / 2:.1f} steps {max(steps)}")
        print(f"{name:20s} " + " | ".join(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
