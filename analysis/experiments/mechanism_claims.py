"""Claims of ``mechanism`` (one value per seed), read from its results: T2's key overlap in the
toy GPT (MECH-1, MECH-1-cot) and whether the averaged {AB, BC} model resolves the new bridge B
inside the network (MECH-2 by the logit lens, MECH-2-probe by a linear probe), each of the last
two read against a positive control: the same instrument finding the base model's OWN bridge
r1(A) on the same latent R prompts, a bridge the base must resolve to answer its held-out
chains. An instrument that misses that bridge cannot show the absence of the new one, and the
claim is then "not testable".
"""
from __future__ import annotations

import numpy as np

from analysis.registry import Ceiling, ClaimMeasure, Result
from analysis.stats import ACCURACY
from analysis.verdict import Claim

# instrument -> (the new bridge B read in a model, the base's own bridge r1(A) read in the base)
INSTRUMENTS = {"lens": ("lens_bridge_top1", "lens_old_bridge_top1"),
               "probe": ("probe_bridge_acc", "probe_old_bridge_acc")}
BRIDGE_MARGIN = 0.25


def _per_seed(results: list[Result], fmt: str, value) -> list[float]:
    seeds: dict[int, list[float]] = {}
    for r in results:
        if r.config.fmt == fmt:
            seeds.setdefault(r.config.seed, []).append(value(r.result))
    return [float(np.mean(v)) for _, v in sorted(seeds.items())]


def key_excess(fmt: str):
    """Per seed: max over layers of (two-hop - control) key overlap, average/hops, mean over splits."""
    def excess(res: dict) -> float:
        keys = res["models"]["average/hops"]["keys"]
        return float(np.max(np.subtract(keys["two_hop"], keys["control"])))

    def measure(results: list[Result]) -> list[float]:
        return _per_seed(results, fmt, excess)
    measure.__name__ = f"key_excess_{fmt}"
    return measure


def _inner_max(res: dict, model: str, key: str) -> float:
    return max(res["models"][model][key][1:-1])  # the embedding (0) and the unembedding input (-1) left out


def bridge_inside(results: list[Result]) -> list[float]:
    """Latent: max over inner layers of the logit-lens top-1 of the new bridge, average/hops."""
    return _per_seed(results, "latent", lambda res: _inner_max(res, "average/hops", "lens_bridge_top1"))


def _familiar(results: list[Result]) -> list[Result]:
    return [r for r in results if r.config.familiarity == "R"]  # the only split with an old bridge r1(A)


def probe_bridge_inside(results: list[Result]) -> list[float]:
    """Latent R (a probe needs familiar bridges as classes): max over inner layers of the linear
    probe's accuracy on the new bridge B, average/hops."""
    return _per_seed(_familiar(results), "latent", lambda res: _inner_max(res, "average/hops", "probe_bridge_acc"))


def old_bridge_seen(instrument: str):
    """MECH-2's positive control, per seed: on latent R prompts, how often ``instrument`` (logit
    lens top-1 or linear probe) finds the BASE model's own bridge r1(A), which it must resolve to
    answer its held-out chains, max over inner layers. An instrument that does not find this
    bridge cannot show the absence of the new one."""
    key = INSTRUMENTS[instrument][1]

    def measure(results: list[Result]) -> list[float]:
        return _per_seed(_familiar(results), "latent", lambda res: _inner_max(res, "base", key))
    measure.__name__ = f"old_bridge_seen_{instrument}"
    return measure


def positive_control(instrument: str) -> Ceiling:
    what = "logit-lens top-1 share" if instrument == "lens" else "linear-probe accuracy"
    return Ceiling(f"positive control: the base model's {what} of its own bridge r1(A) on latent R prompts (max "
                   "over inner layers)", old_bridge_seen(instrument), BRIDGE_MARGIN)


