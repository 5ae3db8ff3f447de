"""The entry scripts' command lines: --help and every rejected flag answer before torch & co. are imported,
values that would fail late (or train silently wrong) are refused with one line, one flag name means one thing,
and bad input exits with utils.run_main's code."""
from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from engine.config import parse_args
from utils.fileio import EXIT_BAD_INPUT, RenamedFlag, UserError

HEAVY = {"torch", "timm", "accelerate", "datasets"}


@pytest.mark.parametrize("argv", [
    ("train.py", "--help"),
    ("evaluate.py", "--help"),
    ("precompute_sdt.py", "--help"),
    ("aggregate.py", "--help"),
    ("predict.py", "--help"),
    ("-m", "engine.sweep_local", "--help"),
])
def test_help_answers_before_the_heavy_imports_and_workers_means_dataloader_workers(argv, python_imports):
    """Also: the one flag about workers is --num-workers, and it counts DataLoader workers (as train.py's);
    parallel processes are --jobs. The old spellings (utils.RenamedFlag) are hidden."""
    result, modules = python_imports(*argv)
    assert result.returncode == 0 and "usage:" in result.stdout
    assert not modules & HEAVY, f"{argv} imported {sorted(modules & HEAVY)} before answering --help"
    options = re.findall(r"^  (--[\w-]+)(.*(?:\n {6,}.*)*)", result.stdout, flags=re.MULTILINE)  # (flag, its help)
    helps = {flag: " ".join(text.split()) for flag, text in options}
    assert helps, result.stdout
    assert [flag for flag in helps if "worker" in flag] in ([], ["--num-workers"]), sorted(helps)
    if "--num-workers" in helps:
        assert "DataLoader worker processes" in helps["--num-workers"]
    if "--jobs" in helps:
        assert "DataLoader" not in helps["--jobs"]


@pytest.mark.parametrize("argv, message", [
    (("train.py", "--seed", "-1"), "error: argument --seed: must be an integer in [0, 4294967296), got -1"),
    (("train.py", "--lambda-dice", "nan"), "error: argument --lambda-dice: must be a finite number >= 0, got nan"),
    (("train.py", "--variant", "E"), "invalid choice: 'E'"),
    (("evaluate.py",), "give one checkpoint folder or --all RUNS_DIR"),
    (("precompute_sdt.py", "--out", "x", "--jobs", "0"), "--jobs must be >= 1"),
    (("precompute_sdt.py", "--out", "x", "--workers", "0"), "--jobs must be >= 1"),  # old names: RenamedFlag
    (("evaluate.py", "--all", "x", "--workers", "0"), "--jobs must be >= 1, got 0"),
    (("evaluate.py", "--all", "x", "--loader-workers", "-1"), "--num-workers must be >= 0, got -1"),  # 0 is allowed
    (("evaluate.py", "--all", "x", "--num-workers", "-1"), "--num-workers must be >= 0, got -1"),
    (("aggregate.py", "--out", "x"), "give either RUNS_DIR or --from-csv FILE"),
    (("aggregate.py", "runs", "--out", "x", "--bootstrap", "100000000"), "--bootstrap 100000000: at most 100000"),
    (("predict.py", "CKPT", "img.png"), "give INPUT... and --out DIR (or --export MODEL.onnx)"),
    (("predict.py", "CKPT", "x.png", "--out", "o", "--crop", "8,8"), "--slide needs --crop H,W"),
    (("evaluate.py", "CKPT", "--stride", "4,4"), "--slide needs --crop H,W"),
])
def test_rejected_flags_answer_in_one_line_before_the_heavy_imports(argv, message, python_imports):
    result, modules = python_imports(*argv)
    errors = result.stderr.splitlines()
    assert result.returncode == EXIT_BAD_INPUT  # argparse's refusals and our UserErrors alike
    assert message in errors[-1]
    assert not [line for line in errors if line.startswith("Traceback")]
    assert not modules & HEAVY, f"{argv} imported {sorted(modules & HEAVY)} before refusing it"


