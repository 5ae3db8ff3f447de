"""Issue #23 §4-5: checks before any work, and the words of the messages.

Every numeric flag of train.py has a declared range (utils.cli.Range on its TrainConfig field), checked by the
flag's parser (argparse's one line, exit 2), by a --config file and by `validate` (sweeps: tests/test_sweep.py);
paths are checked and folders made only after the checks; no stale progress text before an error line; counts,
command hints, --reduce-labels values and the non-finite advice say what is true."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from contextlib import nullcontext
from pathlib import Path
from typing import get_type_hints

import pytest

from engine.config import TrainConfig, parse_args, validate
from utils.cli import Range
from utils.fileio import EXIT_BAD_INPUT, UserError

# The bad values of issue #23 §4 (each a traceback from the optimizer or the model, or accepted silently),
# and the seeds and loss weights refused before.
BAD = [
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
    (["--betas", "1.5", "0.9"], "argument --betas: must be a finite number in [0, 1), got 1.5"),
    (["--betas", "0.9", "-0.1"], "argument --betas: must be a finite number in [0, 1), got -0.1"),
    (["--weight-decay", "-1"], "argument --weight-decay: must be a finite number >= 0, got -1"),
    (["--weight-decay", "nan"], "argument --weight-decay: must be a finite number >= 0, got nan"),
    (["--head-channels", "0"], "argument --head-channels: must be an integer >= 1, got 0"),
    (["--head-channels", "-5"], "argument --head-channels: must be an integer >= 1, got -5"),
    (["--drop-path-rate", "2"], "argument --drop-path-rate: must be a finite number in [0, 1), got 2"),
    (["--drop-path-rate", "-0.5"], "argument --drop-path-rate: must be a finite number in [0, 1), got -0.5"),
    (["--poly-power", "-1"], "argument --poly-power: must be a finite number >= 0, got -1"),
    (["--grad-clip", "-1"], "argument --grad-clip: must be a finite number >= 0, got -1"),
    (["--grad-clip", "nan"], "argument --grad-clip: must be a finite number >= 0, got nan"),
    (["--min-lr", "nan"], "argument --min-lr: must be a finite number >= 0, got nan"),
    (["--num-workers", "-1"], "argument --num-workers: must be an integer >= 0, got -1"),
    (["--crop-size", "-1", "64"], "argument --crop-size: must be an integer >= 0, got -1"),
    (["--seed", "-1"], "argument --seed: must be an integer in [0, 4294967296), got -1"),
    (["--seed", str(2**32)], "argument --seed: must be an integer in [0, 4294967296)"),
    (["--lambda-dice", "nan"], "argument --lambda-dice: must be a finite number >= 0, got nan"),
    (["--lambda-boundary", "-5"], "argument --lambda-boundary: must be a finite number >= 0, got -5"),
    (["--aux-weight", "inf"], "argument --aux-weight: must be a finite number >= 0, got inf"),
    (["--boundary-start", "-0.1"], "argument --boundary-start"),
    (["--steal-delta", "nan"], "argument --steal-delta"),
    (["--steal-floor", "-1"], "argument --steal-floor"),
    (["--epochs", "0"], "argument --epochs: must be an integer >= 1, got 0"),
]


def _numeric_fields() -> dict[str, type]:
    """The TrainConfig fields holding numbers (by their type hints, not by engine.config's own list)."""
    numbers = {int, float, tuple[int, int], tuple[float, float]}
    hints = get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if hints[f.name] in numbers}


