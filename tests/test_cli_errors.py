"""The command lines (mnist.train, mnist.evaluate, mnist.visualize) answer bad flags and failing files
with a one-line error naming what was expected: a usage error (exit 2) for a flag out of range,
``error: ...`` and exit 1 for a file or folder that can't be read or written; never a traceback.

Everything here runs in-process on tiny synthetic data (load_mnist patched): no MNIST files needed.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import mnist.evaluate as evaluate_mod
import mnist.train as train_mod
from mnist import data, visualize
from mnist.checkpoint import save_model, save_npz_atomic
from mnist.data import MnistDownloadError
from mnist.model import build_model

QUICK = ["--quiet", "--no-plots"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _thread_counts_put_back(restore_threads):
    """mnist.train.main sets the thread counts: each test leaves them as it found them."""


def usage_error(main, argv, capsys):
    """main(argv) must exit 2 (argparse's usage error); returns what it printed."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def tiny_mnist(n=12):
    """A load_mnist returning n blank digits for either split."""
    images, labels = np.zeros((n, 28, 28), np.uint8), (np.arange(n) % 10).astype(np.uint8)
    return lambda split="train", data_dir=None, **kw: (images, labels)


def stopped_after_step(monkeypatch, argv, step):
    """main(argv), stopped by a Ctrl-C in its step-th training step: it ends after that step, with a checkpoint."""
    real_step, calls = train_mod.train_step, [0]

    def stopping(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)
    monkeypatch.setattr(train_mod, "train_step", stopping)
    assert train_mod.main(argv) == 130
    monkeypatch.setattr(train_mod, "train_step", real_step)


def files_of(folder):
    return {f.name: f.read_bytes() for f in folder.iterdir()}


def in_use_error(folder, holder, pid):
    """The start of the error of a run stopped because another process holds ``folder``."""
    return f"error: {folder} is in use by {holder}, pid {pid} on {socket.gethostname()}, since "


# ----------------------------------------------------------------------------- flags out of range

@pytest.mark.parametrize("flag", ["--log-every", "--checkpoint-every", "--threads"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_train_counts_must_be_at_least_one(flag, value, capsys):
    assert f"{flag} must be >= 1, got {value}" in usage_error(train_mod.main, [flag, value], capsys)


def test_check_counts_reads_single_values_lists_and_none(capsys):
    """The one check of count flags that mnist's commands and the benchmarks share (mnist.cli): a
    value, or each of a list's (nargs="+"), must be >= 1; None stands for a default chosen later."""
    import argparse
    from mnist.cli import check_counts
    ap = argparse.ArgumentParser(prog="prog")
    check_counts(ap, argparse.Namespace(steps=1, batch=[4, 128], threads=None), ("steps", "batch", "threads"))
    for args, flag, value in ((argparse.Namespace(batch_size=0), "--batch-size", 0),
                              (argparse.Namespace(batch_size=[4, -2]), "--batch-size", -2)):
        with pytest.raises(SystemExit) as exit_:
            check_counts(ap, args, ("batch_size",))
        assert exit_.value.code == 2
        assert f"prog: error: {flag} must be >= 1, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "-7"])
def test_train_seed_must_not_be_negative(value, capsys):
    """Refused as the command line is read (NumPy refused it after the data loaded: exit 1, no flag named)."""
    assert f"--seed must be >= 0, got {value}" in usage_error(train_mod.main, ["--seed", value], capsys)


def test_train_seed_must_be_one_manual_seed_takes(capsys):
    """manual_seed refuses seeds from 2**64 (torch.manual_seed's range): refused as the command line is read."""
    value = str(2**64)
    assert f"--seed must be < 2**64, got {value}" in usage_error(train_mod.main, ["--seed", value], capsys)


@pytest.mark.parametrize("flag", ["--batch-size", "--threads"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_evaluate_counts_must_be_at_least_one(tmp_path, flag, value, capsys):
    assert f"{flag} must be >= 1, got {value}" in usage_error(evaluate_mod.main, [str(tmp_path), flag, value],
                                                              capsys)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_visualize_test_images_must_be_at_least_one(tmp_path, value, capsys):
    err = usage_error(visualize.main, [str(tmp_path), "--test-images", value], capsys)
    assert "--test-images must be >= 1" in err and f"got {value}" in err


def test_train_limit_above_the_training_set_names_its_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "20", *QUICK, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: --limit 20 asks for more training images than the 12 there are" in err


@pytest.mark.parametrize("flag, value", [("--max-lr", "nan"), ("--max-lr", "inf"), ("--max-lr", "0"),
                                         ("--max-lr", "-0.1"), ("--clip", "nan"), ("--clip", "-1"), ("--lr", "nan"),
                                         ("--momentum", "-0.5"), ("--pct-start", "1.5"), ("--pct-start", "1"),
                                         ("--dropout", "1.5"), ("--dropout", "nan")])
def test_train_recipe_numbers_out_of_range_are_usage_errors(flag, value, capsys):
    """Refused as the command line is read, naming the flag (NaN used to start training and fail at
    step 2 with advice to lower the lr; --clip -1 silently turned clipping off)."""
    err = usage_error(train_mod.main, [flag, value], capsys)
    assert f"{flag} must be a finite number" in err and f"got {value}" in err


@pytest.mark.parametrize("flag", ["--epochs", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_train_epochs_and_batch_size_must_be_at_least_one(flag, value, capsys):
    assert f"{flag} must be >= 1, got {value}" in usage_error(train_mod.main, [flag, value], capsys)


def test_train_recipe_numbers_at_the_edges_of_their_ranges_are_accepted():
    """The closed ends of the ranges are taken: no warm-up, dropout of everything, no momentum, lr 0,
    no clipping, seed 0, one epoch, a limit of one batch."""
    args = train_mod.parse_args(["--pct-start", "0", "--dropout", "1", "--momentum", "0", "--lr", "0",
                                 "--clip", "0", "--seed", "0", "--epochs", "1", "--batch-size", "1",
                                 "--threads", "1", "--log-every", "1", "--checkpoint-every", "1", "--limit", "1"])
    assert (args.pct_start, args.dropout, args.momentum, args.lr, args.clip, args.seed, args.limit) == \
        (0, 1, 0, 0, 0, 0, 1)
    assert train_mod.parse_args(["--limit", "4", "--batch-size", "4"]).limit == 4
    assert train_mod.parse_args(["--dropout", "0"]).dropout == 0


def test_train_limit_below_the_batch_size_is_a_usage_error(capsys):
    assert "--limit must be at least the batch size (4)" in usage_error(train_mod.main, ["--limit", "3"], capsys)
    assert "--limit must be at least the batch size (8)" in usage_error(
        train_mod.main, ["--limit", "7", "--batch-size", "8"], capsys)


# ----------------------------------------------------------------------------- files and folders

def test_train_refuses_an_out_folder_that_holds_a_run(tmp_path, monkeypatch, capsys):
    """A new run into another run's folder would leave the old model.npz beside the new log (or, with
    both running, interleave two logs): refused before anything is written, with the ways out."""
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path)]) == 0
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    assert train_mod.main(["--limit", "12", "--seed", "1", *QUICK, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} already holds a run" in err and f"--resume {tmp_path / 'checkpoint.npz'}" in err
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before


def test_of_two_runs_started_into_one_folder_at_once_only_one_trains(tmp_path, monkeypatch, capsys):
    """Both pass the early check; the other run claims the folder (its config.json) while this one
    loads the data: this one stops with the same error, leaving the other's files alone."""
    out = tmp_path / "run"
    load = tiny_mnist(12)

    def other_run_claims_the_folder(split="train", data_dir=None, **kw):
        out.mkdir(exist_ok=True)
        if not (out / "config.json").exists():
            (out / "config.json").write_text("the other run's")
        return load(split)
    monkeypatch.setattr(train_mod, "load_mnist", other_run_claims_the_folder)
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(out)]) == 1
    assert f"{out} already holds a run (config.json)" in capsys.readouterr().err
    assert [f.name for f in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == "the other run's"


@pytest.mark.parametrize("hard_links", [True, False], ids=["hard-links", "no-hard-links"])
def test_claim_run_dir_succeeds_once_and_writes_the_whole_config(tmp_path, monkeypatch, hard_links):
    """The claim and the config are one step: never an empty config.json that holds a folder.
    On a file system without hard links (FAT, FUSE: os.link fails with EPERM) the claim still works."""
    if not hard_links:
        def no_link(src, dst):
            raise PermissionError(1, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    folder = tmp_path / "a" / "b"
    assert train_mod.claim_run_dir(str(folder), {"seed": 1})
    assert not train_mod.claim_run_dir(str(folder), {"seed": 2})
    assert json.loads((folder / "config.json").read_text()) == {"seed": 1}
    assert [f.name for f in folder.iterdir()] == ["config.json"]                # no temp file left


def test_a_default_run_folder_that_is_taken_gets_a_suffix(tmp_path, monkeypatch, capsys):
    """Two runs started in the same second (say, two seeds launched together, without --out) would
    both name their folder runs/<date-time>: the second trains into runs/<date-time>-2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    monkeypatch.setattr(train_mod.time, "strftime", lambda fmt, *a: "20261126-120000")
    (tmp_path / "runs" / "20261126-120000").mkdir(parents=True)
    (tmp_path / "runs" / "20261126-120000" / "config.json").write_text("{}")
    assert train_mod.main(["--limit", "12", *QUICK]) == 0
    assert "-> runs/20261126-120000-2" in capsys.readouterr().out
    run = tmp_path / "runs" / "20261126-120000-2"
    assert (run / "model.npz").exists()
    assert [f.name for f in (tmp_path / "runs" / "20261126-120000").iterdir()] == ["config.json"]
    # config.json and the checkpoint name the folder the run took (they recorded "out": null before)
    assert json.loads((run / "config.json").read_text())["out"] == os.path.join("runs", "20261126-120000-2")
    with np.load(run / "checkpoint.npz") as ckpt:
        assert json.loads(str(ckpt["state"]))["config"]["out"] == os.path.join("runs", "20261126-120000-2")


def test_a_run_resumed_in_place_records_its_folder_as_named(tmp_path, monkeypatch, capsys):
    """config.json and the checkpoint record the run folder as the command line named it (relative to
    the working directory, as runs/<date-time> and --out are), also for a run resumed in place (its
    folder was recorded as an absolute path there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    monkeypatch.setattr(train_mod.time, "strftime", lambda fmt, *a: "20261126-120000")
    stopped_after_step(monkeypatch, ["--limit", "12", *QUICK], 2)
    run = os.path.join("runs", "20261126-120000")
    assert train_mod.main(["--resume", run, *QUICK]) == 0                      # in place: no --out
    assert f"-> {run}\n" in capsys.readouterr().out
    assert json.loads((tmp_path / run / "config.json").read_text())["out"] == run
    with np.load(tmp_path / run / "checkpoint.npz") as ckpt:
        assert json.loads(str(ckpt["state"]))["config"]["out"] == run
    monkeypatch.chdir(tmp_path / run)                # resumed from inside its folder: the folder is "."
    assert train_mod.main(["--resume", "checkpoint.npz", *QUICK]) == 0
    assert json.loads((tmp_path / run / "config.json").read_text())["out"] == os.curdir


def test_a_second_resume_of_a_folder_being_resumed_stops_at_once_and_writes_nothing(tmp_path, monkeypatch,
                                                                                    capsys):
    """Two --resume of one folder at once would each train it to the end, racing on its files. The
    first holds the folder for its whole run (its train.lock); the second, started here as the first
    loads its data, stops with one line naming the folder and what holds it, having written nothing.
    The first trains on, and lets go as it ends (as the stopped run before it did)."""
    run = tmp_path / "run"
    load = tiny_mnist(12)
    monkeypatch.setattr(train_mod, "load_mnist", load)
    stopped_after_step(monkeypatch, ["--limit", "12", "--epochs", "2", *QUICK, "--out", str(run)], 2)
    assert not (run / "train.lock").exists()                  # let go on Ctrl-C
    second = {}

    def second_resume_meanwhile(split="train", data_dir=None, **kw):
        if not second:
            second["before"] = files_of(run)
            capsys.readouterr()
            second["code"] = train_mod.main(["--resume", str(run), *QUICK])
            second["err"] = capsys.readouterr().err
            second["after"] = files_of(run)
        return load(split)
    monkeypatch.setattr(train_mod, "load_mnist", second_resume_meanwhile)
    assert train_mod.main(["--resume", str(run), *QUICK]) == 0
    assert second["code"] == 1, second["err"]
    assert second["err"].startswith(in_use_error(run, "python -m mnist.train", os.getpid()))
    assert f"(its lock: {run / 'train.lock'})" in second["err"] and second["err"].count("\n") == 1
    assert second["after"] == second["before"]
    assert "train.lock" in second["before"]                  # (held by the first as it loaded its data)
    with np.load(run / "checkpoint.npz") as ckpt:
        assert json.loads(str(ckpt["state"]))["step"] == 6    # the first trained to the end
    assert (run / "model.npz").exists() and not (run / "train.lock").exists()


def test_a_run_holds_its_folder_from_its_claim_so_a_resume_of_it_meanwhile_stops(tmp_path, monkeypatch, capsys):
    """A new run holds its folder too: its checkpoint, saved at step 2, cannot be resumed while it trains on."""
    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    real_step, calls, second = train_mod.train_step, [0], {}

    def resume_meanwhile(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:
            second["code"] = train_mod.main(["--resume", str(run), *QUICK])
            second["err"] = capsys.readouterr().err
        return real_step(*args, **kwargs)
    monkeypatch.setattr(train_mod, "train_step", resume_meanwhile)
    assert train_mod.main(["--limit", "12", "--epochs", "2", "--checkpoint-every", "2", *QUICK,
                           "--out", str(run)]) == 0
    assert second["code"] == 1 and second["err"].startswith(in_use_error(run, "python -m mnist.train", os.getpid()))
    assert not (run / "train.lock").exists()


def test_a_folder_held_by_another_process_is_refused_and_a_killed_holder_leaves_no_hold(tmp_path, monkeypatch,
                                                                                      capsys):
    """The hold is the kernel's (flock on train.lock): another process's stops this run, naming its pid;
    once that process is killed (SIGKILL: no clean-up at all), the file it leaves behind holds nothing."""
    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    stopped_after_step(monkeypatch, ["--limit", "12", *QUICK, "--out", str(run)], 2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from mnist.files import FolderLock; "
         "lock = FolderLock(sys.argv[1], 'another run', 'train.lock'); print('held', flush=True); sys.stdin.read()",
         str(run)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = files_of(run)
        capsys.readouterr()
        assert train_mod.main(["--resume", str(run), *QUICK]) == 1
        err = capsys.readouterr().err
        assert err.startswith(in_use_error(run, "another run", holder.pid)) and err.count("\n") == 1
        assert files_of(run) == before
        holder.kill()
        holder.wait(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert (run / "train.lock").exists()                      # left behind, unlocked
    assert train_mod.main(["--resume", str(run), *QUICK]) == 0
    assert not (run / "train.lock").exists()


def test_a_folder_that_cannot_be_locked_is_trained_in_with_a_note(tmp_path, monkeypatch, capsys):
    """A file system without flock (some FUSE mounts): the run goes on, saying a second run would not be stopped."""
    import errno
    from mnist import files

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(files.fcntl, "flock", no_locks)
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path)]) == 0
    assert (f"note: {tmp_path / 'train.lock'} cannot be locked here (No locks available): a second run into "
            f"{tmp_path} at the same time would not be stopped") in capsys.readouterr().err
    assert not (tmp_path / "train.lock").exists()


def test_train_pct_start_that_leaves_a_one_step_warm_up(tmp_path, monkeypatch, capsys):
    """0.1 of 10 steps: OneCycleLR's warm-up would end at step 0 and its formula divide by zero
    (PyTorch's too), after the whole run; refused before training."""
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(40))
    assert train_mod.main(["--limit", "40", "--pct-start", "0.1", *QUICK, "--out", str(tmp_path / "run")]) == 1
    assert "--pct-start 0.1 of 10 steps is a warm-up of one step" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_a_run_without_checkpoint_is_not_offered_for_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    (tmp_path / "log.csv").write_text("step\n")
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "already holds a run (log.csv): give another --out" in err and "--resume" not in err


def test_train_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert train_mod.main(["--limit", "40", *QUICK, "--out", str(tmp_path / "file")]) == 1
    assert f"error: --out {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


def test_resume_writes_next_to_its_checkpoint_not_into_the_folder_it_was_trained_in(tmp_path, monkeypatch, capsys):
    """A run folder copied elsewhere and resumed continues there; the original is left alone (the
    saved config's --out used to win, overwriting the original run's files)."""
    import shutil
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    first, copy = tmp_path / "first", tmp_path / "copy"
    assert train_mod.main(["--limit", "12", "--epochs", "2", "--checkpoint-every", "3", *QUICK,
                           "--out", str(first)]) == 0
    shutil.copytree(first, copy)
    before = {f.name: f.read_bytes() for f in first.iterdir()}
    assert train_mod.main(["--resume", str(copy / "checkpoint.npz"), *QUICK]) == 0
    assert f"-> {copy}" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in first.iterdir()} == before
    assert json.loads((copy / "config.json").read_text())["out"] == str(copy)        # not first's --out
    # a finished run resumed keeps its final loss (from log.csv)
    loss, again = (json.loads((d / "metrics.json").read_text())["final_train_loss"] for d in (first, copy))
    assert again == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("edit, fragment", [
    (lambda a: a.pop("optimizer.param_groups[0].lr"), "optimizer's state does not fit"),
    (lambda a: a.update({"optimizer.param_groups[0].lr": np.array("fast")}), "optimizer's state does not fit"),
    (lambda a: a.update(state=np.array("{not json")), "'state' entry is not the JSON"),
    (lambda a: a.update(state=np.array('{"config": {}}')), "'state' entry lacks rng"),
    (lambda a: a["model/0.0.weight"].__setitem__((0, 0, 0, 0), np.nan), "the weights hold NaN or inf (0.0.weight)"),
    (lambda a: a.update(state=np.array(json.dumps({**json.loads(str(a["state"])), "step": 10 ** 6}))),
     "is not a step of the run"),
    (lambda a: a.update(state=np.array(json.dumps({**json.loads(str(a["state"])), "step": 2}))),
     "its step 2 is not its schedule's, which has taken 3 steps"),
    (lambda a: a.update(state=np.array(json.dumps({**json.loads(str(a["state"])), "train_seconds": "1.5"}))),
     "its train_seconds '1.5' is not a number of seconds"),
    (lambda a: a.update(state=np.array(json.dumps({**json.loads(str(a["state"])), "thread_switches": 5}))),
     "its thread_switches 5 is not a list of [step, threads] pairs"),
    (lambda a: a.update(state=np.array(json.dumps({**json.loads(str(a["state"])), "threads": "two"}))),
     "its threads 'two' is not a thread count"),
    (lambda a: a.update(state=np.array(json.dumps({**json.loads(str(a["state"])), "rng": {"seed": 1}}))),
     "its rng is not the state of nanotorch's random generator"),
    (lambda a: edit_config(a, max_lr="0.1"), 'its config\'s max_lr "0.1" is a string, not a number'),
    (lambda a: edit_config(a, limit=12.0), "its config's limit 12.0 is a float, not an integer"),
    (lambda a: edit_config(a, seed=True), "its config's seed true is a boolean, not an integer"),
    (lambda a: edit_config(a, anneal_strategy=1), "its config's anneal_strategy 1 is an integer, not a string"),
    (lambda a: edit_config(a, data_dir=["x"]), 'its config\'s data_dir ["x"] is a list, not a string or null'),
    (lambda a: a.pop("scheduler.last_epoch"), "its scheduler state lacks scheduler.last_epoch"),
    (lambda a: a.update({"scheduler.total_steps": np.array(999)}),
     "its scheduler.total_steps 999 is not the 3 that its recipe builds"),
    (lambda a: a.update({"scheduler._anneal_func_type": np.array("linear")}),
     "its scheduler._anneal_func_type 'linear' is not the 'cos' that its recipe builds"),
    (lambda a: a.update({"optimizer.param_groups[0].max_lr": np.array(1.0)}),      # read by the schedule's phases
     "its optimizer.param_groups[0].max_lr 1.0 is not the 0.1 that its recipe builds"),
    (lambda a: a.update({"optimizer.param_groups[0].nesterov": np.array(True)}),
     "its optimizer.param_groups[0].nesterov True is not the False that its recipe builds"),
    (lambda a: a.update({"scheduler._schedule_phases[2].end_step": np.array(2.0)}),   # a third phase
     "its scheduler state holds scheduler._schedule_phases[2].end_step, which this run's OneCycleLR has not"),
])
def test_resume_from_a_damaged_checkpoint_names_what_is_wrong(tmp_path, monkeypatch, capsys, edit, fragment):
    """No KeyError or Numba typing traceback: an error naming the file and the part that does not fit."""
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    path = tmp_path / "run" / "checkpoint.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(path, **arrays)
    try:
        code = train_mod.main(["--resume", str(path), *QUICK])
    except SystemExit as e:                       # (a state that parse_args reads is a usage error)
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and str(path) in err and fragment in err and "Traceback" not in err


def edit_config(arrays, **values):
    """A checkpoint's arrays with these values in its state's config (as a hand-edited file may have them)."""
    state = json.loads(str(arrays["state"]))
    state["config"].update(values)
    arrays["state"] = np.array(json.dumps(state))


def stopped_run_edited(tmp_path, monkeypatch, capsys, edit):
    """A run stopped at step 2 of 6 (tiny data), its checkpoint.npz then edited: (its folder, its files)."""
    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    stopped_after_step(monkeypatch, ["--limit", "12", "--epochs", "2", *QUICK, "--out", str(run)], 2)
    with np.load(run / "checkpoint.npz") as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(run / "checkpoint.npz", **arrays)
    capsys.readouterr()
    return run, files_of(run)


def test_resume_names_a_config_value_of_the_wrong_type_before_writing_anything(tmp_path, monkeypatch, capsys):
    """A hand-edited "4" for batch_size read "--batch-size 4 differs from the run's 4": the checkpoint's
    config is checked type by type, the field, value and type named in one line."""
    run, before = stopped_run_edited(tmp_path, monkeypatch, capsys, lambda a: edit_config(a, batch_size="4"))
    err = usage_error(train_mod.main, ["--resume", str(run), *QUICK], capsys)
    assert (f"--resume {run / 'checkpoint.npz'}: {run / 'checkpoint.npz'}: its config's batch_size \"4\" is a "
            "string, not an integer as mnist.train writes it") in err
    assert "differs" not in err and err.splitlines()[-1].startswith("python -m mnist.train: error: ")
    assert files_of(run) == before


def test_every_config_value_of_a_run_has_its_type_checked(tmp_path, monkeypatch):
    """CONFIG_TYPES lists every flag a run records (a new flag left out would go unchecked), and a run's
    own config passes it."""
    from mnist.checkpoint import CONFIG_TYPES
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path)]) == 0
    assert set(json.loads((tmp_path / "config.json").read_text())) == set(CONFIG_TYPES)


@pytest.mark.parametrize("key", ["scheduler.total_steps", "scheduler._anneal_func_type", "scheduler._step_count"])
def test_resume_refuses_a_scheduler_state_missing_an_entry_before_writing_anything(tmp_path, monkeypatch, capsys,
                                                                                   key):
    """A scheduler's state is loaded as an update of its attributes (PyTorch's too): a missing entry kept
    the fresh scheduler's value and the run went on, unsaid; refused, naming the entry, in one line."""
    run, before = stopped_run_edited(tmp_path, monkeypatch, capsys, lambda a: a.pop(key))
    assert train_mod.main(["--resume", str(run), *QUICK]) == 1
    assert capsys.readouterr().err == (f"error: {run / 'checkpoint.npz'}: its scheduler state lacks {key}: "
                                       "not a checkpoint that mnist.train wrote\n")
    assert files_of(run) == before


def test_a_checkpoint_from_before_the_schedulers_later_entries_resumes(tmp_path, monkeypatch, capsys):
    """Checkpoints written before 2026-11-27 have no scheduler.use_beta1 nor scheduler._is_initial (they came
    with Adam and the other schedulers): such a run resumes, and ends as it would have."""
    whole = tmp_path / "whole"
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", "--epochs", "2", *QUICK, "--out", str(whole)]) == 0
    run, _ = stopped_run_edited(tmp_path, monkeypatch, capsys,
                                lambda a: [a.pop("scheduler.use_beta1"), a.pop("scheduler._is_initial")])
    assert train_mod.main(["--resume", str(run), *QUICK]) == 0
    with np.load(whole / "model.npz") as a, np.load(run / "model.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


@pytest.mark.parametrize("name", ["log.csv", "layers.csv"])
def test_resume_refuses_a_log_whose_header_is_not_the_runs_before_writing_anything(tmp_path, monkeypatch, capsys,
                                                                                    name):
    """A log whose header is not the columns the run writes (edited by hand, or by another program) would
    get the new rows under the wrong names: refused before anything is written, in place (every file as it
    was) or into another --out (no folder made)."""
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    run, other = tmp_path / "run", tmp_path / "other"
    stopped_after_step(monkeypatch, ["--limit", "12", "--log-every", "1", *QUICK, "--out", str(run)], 2)
    log = run / name
    header, rest = log.read_text().split("\n", 1)
    log.write_text(header.replace("step,epoch,", "step,epoch,note,") + "\n" + rest)      # a column added
    before = {f.name: f.read_bytes() for f in run.iterdir()}
    capsys.readouterr()
    assert train_mod.main(["--resume", str(run), *QUICK]) == 1
    err = capsys.readouterr().err
    assert f"error: {log}: its header is not the " in err and "(it has note, which this run does not write)" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert {f.name: f.read_bytes() for f in run.iterdir()} == before
    assert train_mod.main(["--resume", str(run), "--out", str(other), *QUICK]) == 1
    assert not other.exists()


def test_evaluate_a_file_of_another_model_says_so_in_one_line(tmp_path, capsys):
    """Not the 46 missing keys of load_state_dict's message: the file holds none of the network's."""
    np.savez(tmp_path / "other.npz", **{"encoder.weight": np.zeros((3, 3))})
    assert evaluate_mod.main([str(tmp_path / "other.npz")]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'other.npz'} holds none of the seed network's arrays (0.0.weight, "
                   "0.1.weight, 0.1.bias, ... (46 in all)); it holds encoder.weight: not a model.npz or "
                   "checkpoint.npz of mnist.train\n")


def test_resume_from_a_checkpoint_missing_a_weight_is_refused(tmp_path, monkeypatch, capsys):
    """A checkpoint without one of the model's arrays would resume with that array as initialised."""
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    path = tmp_path / "run" / "checkpoint.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "model/16.bias"}
    np.savez(path, **arrays)
    assert train_mod.main(["--resume", str(path), *QUICK]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: state_dict does not fit Sequential" in err
    assert "missing keys" in err and "16.bias" in err and "Traceback" not in err


def test_resume_refuses_every_recipe_flag_changed_and_takes_each_repeated(tmp_path, monkeypatch, capsys):
    """Every flag of the recipe (and --limit) is the run's: changed, a usage error naming it; repeated
    with the run's value, accepted."""
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", *QUICK, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    ckpt = str(tmp_path / "run" / "checkpoint.npz")
    changed = dict(batch_size="3", lr="0.002", momentum="0.8", max_lr="0.2", pct_start="0.3",
                   anneal_strategy="linear", clip="0.5", dropout="0.2", epochs="2", seed="1", limit="8")
    assert sorted(changed) == sorted(train_mod.RESUMED_AS_SAVED)
    for name, value in changed.items():
        flag = "--" + name.replace("_", "-")
        err = usage_error(train_mod.main, ["--resume", ckpt, flag, value, *QUICK], capsys)
        assert f"{flag} {value} differs from the run's" in err and "start a new run" in err, flag
    repeated = [a for name in changed for a in ("--" + name.replace("_", "-"),
                                                str(12 if name == "limit" else train_mod.RECIPE[name]))]
    args = train_mod.parse_args(["--resume", ckpt, *repeated])
    assert {k: getattr(args, k) for k in train_mod.RECIPE} == train_mod.RECIPE and args.limit == 12


def test_evaluate_refuses_weights_holding_nan(tmp_path, capsys):
    state = build_model().state_dict()
    state["0.0.weight"][0, 0, 0, 0] = np.nan
    save_npz_atomic(str(tmp_path / "model.npz"), state)
    assert evaluate_mod.main([str(tmp_path)]) == 1
    assert "the weights hold NaN or inf (0.0.weight)" in capsys.readouterr().err


def test_train_out_under_a_regular_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(40))     # (the folder is made after loading the data)
    (tmp_path / "file").write_text("")
    assert train_mod.main(["--limit", "40", *QUICK, "--out", str(tmp_path / "file" / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "file") in err and "Traceback" not in err


@pytest.mark.parametrize("error", [MnistDownloadError("Could not download t10k-images-idx3-ubyte.gz"),
                                   PermissionError(13, "Permission denied", "/data/mnist")],
                         ids=["offline", "unreadable"])
def test_visualize_reports_a_failing_data_folder(tmp_path, monkeypatch, capsys, error):
    save_model(str(tmp_path / "model.npz"), build_model())

    def load_mnist(*args, **kwargs):
        raise error
    monkeypatch.setattr(data, "load_mnist", load_mnist)
    assert visualize.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"error: {error}\n"
    assert [f.name for f in tmp_path.iterdir()] == ["model.npz"]      # no picture drawn before it failed


def interrupted_run(folder):
    """A run folder as a run stopped before its end leaves it: a checkpoint.npz, no model.npz."""
    state = build_model().state_dict()
    save_npz_atomic(str(folder / "checkpoint.npz"), {f"model/{k}": v for k, v in state.items()})


def test_evaluate_an_interrupted_run_scores_its_checkpoint(tmp_path, monkeypatch, capsys):
    interrupted_run(tmp_path)
    monkeypatch.setattr(evaluate_mod, "load_mnist", tiny_mnist(12))
    assert evaluate_mod.main([str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "has no model.npz" in err and "checkpoint.npz" in err
    assert "test accuracy:" in out and "/12)" in out


def test_evaluate_a_folder_without_a_model(tmp_path, capsys):
    assert evaluate_mod.main([str(tmp_path)]) == 1
    assert f"error: {tmp_path} holds neither model.npz nor checkpoint.npz" in capsys.readouterr().err
    assert evaluate_mod.main([str(tmp_path / "nowhere")]) == 1
    assert f"error: {tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err


def test_visualize_an_interrupted_run_draws_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    interrupted_run(tmp_path)
    monkeypatch.setattr(data, "load_mnist", tiny_mnist(12))
    assert visualize.main([str(tmp_path), "--test-images", "12"]) == 0
    assert "checkpoint.npz" in capsys.readouterr().err
    assert (tmp_path / "architecture.png").exists() and (tmp_path / "confusion_matrix.png").exists()
    assert visualize.main([str(tmp_path / "checkpoint.npz")]) == 1                # a file: its folder is meant
    assert f"takes a run folder ({tmp_path}, say)" in capsys.readouterr().err


def test_train_resume_of_a_folder_without_a_checkpoint_is_a_usage_error(tmp_path, capsys):
    assert f"--resume {tmp_path}: the folder holds no checkpoint.npz" in usage_error(
        train_mod.main, ["--resume", str(tmp_path)], capsys)


def test_the_folder_of_runs_in_place_of_a_run_names_a_run_inside(tmp_path, capsys):
    """runs/ where runs/<date-time> was meant: each program names a run folder in it to pass instead."""
    for name in ("20261127-104221", "20261127-110502"):
        (tmp_path / name).mkdir()
        interrupted_run(tmp_path / name)
    newest = tmp_path / "20261127-110502"
    assert evaluate_mod.main([str(tmp_path)]) == 1
    assert f"it holds 2 run folder(s): pass one of them, such as {newest}" in capsys.readouterr().err
    assert visualize.main([str(tmp_path)]) == 1
    assert f"pass one of them, such as {newest}" in capsys.readouterr().err
    assert f"resume one of them, such as --resume {newest}" in usage_error(
        train_mod.main, ["--resume", str(tmp_path)], capsys)


def test_runs_inside_lists_the_sub_folders_holding_a_run_sorted_by_name(tmp_path, capsys):
    """Only sub-folders holding one of the files count (not a stray file, nor an empty folder or one of
    notes), sorted by name whatever order the folder lists them in: the last is the newest runs/<date-time>."""
    names = ["20261127-110502", "20261125-090000", "20261127-104221", "20261126-235959", "20261124-120000"]
    for name in names:                               # (made out of order)
        (tmp_path / name).mkdir()
        (tmp_path / name / ("model.npz" if name.endswith("0") else "checkpoint.npz")).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "log.csv").write_text("")
    (tmp_path / "zz.txt").write_text("")
    assert evaluate_mod.runs_inside(str(tmp_path)) == [str(tmp_path / name) for name in sorted(names)]
    # --resume names the runs it can resume: those with a checkpoint.npz (a model.npz alone is not one).
    resumable = sorted(name for name in names if not name.endswith("0"))
    assert evaluate_mod.runs_inside(str(tmp_path), ("checkpoint.npz",)) == [str(tmp_path / n) for n in resumable]
    assert (f"it holds {len(resumable)} run folder(s): resume one of them, such as --resume {tmp_path / resumable[-1]}"
            in usage_error(train_mod.main, ["--resume", str(tmp_path)], capsys))


def test_train_empty_out_is_a_usage_error(capsys):
    assert "--out must name a folder" in usage_error(train_mod.main, ["--out", ""], capsys)


def test_train_resume_takes_the_run_folder_for_its_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_mod, "load_mnist", tiny_mnist(12))
    assert train_mod.main(["--limit", "12", "--checkpoint-every", "1", *QUICK, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert train_mod.main(["--resume", str(tmp_path), *QUICK]) == 0               # the folder, not .../checkpoint.npz
    out = capsys.readouterr().out
    assert f"{tmp_path}: the run's 3 steps are done" in out and "training on" not in out
    assert f"-> {tmp_path}" in out


def test_a_reader_that_stops_early_ends_the_program_quietly():
    """``python -m mnist.summary | head -1``: no BrokenPipeError traceback, status 141 (128 + SIGPIPE)."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "mnist.summary"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc.stdout.close()                              # before it prints anything: its first write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
