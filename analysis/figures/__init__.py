"""One function per figure: ``results -> Figure`` plus the numbers it plots."""