@pytest.mark.parametrize("argv, message", [
    (("-m", "engine.sweep_local", "{tmp}/absent.yaml"), "{tmp}/absent.yaml: no such sweep file"),
    (("-m", "data_utils.synthetic", "--out", "{tmp}/a_file"), "{tmp}/a_file: already exists and is not empty"),
])
def test_a_bad_input_file_is_one_error_line_and_exit_code_2(argv, message, tmp_path, python_imports):
    """utils.run_main's contract in the `python -m` tools; the other entry scripts meet it in
    tests/test_faults.py (train.py, evaluate.py, precompute_sdt.py: a bad frame read in their workers) and
    tests/test_aggregate.py::test_cli_error_is_one_line_naming_the_file."""
    (tmp_path / "a_file").write_text("")
    result, _ = python_imports(*(a.format(tmp=tmp_path) for a in argv))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == EXIT_BAD_INPUT and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {message.format(tmp=tmp_path)}")


def test_a_renamed_flag_works_hidden_with_one_warning_line(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--old-jobs", action=RenamedFlag, new="--jobs", dest="jobs", type=int)
    assert parser.parse_args([]).jobs == 1 and capsys.readouterr().err == ""
    for _ in range(2):  # an entry script parses twice (parse_args_first, then main): one warning
        assert parser.parse_args(["--old-jobs", "3"]).jobs == 3
    assert parser.parse_args(["--old-jobs", "3", "--jobs", "4"]).jobs == 4  # the last one given wins
    assert capsys.readouterr().err.splitlines() == [
        "warning: --old-jobs is now --jobs (the old name goes in the next release)"]
    assert "--old-jobs" not in parser.format_help()


def test_the_data_source_flags_are_train_pys_in_every_script(capsys, monkeypatch):
    """--data-root, --hf-dataset, ... are declared once (TrainConfig's fields, engine.config.add_data_source_flags):
    precompute_sdt.py has them all with train.py's defaults, evaluate.py the two that say where the data is, with
    the checkpoint config's as default; every script shows the field's help."""
    import dataclasses

    import evaluate
    import precompute_sdt
    from engine.config import DATA_SOURCE_FIELDS, TrainConfig

    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag: help texts compare whole
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    given = {"data_root": "/data", "hf_dataset": "hf", "image_column": "img", "label_column": "lab",
             "reduce_labels": True, "classes": "c.json"}
    flags = [a for name, value in given.items()
             for a in ([f"--{name.replace('_', '-')}"] + ([] if value is True else [value]))]
    assert {n: getattr(precompute_sdt.parse_args(["--out", "x", *flags]), n) for n in given} == given
    assert {n: getattr(precompute_sdt.parse_args(["--out", "x"]), n) for n in DATA_SOURCE_FIELDS} == {
        n: fields[n].default for n in DATA_SOURCE_FIELDS}
    defaults = evaluate.parse_args(["ckpt"])
    assert (defaults.data_root, defaults.hf_dataset) == (None, None)  # None: the checkpoint config's
    assert evaluate.parse_args(["ckpt", "--data-root", "/data", "--hf-dataset", "hf"]).hf_dataset == "hf"
    for parse, names in ((parse_args, DATA_SOURCE_FIELDS), (precompute_sdt.parse_args, DATA_SOURCE_FIELDS),
                         (evaluate.parse_args, ("data_root", "hf_dataset"))):
        with pytest.raises(SystemExit):
            parse(["--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert all(" ".join(fields[n].metadata["help"].split()) in shown for n in names), shown


# ------------------------------------------------------------------------- no abbreviations, "did you mean"
def _parsers():
    """(name, parse function, arguments that parse) of every entry script, called in-process."""
    import aggregate
    import evaluate
    import precompute_sdt
    from data_utils import inspect as inspect_cli
    from data_utils import synthetic
    from engine import sweep_local
    return [
        ("train.py", parse_args, []),
        ("evaluate.py", evaluate.parse_args, ["ckpt"]),
        ("precompute_sdt.py", precompute_sdt.parse_args, ["--out", "x"]),
        ("aggregate.py", aggregate.parse_args, ["runs", "--out", "x"]),
        ("sweep_local", sweep_local.main, ["absent.yaml"]),
        ("synthetic", synthetic.main, ["--out", "x"]),
        ("inspect", inspect_cli.main, ["--out", "x"]),
    ]


@pytest.mark.parametrize("script, typo, meant", [
    ("train.py", ["--epoch", "2"], "--epochs"),
    ("evaluate.py", ["--batch", "2"], "--batch-size"),
    ("precompute_sdt.py", ["--overwrit"], "--overwrite"),
    ("aggregate.py", ["--boot", "5"], "--bootstrap or --bootstrap-seed"),  # both start so: both named
    ("sweep_local", ["--dry"], "--dry-run"),
    ("synthetic", ["--heigh", "64"], "--height"),
    ("inspect", ["--nu", "2"], "--num"),
])
def test_no_flag_is_abbreviated_and_a_typo_gets_did_you_mean(script, typo, meant, capsys):
    """`--epoch 2` was taken as `--epochs 2` (argparse's allow_abbrev): now every script refuses it, exit 2,
    naming the close flags (utils.cli.ArgumentParser)."""
    parse, valid = next((parse, valid) for name, parse, valid in _parsers() if name == script)
    with pytest.raises(SystemExit) as exit_:
        parse([*valid, *typo])
    assert exit_.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"error: unrecognized arguments: {' '.join(typo)}; did you mean {meant}?"), error


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "precompute_sdt.py", "aggregate.py", "sweep_local",
                                    "synthetic", "inspect"])
