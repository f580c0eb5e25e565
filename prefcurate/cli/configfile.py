"""``--config FILE``: a command's settings from a YAML file; a flag typed on the command line wins.

A config file is a mapping from flag names (``lr``, ``max_length`` or ``max-length``) to values,
as YAML (JSON is YAML too)::

    # train.yaml: prefcurate train --config train.yaml
    split_dir: splits/uf
    model: path/to/Qwen2.5-0.5B-Instruct
    out: runs/qwen
    beta: 0.01
    label_smoothing: 0.1
    lr: 5.0e-7
    eval_every: 100
    report_to: tensorboard

``prefcurate train --config runs/qwen/run.json`` replays a run: run.json records every setting
under ``config``, which is read as the file's settings (less ``resume`` and ``force``, which say
how the recorded run was started, not what it trained); ``--out runs/replay`` then writes the
replay beside it.

The values become the command's defaults (click's ``default_map``), so the order of precedence
is: the command line, the environment, the file, the built-in default. Each value is checked
with its flag's own type before anything runs, and an unknown name is refused: a typo in a config
file never silently trains with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prefcurate.base.errors import InputError

#: Settings of a run that a replay from run.json does not take: how the recorded run started.
REPLAY_SKIPPED = ("resume", "force")
#: Per command, the settings a file may hold that have no flag (``train``: allowed_token_ids);
#: the command reads them from ``ctx.meta[EXTRAS]``.
EXTRA_SETTINGS: dict[str, tuple[str, ...]] = {}
EXTRAS = "prefcurate.config_extras"
CONFIG_HELP = (
    "Read the settings from a YAML file (or a run's run.json, to replay it); flags typed here "
    "override the file."
)


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in ``path``, by parameter name; a run.json gives its ``config``."""
    import yaml

    fix = "pass a YAML file of flag: value lines, or a run's run.json"
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the config file ({exc.strerror})", where=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else path
        raise InputError("the config file is not valid YAML", where=where, fix=fix) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise InputError("the config file must be a mapping of settings", where=path, fix=fix)
    if isinstance(document.get("config"), dict) and "status" in document:  # a run's run.json
        document = {k: v for k, v in document["config"].items() if k not in REPLAY_SKIPPED}
    return {str(key).lstrip("-").replace("-", "_"): value for key, value in document.items()}


def load_config_file(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config``'s callback (eager): the file's settings become the command's defaults."""
    if value is None:
        return None
    settings = read_config_file(value)
    params = {p.name: p for p in ctx.command.params if p.name != "config_file"}
    extras_allowed = EXTRA_SETTINGS.get(ctx.command.name or "", ())
    defaults, extras = {}, {}
    for key, setting in settings.items():
        if key in params:
            if isinstance(setting, str) and getattr(params[key], "multiple", False):
                setting = [setting]  # a repeatable flag given once: `export: trl,openrlhf`
            if setting is not None:
                _check_type(ctx, params[key], setting, value)
                defaults[key] = setting
        elif key in extras_allowed:
            extras[key] = setting
        else:
            raise InputError(
                f"unknown setting {key!r} in the config file",
                where=value,
                fix=f"use the names of prefcurate {ctx.command.name}'s flags (see --help)",
            )
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[EXTRAS] = extras
    return value


def _check_type(ctx: typer.Context, param: Any, setting: Any, path: Path) -> None:
    """The flag's own type accepts ``setting`` (else one line naming the file and the name)."""
    try:
        param.process_value(ctx, setting)
    except Exception as exc:  # noqa: BLE001 - click's BadParameter and the types' own errors
        message = getattr(exc, "message", None) or str(exc)
        raise InputError(
            f"bad value for {param.name!r} in the config file: {message}",
            where=path,
            fix=f"see prefcurate {ctx.command.name} --help for what it takes",
        ) from None


ConfigFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=CONFIG_HELP,
        callback=load_config_file,
        is_eager=True,
        show_default=False,
        rich_help_panel="Config file",
    ),
]
