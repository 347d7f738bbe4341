"""Mechanism probes (issue 5's ``mechanism`` experiment): pure functions from a model (base,
single expert, merged or routed; all GPT-built, see :mod:`.capture`) and prompts to plain
tensors and dicts. They never print, write files or seed global RNGs; the linear probe's
split takes an explicit ``torch.Generator``.

- :mod:`.capture`: read positions, residual stream, inputs of any linear map (hooks).
- :mod:`.lens`: logit lens and the per-layer rank / top-1 of a target (e.g. the bridge).
- :mod:`.linear`: per-layer linear probes with a majority-class chance level.
- :mod:`.keys`: T2 key overlaps ``<v2, v'>/||v2||^2`` at an adapted map, delta read-outs.
- :mod:`.router`: Arrow router weights per role, layer and token, for heatmaps.
"""
from toymodels.probes.capture import (Position, at_position, map_inputs, positions, prompt_end,
                                      residual_stream, run_with_cache)
from toymodels.probes.keys import (adapter_keys, answer_direction, delta_readout, key_overlap,
                                   t2_key_overlap)
from toymodels.probes.lens import logit_lens, target_rank
from toymodels.probes.linear import fit_probe, linear_probe, probe_layers, split_indices
from toymodels.probes.router import router_heatmap

__all__ = ["Position", "adapter_keys", "answer_direction", "at_position", "delta_readout", "fit_probe",
           "key_overlap", "linear_probe", "logit_lens", "map_inputs", "positions", "probe_layers",
           "prompt_end", "residual_stream", "router_heatmap", "run_with_cache", "split_indices",
           "t2_key_overlap", "target_rank"]
