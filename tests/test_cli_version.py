"""The `bay` entry point answers."""

from typer.testing import CliRunner

from servicebay import __version__
from servicebay.cli.main import app


def test_version_prints_package_version() -> None:
    """`bay version` prints the installed version."""
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__
