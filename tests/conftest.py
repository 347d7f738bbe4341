"""Shared test settings."""
import torch

# The tests use tiny tensors, where thread start-up dominates: one thread is faster and
# keeps the suite steady on a shared 2-core machine.
torch.set_num_threads(1)