def test_every_numeric_field_declares_a_range_that_holds_its_default():
    """A new numeric flag cannot forget its range: this lists every int/float field (booleans are not numbers)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    numeric = _numeric_fields()
    assert {"lr", "betas", "seed", "head_channels", "crop_size", "num_workers"} <= set(numeric)
    assert "wandb" not in numeric
    for name in numeric:
        bounds = fields[name].metadata.get("bounds")
        assert isinstance(bounds, Range), f"TrainConfig.{name} declares no bounds=Range(...)"
        default = fields[name].default
        for value in default if isinstance(default, tuple) else (default,):
            assert value in bounds, f"TrainConfig.{name}: default {value} outside {bounds}"


@pytest.mark.parametrize("flags, message", BAD)
def test_a_number_out_of_range_is_argparses_one_line_and_exit_2(flags, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(flags)
    assert stop.value.code == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pytest: error: {message}"), lines


@pytest.mark.parametrize("flags, message", BAD[:12])
def test_the_same_values_in_a_config_file_are_refused_naming_the_file(flags, message, tmp_path):
    name = flags[0][2:].replace("-", "_")
    values = [{"nan": ".nan", "inf": ".inf"}.get(v, v) for v in flags[1:]]  # YAML's spelling
    config = tmp_path / "c.yaml"
    config.write_text(f"{name}: {values[0] if len(values) == 1 else '[' + ', '.join(values) + ']'}\n")
    with pytest.raises(UserError, match=re.escape(f"{config}: {name}: {message}")):
        parse_args(["--config", str(config)])


@pytest.mark.parametrize("name, value", [("lr", math.nan), ("head_channels", 0), ("betas", (0.9, 1.0)),
                                         ("drop_path_rate", 2.0), ("crop_size", (-1, 64)), ("seed", -5)])
def test_validate_checks_the_same_ranges_for_configs_built_in_code(name, value):
    """Presets and TrainConfig(...) in code do not go through the parser."""
    with pytest.raises(UserError, match=rf"^--{name.replace('_', '-')} must be "):
        validate(dataclasses.replace(TrainConfig(), **{name: value}))


def test_edge_values_are_accepted():
    cfg, _ = parse_args(["--seed", "0", "--lambda-boundary", "0", "--aux-weight", "0", "--num-workers", "0",
                         "--poly-power", "0", "--grad-clip", "0", "--betas", "0", "0.999", "--min-lr", "0"])
    assert (cfg.seed, cfg.lambda_boundary, cfg.num_workers, cfg.betas) == (0, 0.0, 0, (0.0, 0.999))
    cfg, _ = parse_args(["--seed", str(2**32 - 1), "--lambda-dice", "1e3", "--drop-path-rate", "0.99"])
    assert cfg.seed == 2**32 - 1 and cfg.drop_path_rate == 0.99


def test_range_membership_matches_explicit_comparisons_on_random_values():
    rng = random.Random(0)
    specials = [math.nan, math.inf, -math.inf, 0.0, 1.0, -1.0]
    for _ in range(200):
        lo, hi = sorted(rng.choice([rng.uniform(-3, 3), -math.inf, math.inf, 0.0]) for _ in range(2))
        lo_open, hi_open = rng.random() < 0.5, rng.random() < 0.5
        r = Range(lo, hi, lo_open, hi_open)
        for x in specials + [rng.uniform(-4, 4) for _ in range(5)] + [v for v in (lo, hi) if math.isfinite(v)]:
            above = x > lo if lo_open else x >= lo
            below = x < hi if hi_open else x <= hi
            expected = not math.isnan(x) and not math.isinf(x) and above and below
            assert (x in r) == expected, (r, x)
            assert (r.refusal(x) is None) == expected


DEMO = ["--preset", "demo", "--no-wandb", "--epochs", "1", "--num-workers", "0", "--head-channels", "8"]


def test_a_missing_sdt_cache_is_refused_before_the_run_dir_is_made(tmp_path):
    """train.main in-process checks the paths too (before: the first batch failed, leaving config.json and
    metrics.jsonl in the run dir)."""
    import train

    out = tmp_path / "new" / "run"
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'absent'}: no such SDT cache folder (--sdt-cache)")):
        train.main([*DEMO, "--sdt-source", "cache", "--sdt-cache", str(tmp_path / "absent"), "--out", str(out)])
    assert not (tmp_path / "new").exists()


def test_an_input_error_removes_the_folders_out_created_and_only_those(tmp_path, monkeypatch):
    import train

    def input_error(*args):
        raise UserError("a bad frame")

    monkeypatch.setattr(train, "train", input_error)  # the run's input error, after the run dir was made
    (tmp_path / "kept").mkdir()
    out = tmp_path / "kept" / "made" / "also made" / "run"
    with pytest.raises(UserError, match="a bad frame"):
        train.main([*DEMO, "--out", str(out)])
    assert (tmp_path / "kept").is_dir() and not list((tmp_path / "kept").iterdir())
    (tmp_path / "kept" / "made" / "other run").mkdir(parents=True)  # a parent holding another run stays
    with pytest.raises(UserError, match="a bad frame"):
        train.main([*DEMO, "--out", str(tmp_path / "kept" / "made" / "run")])
    assert sorted(p.name for p in (tmp_path / "kept" / "made").iterdir()) == ["other run"]


def test_a_run_folder_before_its_first_checkpoint_is_called_a_run_not_an_incomplete_checkpoint(tmp_path):
    """evaluate.py RUN_DIR during the first epoch said "the checkpoint is incomplete (...): copy it again"."""
    from engine.checkpoint_paths import resolve_checkpoint

    run = tmp_path / "C_seed42"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")  # train.py writes both before the first step
    with pytest.raises(UserError, match=re.escape(f"{run}: a run folder without a complete checkpoint yet")) as e:
        resolve_checkpoint(run)
    assert "delete" not in str(e.value)


def test_a_run_folder_whose_checkpoints_are_all_damaged_names_the_newest_and_its_problem(tmp_path):
    """evaluate.py RUN_DIR whose only checkpoint has a bad meta.json (or lacks its weights) said "a run folder
    without a complete checkpoint yet ...; train it first", of a run that was trained."""
    from engine.checkpoint_paths import WEIGHTS_NAME, resolve_checkpoint

    run = tmp_path / "C_seed42"
    for epoch, meta in ((2, {"epoch": 2}), (4, {"epoch": "x"})):
        ckpt = run / "checkpoints" / f"epoch_{epoch:04d}"
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text(json.dumps(meta))
    (run / "checkpoints" / "epoch_0004" / WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(UserError) as e:
        resolve_checkpoint(run)
    assert str(e.value) == (f"{run}: a run folder without a complete checkpoint (the newest, "
                            f"{run / 'checkpoints' / 'epoch_0004'}: meta.json's `epoch` is \"x\", not an integer "
                            ">= 0); "
                            "a checkpoint needs its model.safetensors and a valid meta.json: copy it again, or "
                            "evaluate the run once training has saved a complete one")
    assert "delete" not in str(e.value) and "train it first" not in str(e.value)
    (run / "checkpoints" / "epoch_0004" / WEIGHTS_NAME).unlink()
    with pytest.raises(UserError, match=re.escape(f"epoch_0004: no {WEIGHTS_NAME}); a checkpoint needs")):
        resolve_checkpoint(run)


@pytest.mark.parametrize("terminal", [False, True])
def test_bars_are_cleared_before_an_error_and_kept_on_success(terminal):
    """utils.bars.Bars (train.py, evaluate.py --all, precompute_sdt.py): a rich Progress left its last state
    ("epochs 0/2 ... eta -:--:--") above the error line."""
    import io

    from rich.console import Console

    from utils.bars import Bars
    from utils.console import progress_columns

    def run(fail: bool) -> str:
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal, width=100)
        with pytest.raises(RuntimeError) if fail else nullcontext():
            with Bars(*progress_columns(), console=console) as bars:
                bars.add_task("epochs", total=2)
                if fail:
                    raise RuntimeError("boom")
        bars.stop()  # again: a no-op, no blank line
        console.print("error: the line after")
        return out.getvalue()

    # on a terminal the drawn bar is erased by control codes; what stays visible is what follows the last erase
    visible = run(fail=True).rsplit("\x1b[2K", 1)[-1]
    assert "epochs" not in visible and "-:--:--" not in visible
    assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", visible).strip() == "error: the line after"
    assert "epochs" in run(fail=False).rsplit("\x1b[2K", 1)[-1] or not terminal


