"""The library names fields, the CLI shows flags: a resumed run that changes its schedule is refused naming
--lr-schedule (the trainer used to say --schedule, a flag that does not exist)."""

import pytest

import mlxsuite  # noqa: F401  (the fast BLAS before mlx.core)
from mlxsuite.cli.flags import with_flags
from mlxsuite.platform.errors import UserError
from mlxsuite.train import trainer
from mlxsuite.train.lm import LMRunSpec


def test_a_changed_setting_on_resume_is_named_by_its_flag(tmp_path):
    folder = tmp_path / "run"
    trainer.open_run(folder, LMRunSpec(out="run", preset="micro"), resume=False, force=False)
    changed = LMRunSpec(out="run", preset="micro", train=trainer.TrainConfig(schedule="linear", steps=7))
    with pytest.raises(UserError) as e:
        trainer.open_run(folder, changed, resume=True, force=False, given={"schedule", "steps"})
    library = str(e.value)
    assert "`schedule` linear (the run has cosine)" in library and "--" not in library
    shown = with_flags(library)
    assert shown.startswith("--resume continues a run with the settings it began with; these differ: ")
    assert "--lr-schedule linear (the run has cosine)" in shown and "--steps 7 (the run has 200)" in shown
    assert shown.endswith("(drop them, or start over with --force)")