def mech2_detail(results: list[Result]) -> str:
    """The positive control and the probe beside MECH-2's measure (latent, R, mean over seeds)."""
    rs = [r for r in _familiar(results) if r.config.fmt == "latent"]
    if not rs:
        return "no latent R results: the positive control (the base's old bridge r1(A)) was not measured"

    def mean(model: str, key: str) -> float:
        return float(np.mean([_inner_max(r.result, model, key) for r in rs]))
    chance = np.mean([r.result["probe_chance"] for r in rs])
    return (f"latent R, max over inner layers, mean over {len(rs)} seeds: logit-lens top-1 share of the old bridge "
            f"r1(A) in the base {mean('base', 'lens_old_bridge_top1'):.2f} (the lens's positive control) and in "
            f"average/hops {mean('average/hops', 'lens_old_bridge_top1'):.2f}; of the new bridge B in average/hops "
            f"{mean('average/hops', 'lens_bridge_top1'):.2f}; a linear probe fit on the base's familiar chains reads "
            f"the old bridge in the base at {mean('base', 'probe_old_bridge_acc'):.2f} (the probe's positive control) "
            f"and the new bridge in average/hops at {mean('average/hops', 'probe_bridge_acc'):.2f} (majority-class "
            f"chance {chance:.2f}). For comparison, B in single/AB (which knows A -> B) by lens "
            f"{mean('single/AB', 'lens_bridge_top1'):.2f} / probe {mean('single/AB', 'probe_bridge_acc'):.2f}, and in "
            f"single/AC (answers the composed questions itself, composed "
            f"{np.mean([r.result['models']['single/AC']['composed'] for r in rs]):.2f}) by lens "
            f"{mean('single/AC', 'lens_bridge_top1'):.2f} / probe {mean('single/AC', 'probe_bridge_acc'):.2f}: where "
            "these are low too, a model can answer without a readable bridge, and 'B not resolved' does not by "
            "itself mean 'does not compose'")


def claims() -> tuple[ClaimMeasure, ...]:
    return (
        ClaimMeasure(Claim("MECH-1", "T2 in the toy GPT (latent): at every MLP, the averaged {AB, BC} model's key "
                           "on a true two-hop prompt overlaps the BC expert's key no more than control prompts' "
                           "keys do", "max over layers of (two-hop - control) T2 coefficient <v2,v'>/||v2||^2, "
                           "average/hops, mean over splits", "below", 0.1,
                           "T2 writes the BC edit's output as a2 * delta_2 with a2 = <v2,v'>/||v2||^2 = 1 on the "
                           "expert's own prompt 'B r2', so 0.1 is a tenth of the edit's full effect: a convention "
                           "for an excess over controls too small to be composition"),
                     key_excess("latent"), ("mechanism_keys",)),
        ClaimMeasure(Claim("MECH-1-cot", "with chain of thought the bridge B is in context, so at the answer "
                           "position the two-hop key overlaps the BC expert's key more than controls do (the "
                           "'bridge' T2 says a single pass lacks)", "max over layers of (two-hop - control) T2 "
                           "coefficient, average/hops, CoT, mean over splits", "above", 0.1,
                           "the scale of MECH-1: 0.1 is a tenth of the BC edit's full effect (a2 = 1 on 'B r2', "
                           "T2), a convention for an excess over controls that counts"), key_excess("cot"),
                     ("mechanism_keys",)),
        ClaimMeasure(Claim("MECH-2", "the averaged {AB, BC} model does not resolve the new bridge B inside the "
                           "network on latent two-hop prompts, read by the logit lens", "max over inner layers of the logit-lens top-1 "
                           "share of B, average/hops, mean over splits", "below", 0.25,
                           "a convention: 0.25 is 2 of a split's 8 composed prompts with B as the logit lens's "
                           "top-1 entity at some inner layer, far above chance (1 / #entity tokens, under 0.01)"),
                     bridge_inside, ("mechanism_bridge",), mech2_detail, ACCURACY, positive_control("lens")),
        ClaimMeasure(Claim("MECH-2-probe", "the averaged {AB, BC} model does not resolve the new bridge B inside the "
                           "network on latent two-hop prompts, read by a linear probe", "max over inner layers of "
                           "a linear probe's accuracy on B (probe fit on the base's familiar chains 'e r1 r -> "
                           "r1(e)'), average/hops, latent R", "below", BRIDGE_MARGIN,
                           "the scale of MECH-2: 0.25 is 2 of a split's 8 composed prompts with B read at some "
                           "inner layer, far above the probe's majority-class chance (about 0.04)"),
                     probe_bridge_inside, ("mechanism_bridge",), mech2_detail, ACCURACY, positive_control("probe")),
    )
