"""CLI consistency (issue 13, item 5) for bench, doctor, generate, eval, train, tokenizer and quickstart: help text
for every option, choices checked by the parser, one style for the model argument; and progress rendering when
stderr is not a terminal (plain lines, nothing on stdout)."""

import os
import re
import time
import typing

import pytest
import typer
from conftest import run_cli

from mlxsuite.cli import app, common


def _all_commands(group=None, path=()):
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, path + (name,))
        else:
            yield path + (name,)


COMMANDS = sorted(_all_commands())
ARGUMENTS = {
    "MODEL",
    "[MODEL]",
    "[MODEL]...",
    "KVP",
    "RUN",
    "IMAGE",
    "OUT",
    "HF_DIR",
    "[HF_DIR]",
    "HF_PATH",
    "[OUT]",
    "GGUF",
    "SRC",
    "DIR",
    "FILE",
    "NAME...",
}


def _command(path):
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_has_help_and_the_model_argument_one_name(path):
    cmd = _command(path)
    assert cmd.help
    for p in cmd.params:
        if p.name == "help":
            continue
        assert getattr(p, "help", None), f"{' '.join(path)}: {p.opts} has no help text"
        if p.param_type_name == "argument":
            assert p.metavar and p.metavar.isupper() and p.metavar in ARGUMENTS, (path, p.metavar)
        if "--device" in p.opts:
            assert typing.get_args(p.type_descriptor.annotation) == ("cpu", "gpu")
        if "--dtype" in p.opts:
            assert typing.get_args(p.type_descriptor.annotation) == ("float32", "bfloat16", "float16")


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "ttft", "micro", "--device", "tpu"],
        ["bench", "ttft", "micro", "--dtype", "int8"],
        ["bench", "ttft", "micro", "-o", "html"],
        ["train", "--out", "x", "--device", "tpu"],
        ["kvp", "train", "micro", "--out", "x", "--device", "tpu"],
        ["kvp", "eval", "x", "--device", "tpu"],
        ["convert", "from-hf", "x", "y", "--dtype", "int8"],
        ["train", "--out", "x", "--lr-schedule", "step"],
    ],
)
def test_choices_are_checked_by_the_parser(capsys, args):
    code, stdout, stderr = run_cli(capsys, *args)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1
    assert re.match(r"error: Invalid value for '(--device|--dtype|--lr-schedule|--output' / '-o)'", stderr)


def test_help_shows_the_choices(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = run_cli(capsys, "bench", "ttft", "--help")
    assert code == 0 and "<cpu|gpu>" in stdout and "<float32|bfloat16|float16>" in stdout and "[MODEL]..." in stdout


def test_training_progress_is_plain_lines_when_not_a_terminal(capsys, monkeypatch):
    """What `mlxsuite train … 2> log` shows: a line when training starts, then every PLAIN_EVERY seconds (step,
    loss, tok/s, elapsed, ETA), and the last step; eval lines as they come; nothing on stdout."""
    monkeypatch.setattr(common, "PLAIN_EVERY", 0.05)
    with common.TrainProgress(label="train") as progress:
        progress("start", {"step": 0, "steps": 40, "rank": 0, "world": 1})
        for step in range(10, 41, 10):
            progress("step", {"step": step, "loss": 5.0 - step / 20, "tokens_per_s": 1234.0})
            time.sleep(0.06 if step != 20 else 0.0)
        progress("eval", {"step": 40, "ce": 3.25})
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert re.fullmatch(r"train step  10/40  loss 4\.500  1,234 tok/s  elapsed 0:00:00(  ETA 0:00:\d\d)?", lines[0])
    assert lines[-2].startswith("train step  40/40  loss 3.000") and "ETA" not in lines[-2]
    assert lines[-1] == "step 40: val ce 3.2500"
    steps = [line.split()[2] for line in lines if line.startswith("train step")]
    assert steps[:2] == ["10/40", "20/40"] and steps[-1] == "40/40" and len(steps) in (3, 4)  # 30: too soon
    assert "\x1b" not in err


def test_progress_bar_on_a_terminal_is_rich(monkeypatch):
    from rich.console import Console

    console = Console(force_terminal=True, width=100)
    p = common.Progress(console=console)
    assert not p.plain and not p.disable
    with open(os.devnull, "w") as devnull:
        p = common.Progress(console=Console(file=devnull))
        assert p.plain and p.disable  # rich's bar off, plain lines on


def test_help_at_80_columns_shows_every_option_whole(monkeypatch):
    """Every command's --help at COLUMNS=80: each option's full long name(s), choices unbroken, no `<bool>`
    metavar on plain flags."""
    monkeypatch.setenv("COLUMNS", "80")
    root = typer.main.get_command(app)
    for path in COMMANDS:
        cmd = root
        for name in path:
            cmd = cmd.commands[name]
        ctx = cmd.context_class(cmd, info_name=" ".join(("mlxsuite", *path)), terminal_width=80)
        text = cmd.get_help(ctx)
        assert "<bool>" not in text and "╭" not in text, (path, text)  # no rich panel: its columns cut names
        for param in cmd.params:
            if param.param_type_name != "option" or param.hidden:
                continue
            for name in param.opts + param.secondary_opts:
                assert re.search(rf"(^|[\s,/]){re.escape(name)}([\s,=]|$)", text, re.M), (path, name, text)
        for line in text.splitlines():  # a metavar (<a|b|c>, <int>) is never split over two lines
            assert not re.search(r"<[\w.|-]+$", line), (path, line)