def test_every_option_has_help(script, capsys):
    parse = next(parse for name, parse, _ in _parsers() if name == script)
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    options = re.findall(r"^  (-[\w-]+(?:, --[\w-]+)?)((?: [A-Z_{}\[\],.\w-]+)*)(.*(?:\n {6,}.*)*)", text,
                         flags=re.MULTILINE)
    assert options
    without = [flag for flag, _, help_text in options if not help_text.strip()]
    assert not without, f"{script}: no help for {without}"


def test_train_help_is_grouped_one_line_per_flag_mostly_and_without_internal_text(capsys, monkeypatch):
    from engine.config import FLAG_GROUPS, TrainConfig, build_parser
    monkeypatch.setenv("COLUMNS", "120")
    text = build_parser().format_help()
    titles = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["options", "where the settings come from", *FLAG_GROUPS.values()]
    for f in dataclasses.fields(TrainConfig):  # each field in its group, declared beside it
        group = text.split(FLAG_GROUPS[f.metadata["group"]] + ":\n")[1].split("\n\n")[0]
        assert f"--{f.name.replace('_', '-')}" in group
    assert "issue" not in text.lower()
    flag_lines = [line for line in text.splitlines() if line.startswith("  --")]
    continued = [line for line in text.splitlines() if line.startswith(" " * 10)]
    assert len(continued) < len(flag_lines) // 4, "most flags' help should fit one line at 120 columns"


def test_lowercase_variants_and_close_choices():
    assert parse_args(["--variant", "c"])[0].variant == "C"
    assert parse_args(["--head", "SegFormer", "--mixed-precision", "BF16"])[0].head == "segformer"
    from engine.config import build_parser
    parser = build_parser()
    parser.exit_on_error = False
    with pytest.raises(argparse.ArgumentError, match=r"invalid choice: 'uper' \(choose from upernet, segformer, "
                                                     r"fpn\); did you mean upernet\?"):
        parser.parse_args(["--head", "uper"])
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'E'"):
        parser.parse_args(["--variant", "E"])


def test_unknown_backbone_and_class_names_get_did_you_mean():
    from data_utils.classes import ClassTable
    from engine.consensus import protect_indices
    from models.segmentor import _probe
    with pytest.raises(UserError, match=r"unknown backbone 'convnextv2_bse'.*; did you mean convnextv2_base"):
        _probe("convnextv2_bse")
    table = ClassTable(("road", "sidewalk", "pole"))
    with pytest.raises(UserError, match=r"--protect names 'pol'.*; did you mean pole\?$"):
        protect_indices(table, ["pol"], "ckpt")


def test_did_you_mean_ranks_close_matches_and_ignores_case():
    from utils.cli import did_you_mean
    assert did_you_mean("--epoch", ["--epochs", "--eval-every", "--lr"]) == "; did you mean --epochs?"
    assert did_you_mean("Upernet", ["upernet", "fpn"]) == "; did you mean upernet?"
    assert did_you_mean("xyz", ["upernet", "fpn"]) == ""


