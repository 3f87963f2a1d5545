"""The commands: the Typer app (cli), doctor, bench, the HTML report, analyse."""
