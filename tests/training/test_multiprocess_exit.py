"""Every process of a two-process run (torchrun, gloo, CPU) exits: after a clean end, under CPU load, when one process
raises mid-run, and when the launcher is stopped (SIGTERM) mid-run; and the newest checkpoint then still resumes.

Each launch is its own process group, killed whole on a timeout (`dino_hf.testing_utils.run_process_tree`), so a
hang fails the test in minutes with the output's tail instead of holding the suite."""

import json
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_pretrain import tiny_run
from torchrun_helpers import launch_two_processes, torchrun_command, two_process_environment

from dino_hf.testing_utils import kill_process_tree, process_tree_alive, run_process_tree, start_process_tree
from dino_hf.training import checkpointing as ckpt
from dino_hf.training import pretrain


HERE = Path(__file__).parent


def cli_arguments(output_dir: Path, cache_dir: Path, **flags) -> list[str]:
    """`dino-hf-pretrain` flags of the tiny run of test_pretrain.py (2 x 32 ViT, 4 images per process)."""
    values = {
        "dataset_name": "embedded",
        "embedded_options": json.dumps(
            {"train_per_class": 4, "validation_per_class": 2, "num_shards": 2, "cache_dir": str(cache_dir)}
        ),
        "arch": "vit_tiny",
        "patch_size": 8,
        "config_overrides": "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,head_hidden_dim=64,"
        "head_bottleneck_dim=16",
        "out_dim": 64,
        "global_crops_size": 32,
        "local_crops_size": 16,
        "local_crops_number": 2,
        "num_workers": 0,
        "shuffle_buffer_size": 16,
        "per_device_train_batch_size": 4,
        "epochs": 2,
        "steps_per_epoch": 3,
        "warmup_epochs": 1,
        "warmup_teacher_temp_epochs": 1,
        "logging_steps": 1,
        "checkpointing_steps": 100,
        "progress_bar": "false",
        "lr": 0.01,
        "output_dir": str(output_dir),
        **flags,
    }
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


@pytest.fixture
def cpu_burner():
    """A process that keeps one core busy (the load under which a run hung at exit), in its own process group."""
    burner = start_process_tree([sys.executable, "-c", "while True: pass"], stdout=None, stderr=None)
    try:
        yield burner
    finally:
        kill_process_tree(burner)
        burner.wait()


@pytest.mark.under_load
def test_five_two_process_cli_runs_under_cpu_load_all_exit(tmp_path, cpu_burner):
    """The issue's reproduction: before `finish_run`, one run in five never exited (a rank waiting in the gloo process
    group's destructor). Each run must end, with status 0, its export written."""
    durations = []
    for attempt in range(5):
        start = time.perf_counter()
        result = launch_two_processes(
            "-m", "dino_hf.cli.pretrain", *cli_arguments(tmp_path / f"run{attempt}", tmp_path / "cache"), timeout=120
        )
        durations.append(round(time.perf_counter() - start, 1))
        assert result.returncode == 0, f"run {attempt}: " + result.stdout[-2000:] + result.stderr[-4000:]
        assert "Finished 6 steps" in result.stdout and (tmp_path / f"run{attempt}" / "export").is_dir()
        assert result.stdout.count("Finished 6 steps") == 1  # the main process reports; the other has nothing to add
    print("durations of the five runs (s):", durations)


def test_a_process_raising_mid_run_ends_both_and_is_named(tmp_path):
    """Process 1 raises after step 2 while process 0 trains on: both end (non-zero) in bounded time, the failing
    process names itself, and torchrun reports it as the root cause with its error."""
    start = time.perf_counter()
    result = launch_two_processes(
        str(HERE / "failing_worker.py"), str(tmp_path / "run"), str(tmp_path / "cache"), timeout=120
    )
    elapsed = time.perf_counter() - start
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert "Raised on process 1 of 2." in output, output[-4000:]
    # torchrun's report: the root cause is process 1, with its error (the worker's `record` wrote it).
    root_cause = output[output.index("Root Cause (first observed failure)") :].split("=" * 20)[0]
    assert "rank      : 1 (local_rank: 1)" in root_cause, root_cause
    assert "DiskFullError: process 1 could not write its batch log at step 2" in root_cause, root_cause
    # Process 0 ended too, non-zero: stopped by torchrun, or failed in its next collective naming process 1.
    assert "rank      : 0 (local_rank: 0)" in output or "after process 1 failed first" in output, output[-4000:]
    assert elapsed < 90, elapsed


