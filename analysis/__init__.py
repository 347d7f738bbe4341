"""CLI, experiment registry, result cache, metrics, figures, plot style and report writer.
The only package in lora-limits that talks to the terminal and the disk."""
