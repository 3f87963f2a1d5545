"""`python -m invsr_cli ...` runs the `invsr` command (also what `accelerate launch -m invsr_cli` starts)."""

from invsr_cli.commands.cli import main

if __name__ == "__main__":
    main()