def test_the_final_barrier_names_a_process_that_never_arrives(tmp_path):
    """`finish_run`'s final barrier is bounded (gloo: `monitored_barrier`): process 0 fails after 3 s naming process
    1, which never reached the end, and torchrun then stops process 1."""
    start = time.perf_counter()
    result = launch_two_processes(str(HERE / "barrier_worker.py"), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Rank 1 failed to pass monitoredBarrier in 3000 ms" in output, output[-4000:]
    assert time.perf_counter() - start < 50  # not the 60 s process 1 sleeps


def test_sigterm_to_the_launcher_ends_every_process_and_the_newest_checkpoint_resumes(tmp_path):
    """Preemption: SIGTERM to torchrun while both processes train and checkpoint every step. Every process exits,
    the newest complete checkpoint loads and a one-process run resumes from it (elastic resume)."""
    output_dir, cache_dir = tmp_path / "run", tmp_path / "cache"
    flags = {"checkpointing_steps": 1, "save_total_limit": 2, "steps_per_epoch": 50}
    launcher = start_process_tree(
        torchrun_command("-m", "dino_hf.cli.pretrain", *cli_arguments(output_dir, cache_dir, **flags)),
        env=two_process_environment(),
    )
    try:
        deadline = time.monotonic() + 120
        while len(ckpt.list_checkpoints(output_dir)) < 2 and launcher.poll() is None:
            assert time.monotonic() < deadline, "no second checkpoint within 120 s"
            time.sleep(0.2)
        assert launcher.poll() is None, launcher.communicate()[1][-4000:]
        launcher.send_signal(signal.SIGTERM)  # the launcher only: torchrun must stop its workers
        try:
            _, stderr = launcher.communicate(timeout=60)
        except Exception:
            kill_process_tree(launcher)
            raise
        assert launcher.returncode != 0
        assert not process_tree_alive(launcher), "a worker outlived the launcher"
    finally:
        kill_process_tree(launcher)
        launcher.wait()
    newest = ckpt.resolve_checkpoint("latest", output_dir)
    step = ckpt.load_trainer_state(newest)["global_step"]
    assert ckpt.load_model_state(newest) and step >= 2
    model_args, data_args, training_args = tiny_run(
        output_dir,
        cache_dir,
        training={
            "resume_from_checkpoint": "latest",
            "max_steps": step + 1,
            "steps_per_epoch": 50,
            "per_device_train_batch_size": 8,  # the same total batch as the two processes: the same step
        },
    )
    assert pretrain(model_args, data_args, training_args).global_step == step + 1


@pytest.mark.parametrize("hang", ["atexit", "teardown"])
def test_a_failed_process_that_hangs_while_exiting_is_ended(hang):
    """`report_failure`'s bound on the exit, where the original hang was: in interpreter shutdown (an exit handler, or
    an object's destructor during module teardown, as a process group's). The process prints its threads' stacks and
    exits with status 1 within the bound instead of waiting forever."""
    script = textwrap.dedent(
        f"""
        import atexit, time, types
        from dino_hf.distributed import report_failure

        class Stuck:
            def __del__(self, sleep=time.sleep):  # the module's globals may be gone by then
                sleep(60)

        if {hang!r} == "atexit":
            atexit.register(time.sleep, 60)  # registered first: runs after report_failure's watchdog is armed
        else:
            stuck = Stuck()  # a module global: destroyed during the interpreter's teardown
        error = RuntimeError("broken")
        report_failure(types.SimpleNamespace(num_processes=2, process_index=1), error, exit_timeout_s=2)
        print(error.__notes__)
        raise error
        """
    )
    start = time.perf_counter()
    result = run_process_tree([sys.executable, "-c", script], timeout=60)
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.perf_counter() - start < 30
    assert "['Raised on process 1 of 2.']" in result.stdout
    assert "RuntimeError: broken" in result.stderr and "Timeout (0:00:02)!" in result.stderr, result.stderr[-3000:]
