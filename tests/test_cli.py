"""CLI edge behaviour shared by every command."""

from prefcurate.cli import app


def test_unknown_command_is_one_line_and_exit_2(cli):
    result = cli("no-such-command")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "no-such-command" in result.err


def test_every_command_has_help_with_an_example():
    """sqlite-utils habit: a command without documented usage is a defect."""
    for command in app.registered_commands:
        doc = command.callback.__doc__ or ""
        assert doc.strip(), f"{command.callback.__name__} has no help text"
        assert "Example" in doc, f"{command.callback.__name__} help has no example"
