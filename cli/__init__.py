"""The kvmcore command line (installed as kvmcore.cli): a thin typer layer
over the library; every command is a call a Python user could make too."""