# ------------------------------------------------------------------------------------ --config, --print-config
FLAGS = ["--preset", "demo", "--variant", "b", "--lambda-dice", "0.5", "--crop-size", "64", "96", "--no-wandb"]
# a mix: preset, a choice in any case, a float, a tuple, a boolean


def test_a_config_file_and_the_same_flags_give_identical_config_json(tmp_path):
    import yaml

    from engine.config import save_config
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"preset": "demo", "variant": "b", "lambda-dice": 0.5,
                                                     "crop_size": [64, 96], "wandb": False}))
    (tmp_path / "c.json").write_text('{"preset": "demo", "variant": "B", "lambda_dice": 0.5, "crop_size": [64, 96], '
                                     '"wandb": false}')
    written = []
    for argv in (FLAGS, ["--config", str(tmp_path / "c.yaml")], ["--config", str(tmp_path / "c.json")]):
        cfg, _ = parse_args(argv)
        save_config(cfg, tmp_path / "config.json")
        written.append((tmp_path / "config.json").read_bytes())
    assert written[0] == written[1] == written[2]
    assert (cfg.variant, cfg.lambda_dice, cfg.crop_size, cfg.wandb, cfg.epochs) == ("B", 0.5, (64, 96), False, 8)


def test_a_runs_config_json_works_as_is_and_flags_override_it(tmp_path):
    from engine.config import save_config
    cfg, _ = parse_args([*FLAGS, "--class-names", "road", "car", "--seed", "123"])
    save_config(cfg, tmp_path / "config.json")  # as train.py writes RUN/config.json: every field, () as []
    assert parse_args(["--config", str(tmp_path / "config.json")])[0] == cfg
    again, _ = parse_args(["--seed", "7", "--config", str(tmp_path / "config.json"), "--lr", "0.01"])
    assert again == dataclasses.replace(cfg, seed=7, lr=0.01)  # the command line wins, wherever it stands
    (tmp_path / "demo.yaml").write_text("preset: demo-hf\nseed: 3\n")
    mixed, _ = parse_args(["--config", str(tmp_path / "demo.yaml"), "--preset", "demo"])  # --preset wins
    assert (mixed.hf_dataset, mixed.backbone, mixed.seed) == ("", "convnextv2_atto", 3)


def test_print_config_prints_yaml_that_gives_back_the_config(tmp_path, capsys):
    import yaml

    from engine.config import config_to_dict
    cfg, _ = parse_args(FLAGS)
    with pytest.raises(SystemExit) as exit_:
        parse_args([*FLAGS, "--print-config"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert yaml.safe_load(text) == config_to_dict(cfg)
    (tmp_path / "printed.yaml").write_text(text)
    assert parse_args(["--config", str(tmp_path / "printed.yaml")])[0] == cfg


@pytest.mark.parametrize("text, message", [
    ("epoch: 2\n", r"c.yaml: unknown setting 'epoch'; did you mean epochs\?"),
    ("lr: fast\n", r"c.yaml: lr: argument --lr: invalid float value: 'fast'"),
    ("head: uper\n", r"c.yaml: head: .*invalid choice: 'uper'.*; did you mean upernet\?"),
    ("- 1\n", r"c.yaml: a config file is a mapping"),
    ("preset: dem\n", r"c.yaml: preset 'dem' is not one of demo, demo-hf; did you mean demo\?"),
    ("seed: [1\n", r"c.yaml: cannot read the config file"),
])
def test_a_bad_config_file_is_one_line_naming_it(text, message, tmp_path):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(UserError, match=message):
        parse_args(["--config", str(tmp_path / "c.yaml")])
    with pytest.raises(UserError, match=r"absent.yaml: no such config file \(--config\)"):
        parse_args(["--config", str(tmp_path / "absent.yaml")])


def test_a_sweep_file_may_name_a_config_file(tmp_path):
    import yaml

    from engine.sweep_local import check_parameters, grid_runs, run_command
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"preset": "demo", "epochs": 3, "lambda_boundary": 0.3}))
    sweep = {"method": "grid", "program": "train.py", "command": ["${interpreter}", "${program}", "${args}"],
             "parameters": {"config": {"value": str(tmp_path / "base.yaml")}, "seed": {"values": [1, 2]}}}
    check_parameters(sweep, "sweep.yaml")
    configs = [parse_args(run_command(sweep, run)[2:])[0] for run in grid_runs(sweep)]
    assert [(c.seed, c.epochs, c.lambda_boundary, c.backbone) for c in configs] == [
        (1, 3, 0.3, "convnextv2_atto"), (2, 3, 0.3, "convnextv2_atto")]