def test_train_py_prints_no_progress_text_before_an_error_line(tmp_path, monkeypatch, capfd):
    """Neither HF datasets' "Generating train split" (building the file list of a new dataset) nor the training
    bars' last state come before the error line."""
    import train
    from data_utils.synthetic import generate_dataset

    data = generate_dataset(tmp_path / "data", num_train=4, num_val=2, height=64, width=64)

    def bad_batch(*args, **kwargs):
        raise UserError("a bad batch")

    monkeypatch.setattr(train, "train_micro_step", bad_batch)
    with pytest.raises(UserError, match="a bad batch"):
        train.main([*DEMO, "--no-demo-data", "--data-root", str(data), "--out", str(tmp_path / "run")])
    printed = "".join(capfd.readouterr())
    assert "Generating" not in printed and "examples/s" not in printed
    assert not re.search(r"(epochs|epoch 1/1) .*\d/\d", printed), printed


def test_plural_against_the_english_of_a_few_counts():
    from utils.console import noun_for, plural

    assert [plural(n, "checkpoint") for n in (0, 1, 2)] == ["0 checkpoints", "1 checkpoint", "2 checkpoints"]
    assert plural(1, "process", "processes") == "1 process" and plural(4, "process", "processes") == "4 processes"
    assert (noun_for(1, "seed"), noun_for(3, "seed")) == ("seed", "seeds")


# A counted noun in a printed f-string: "{len(x)} frames" (says "1 frames") or "checkpoint(s)".
COUNTED = re.compile(r"\{len\([^{}]*\)\} [a-z]+s\b|[a-z]\((?:e)?s\)")


