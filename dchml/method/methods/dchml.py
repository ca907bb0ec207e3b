"""DCHML (docs/spec.md §1-§5) and the paper's two ablations, DCHML_Q (gamma = 0) and DCHML_P (the
pairwise proxy loss in place of l_S): PHNet proxies, alternating image and text passes on eq. 16's
per-step loss, and the shared binary targets C updated after every epoch."""
from __future__ import annotations

from ..config import PAPER_RECIPE
from ..objective import LossWeights, full_objective, step_loss
from ..passes import update_codes
from ..proxies import train_proxies
from .base import Method

DCHML_PARAMS = {"eta": 0.3, "mu": 0.3, "lam": 0.001, "gamma": 0.01, "alpha": 0.05, "beta": 0.1}


class DCHML(Method):
    name = "dchml"
    title = "DCHML"
    cross_modal = True
    params = DCHML_PARAMS
    terms = ("intra", "inter", "quant")
    category_net = True
    default_backbone = "alexnet"
    paper_recipe = PAPER_RECIPE  # docs/spec.md §4
    summary = "cross-modal: margin-dynamic-softmax loss on PHNet proxies (TKDE 2023)"

    def weights(self, cfg) -> LossWeights:
        return LossWeights.for_method(self.name, eta=cfg.eta, mu=cfg.mu, lam=cfg.lam, gamma=cfg.gamma)

    def make_category_codes(self, model, cfg, log=None) -> dict:
        return train_proxies(model, cfg, log)

    def pass_loss(self, run, modality: str):
        other = run.stored["text" if modality == "image" else "image"]
        weights, proxies = self.weights(run.cfg), run.model.proxies

        def loss(out, pos):
            return step_loss(out, other[pos], run.codes_c[pos], proxies, run.labels[pos], weights)
        return loss

    def after_passes(self, run) -> None:
        run.codes_c = update_codes(run.stored["image"], run.stored["text"])

    def objective(self, run) -> dict:
        return full_objective(run.stored["image"], run.stored["text"], run.codes_c, run.model.proxies, run.labels,
                              self.weights(run.cfg))


class DCHMLQ(DCHML):
    name = "dchml_q"
    title = "DCHML_Q"
    summary = "ablation of DCHML without the quantization term (gamma = 0)"


class DCHMLP(DCHML):
    name = "dchml_p"
    title = "DCHML_P"
    summary = "ablation of DCHML with the pairwise proxy loss in place of l_S"