def test_sweep_local_help_shows_the_extra_flags_form_and_index_5_prints_5_of_12(capsys):
    from pathlib import Path

    from engine import sweep_local
    with pytest.raises(SystemExit):
        sweep_local.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[-- TRAIN_FLAGS ...]" in text and "Flags after -- go to every run's train.py" in text
    sweep = str(Path(__file__).resolve().parents[1] / "sweep.yaml")
    assert sweep_local.main([sweep, "--dry-run", "--index", "5"]) == 0
    assert capsys.readouterr().out.startswith("[5/12] ")


# ------------------------------------------------------------- eight common mistakes: one line, exit 2, before torch
# name: (argv, the error line's start); {tmp} is a test folder, {root} a Cityscapes-layout root in it
MISTAKES = {
    "missing data root": (["train.py", "--data-root", "{tmp}/cityscapes"],
                          "error: {tmp}/cityscapes: Cityscapes root does not exist"),
    "wrong classes file": (["train.py", "--data-root", "{root}", "--classes", "{tmp}/classes.json"],
                           "error: {tmp}/classes.json: not a readable JSON classes file"),
    "missing checkpoint": (["evaluate.py", "{tmp}/runs/C_seed42"],
                           "error: {tmp}/runs/C_seed42: no such checkpoint or run folder"),
    "bad config file": (["train.py", "--config", "{tmp}/c.yaml"],
                        "error: {tmp}/c.yaml: cannot read the config file (--config) at line 2, column 1: "
                        "expected ',' or ']'"),
    "unknown flag": (["train.py", "--epoch", "2"],
                     "train.py: error: unrecognized arguments: --epoch 2; did you mean --epochs?"),
    "unknown variant": (["train.py", "--variant", "E"], "train.py: error: argument --variant: invalid choice: 'E'"),
    "bad number": (["train.py", "--lr", "fast"], "train.py: error: argument --lr: invalid float value: 'fast'"),
    "missing sdt cache": (["train.py", "--data-root", "{root}", "--sdt-source", "cache", "--sdt-cache", "{tmp}/sdt"],
                          "error: {tmp}/sdt: no such SDT cache folder (--sdt-cache)"),
}
# The same early path checks in the other entry scripts
OTHER_SCRIPTS = {
    "predict: missing checkpoint": (["predict.py", "{tmp}/ckpt", "{tmp}/x.png", "--out", "{tmp}/o"],
                                    "error: {tmp}/ckpt: no such checkpoint or run folder"),
    "precompute_sdt: missing data root": (["precompute_sdt.py", "--data-root", "{tmp}/cityscapes", "--out", "{tmp}/o"],
                                          "error: {tmp}/cityscapes: Cityscapes root does not exist"),
    "precompute_sdt: missing classes file": (["precompute_sdt.py", "--data-root", "{root}", "--classes",
                                              "{tmp}/absent.json", "--out", "{tmp}/o"],
                                             "error: {tmp}/absent.json: classes file not found"),
    "evaluate: missing --data-root": (["evaluate.py", "{tmp}/runs", "--data-root", "{tmp}/cityscapes"],
                                      "error: {tmp}/cityscapes: Cityscapes root does not exist"),
    "evaluate: missing --veto": (["evaluate.py", "--consensus", "{tmp}/runs", "--veto", "{tmp}/runs/B"],
                                 "error: {tmp}/runs/B: no such checkpoint or run folder"),
    "train: missing --hf-dataset folder": (["train.py", "--hf-dataset", "{tmp}/hf"], "error: {tmp}/hf: no such folder"),
    "train: --hf-dataset a file": (["train.py", "--hf-dataset", "{tmp}/c.yaml"], "error: {tmp}/c.yaml: not a folder"),
}


