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


def test_debug_shows_the_traceback_wherever_it_is_placed(cli, tmp_path):
    """--debug adds the traceback; the exit code and the one-line message stay the same."""
    missing = tmp_path / "missing.jsonl"
    plain = cli("analyze", missing)
    assert plain.code == 2 and plain.err.count("\n") == 1 and "no such file" in plain.err
    for args in (("--debug", "analyze", missing), ("analyze", missing, "--debug")):
        debug = cli(*args)
        assert debug.code == 2
        assert debug.err.startswith("Traceback") and "InputError" in debug.err
        assert debug.err.splitlines()[-1] == plain.err.strip()


def test_exit_codes_do_not_depend_on_debug(cli, tmp_path, monkeypatch):
    """A usage mistake is 2 and an internal error 1, with --debug or without."""
    import prefcurate.data.synth

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    usage = ("analyze", tmp_path / "x.jsonl", "--no-such-flag")
    assert cli(*usage).code == 2 and cli("--debug", *usage).code == 2
    monkeypatch.setattr(prefcurate.data.synth, "write_synth", broken)
    crash = ("synth", tmp_path / "s.jsonl", "--n", "20")
    plain, debug = cli(*crash), cli("--debug", *crash)
    assert plain.code == debug.code == 1
    assert "internal error: RuntimeError: boom" in plain.err and "Traceback" not in plain.err
    assert "Traceback" in debug.err and "internal error: RuntimeError: boom" in debug.err


def test_the_package_exposes_the_library_without_heavy_imports():
    """A notebook user gets the CLI's figures from `import prefcurate`; torch stays unloaded."""
    import subprocess
    import sys

    code = (
        "import sys, prefcurate\n"
        "assert 'polars' not in sys.modules and 'torch' not in sys.modules\n"
        "names = ['open_pairs', 'analyze', 'plan_routes', 'write_route', 'synth']\n"
        "assert all(callable(getattr(prefcurate, n)) for n in names)\n"
        "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