def test_no_message_counts_with_a_fixed_plural_or_an_s_in_brackets():
    """"1 checkpoints", "job(s)" (issue #23 §5): counts go through utils.console.plural / noun_for."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted(root.glob("**/*.py")):
        if {"tests", "bench", ".venv", "runs", "data"} & set(path.relative_to(root).parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\bf[\"']", line) and COUNTED.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _hint_args(message: str, command: str) -> list[str]:
    """The words of the command `command ...` quoted in `message` (up to a backquote or ' with ')."""
    import shlex

    start = message.index(command)
    text = re.split(r"`| with this run", message[start:])[0]
    return shlex.split(text)


def test_printed_commands_quote_a_path_with_a_space(tmp_path, capsys):
    """A hint pasted into a shell must give back the path (issue #23 §5): utils.cli.shell_command everywhere."""
    from data_utils import synthetic
    from engine.config import check_paths
    from report.load import load_runs_dir

    folder = tmp_path / "my runs"
    cache = str(tmp_path / "sdt cache")
    cfg, _ = parse_args(["--preset", "demo", "--sdt-source", "cache", "--sdt-cache", cache])
    with pytest.raises(UserError) as error:
        check_paths(cfg)
    words = _hint_args(str(error.value), "python precompute_sdt.py")
    assert words[words.index("--out") + 1] == cache
    folder.mkdir()
    with pytest.raises(UserError) as error:
        load_runs_dir(folder)
    assert _hint_args(str(error.value), "python evaluate.py") == ["python", "evaluate.py", "--all", str(folder)]
    out = tmp_path / "my data"
    assert synthetic.main(["--out", str(out), "--train", "1", "--val", "1", "--height", "64", "--width", "64"]) == 0
    look = capsys.readouterr().out.split("look at them: ")[1].strip()
    assert _hint_args(look, "python")[4] == str(out)
    words = _hint_args(synthetic.hf_train_command(out, 64, 128), "python")
    assert words[words.index("--hf-dataset") + 1] == str(out)


def test_shell_command_round_trips_through_the_shells_split():
    import shlex

    from utils.cli import shell_command

    rng = random.Random(1)
    alphabet = "ab /'\"$*;&|()~-=\\\t"
    for _ in range(200):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8))) for _ in range(rng.randrange(1, 5))]
        assert shlex.split(shell_command(*words)) == words
    assert shell_command("python", "evaluate.py", "--all", Path("my runs")) == "python evaluate.py --all 'my runs'"


@pytest.mark.parametrize("stored, dtype", [(40, "uint8"), (300, "int64")])
def test_reduce_labels_errors_quote_the_value_as_stored(stored, dtype):
    """--reduce-labels shifts 1..N to 0..N-1: a bad value was quoted shifted (the file has 40, the message said 39)."""
    import datasets
    import numpy as np
    from PIL import Image

    from data_utils.classes import ClassTable
    from data_utils.hf import HFFrames

    label = np.ones((4, 8), dtype=dtype)
    label[1, 2] = stored
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 4))], "label": [label.tolist()]})
    frames = HFFrames(ds, "image", "label", ClassTable(names=tuple("abcdefgh"), source="classes.json"),
                      reduce_labels=True, split="train", where="ade [train]")
    with pytest.raises(UserError, match=rf"ade \[train\] row 0, column 'label': label (values \[{stored}\] are "
                                        rf"neither class indices 1\.\.8 \(0 = unlabelled|value {stored} does "
                                        "not fit)") as e:
        frames.read(0)
    assert "or --reduce-labels" not in str(e.value)  # it is given


@pytest.mark.parametrize("grad_clip, advice", [(0.0, "a lower --lr or with --grad-clip (another --out)"),
                                               (1.0, "a lower --lr or a smaller --grad-clip (now 1) (another --out)")])
def test_nonfinite_weights_advise_grad_clip_only_when_it_is_not_given(tmp_path, grad_clip, advice):
    from types import SimpleNamespace

    import torch

    from engine.checkpoint import TrainingProgress, save_checkpoint

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    accelerator = SimpleNamespace(_models=[model], _optimizers=[], unwrap_model=lambda m: m)
    cfg = dataclasses.replace(TrainConfig(), grad_clip=grad_clip, out=str(tmp_path / "run"))
    progress = TrainingProgress()
    progress.epoch = 1
    with pytest.raises(UserError, match="holds nan/inf") as error:
        save_checkpoint(accelerator, cfg, progress, cfg.run_dir, wandb_run_id=None)
    assert str(error.value).endswith(advice)


def test_generating_an_hf_dataset_prints_no_bar_of_hf_datasets(tmp_path, capfd):
    """Only the generator's own bar (no "Saving the dataset (1/1 shards)"), also when train.py makes demo-hf data."""
    from data_utils.synthetic import generate_dataset

    generate_dataset(tmp_path / "hf", num_train=2, num_val=1, height=64, width=64, format="hf")
    assert "Saving the dataset" not in "".join(capfd.readouterr())