@pytest.fixture
def mistake(tmp_path):
    """`mistake(argv, line)` -> (argv, line) with {tmp} and {root} filled in, the files they name made."""
    (tmp_path / "root" / "leftImg8bit").mkdir(parents=True)
    (tmp_path / "root" / "gtFine").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "classes.json").write_text('["road", "car"')  # a bracket short
    (tmp_path / "c.yaml").write_text("seed: [1\n")

    def fill(argv, line):
        values = {"tmp": tmp_path, "root": tmp_path / "root"}
        return [a.format(**values) for a in argv], line.format(**values)
    return fill


@pytest.mark.parametrize("name", [*MISTAKES, *OTHER_SCRIPTS])
def test_a_common_mistake_is_one_line_and_exit_2_before_torch_loads(name, mistake, python_imports):
    """Bad paths answered at parse_args_first (utils.fileio), not after ~5 s (30 s on a busy node) of imports."""
    argv, line = mistake(*{**MISTAKES, **OTHER_SCRIPTS}[name])
    result, modules = python_imports(*argv)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith(line), result.stderr
    assert result.stdout == ""
    assert not modules & HEAVY, f"{name}: imported {sorted(modules & HEAVY)} before the error"


@pytest.mark.parametrize("name", MISTAKES)
def test_a_common_mistake_under_a_two_process_launch_is_one_line_and_exit_2(name, mistake):
    """engine.launch (accelerate launch with the scripts' exit codes) on 2 gloo processes: each process meets the
    mistake, one prints it (utils.fileio.print_error), no launcher traceback, table or warning, exit code 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    argv, line = mistake(*MISTAKES[name])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run([sys.executable, "-m", "engine.launch", "--multi_gpu", "--num_processes", "2", *argv],
                            cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), result.stdout + result.stderr


def test_engine_launch_passes_success_through_and_a_crash_keeps_code_1_and_its_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "engine.launch"]
    done = subprocess.run([*launch, "--cpu", "train.py", "--preset", "demo", "--print-config"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "backbone: convnextv2_atto" in done.stdout, done.stderr
    assert "values were not passed" not in done.stderr  # the toolkit's launch defaults
    (tmp_path / "crash.py").write_text("raise RuntimeError('a bug')\n")
    crash = subprocess.run([*launch, "--multi_gpu", "--num_processes", "2", str(tmp_path / "crash.py")], cwd=root,
                           env=env, capture_output=True, text=True, timeout=120)
    assert crash.returncode == 1
    assert "RuntimeError: a bug" in crash.stderr and "Root Cause" in crash.stderr  # the traceback and the table


def test_an_error_line_is_printed_at_once_by_the_first_process_and_late_by_the_others(monkeypatch, capsys):
    """utils.fileio.print_error: LOCAL_RANK 0 (or none: plain python) prints at once; another process waits
    LAUNCHED_ERROR_DELAY_S (the launcher stops it meanwhile when the first one met the same error), then prints:
    an error only it meets is not lost."""
    import time

    from utils import fileio
    monkeypatch.setattr(fileio, "LAUNCHED_ERROR_DELAY_S", 0.2)
    for rank, delayed in ((None, False), ("0", False), ("1", True)):
        if rank is None:
            monkeypatch.delenv("LOCAL_RANK", raising=False)
        else:
            monkeypatch.setenv("LOCAL_RANK", rank)
        start = time.perf_counter()
        fileio.print_error("error: x")
        assert (time.perf_counter() - start >= 0.2) == delayed, rank
        assert capsys.readouterr().err == "error: x\n"


def test_recorded_class_names_need_no_classes_file(tmp_path):
    """A run's config.json records the class names; resuming it after its classes file moved works (DataSource
    reads the recorded names first), so the early check does not ask for the file either."""
    from engine.config import check_paths
    (tmp_path / "leftImg8bit").mkdir()
    (tmp_path / "gtFine").mkdir()
    cfg, _ = parse_args(["--data-root", str(tmp_path), "--classes", str(tmp_path / "moved.json")])
    with pytest.raises(UserError, match="moved.json: classes file not found"):
        check_paths(cfg)
    check_paths(dataclasses.replace(cfg, class_names=("road", "car")))
