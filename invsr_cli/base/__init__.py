"""Leaves: errors, atomic files, printable paths, the version. Standard library only; imports nothing of invsr_cli."""
