"""train_adapter, rwkv-peft backend: the train.py argv, --print-command, failure mapping.

RWKV-PEFT itself needs a GPU; here the argv is checked against the argument list pinned in
configs/rwkv_peft.yaml (read from train.py at that commit), parsed by an argparse parser
with train.py's types. Process handling is exercised with a stand-in train.py script.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from peftflow.errors import ConfigError
from peftflow.train import rwkv_peft
from peftflow.train import training_profile as profile

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_adapter.sh"
LORA_PROFILE = ROOT / "configs" / "profiles" / "rwkv7_1b5_lora.yaml"
PIN = yaml.safe_load((ROOT / "configs" / "rwkv_peft.yaml").read_text())


def write_profile(tmp_path: Path, name: str = "p.yaml", **changes: object) -> Path:
    """The 1.5B LoRA profile with top-level sections replaced/merged by `changes`."""
    doc = yaml.safe_load(LORA_PROFILE.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def method_profile(tmp_path: Path, method: str) -> Path:
    peft: dict[str, object] = {"method": method}
    if method == "pissa":
        peft["pissa"] = {"r": 16, "svd_niter": 4}
    if method == "disha":
        peft["disha"] = {"mode": "bone", "r": 64}
    if method == "state":
        peft = {"method": "state"}
    doc = yaml.safe_load(LORA_PROFILE.read_text())
    if method != "lora":
        doc["peft"] = peft
    path = tmp_path / f"{method}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def train_py_parser() -> argparse.ArgumentParser:
    """A parser with train.py's types for every argument the pin lists (exit on anything else)."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    kinds = {"int": int, "float": float, "str": str, "json": json.loads}
    for name, rule in PIN["arguments"].items():
        if rule["type"] == "list":
            parser.add_argument(f"--{name}", nargs="*")
        else:
            parser.add_argument(f"--{name}", type=kinds[rule["type"]])
    return parser


def parse_argv(argv: list[str]) -> argparse.Namespace:
    assert argv[1].endswith("/train.py")
    return train_py_parser().parse_args(argv[2:])  # unknown flag or bad type raises


def print_command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args, "--print-command"], capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize("method", ["lora", "pissa", "disha", "state"])
def test_argv_for_each_method_matches_train_py_arguments(tmp_path: Path, method: str) -> None:
    prof = profile.load(method_profile(tmp_path, method))
    argv = rwkv_peft.build_argv(prof, tmp_path / "data" / "train_text_document", tmp_path / "out")
    flags = [a[2:] for a in argv[2:] if a.startswith("--")]
    assert set(flags) <= set(PIN["arguments"]), set(flags) - set(PIN["arguments"])
    assert len(flags) == len(set(flags))
    args = parse_argv(argv)
    # Values RWKV-PEFT gets wrong by default are always explicit.
    assert (args.vocab_size, args.dataload, args.my_testing, args.data_type) == \
        (65536, "pad", "x070", "binidx")
    assert (args.accelerator, args.devices, args.precision) == ("gpu", 1, "bf16")
    assert Path(args.load_model).is_absolute() and Path(args.proj_dir).is_absolute()
    assert args.data_file == str(tmp_path / "data" / "train_text_document")
    assert args.epoch_begin == 0 and args.n_layer == 24 and args.n_embd == 2048
    for name, rule in PIN["arguments"].items():
        value = getattr(args, name)
        if value is not None and "choices" in rule:
            assert value in rule["choices"], (name, value)
        if value is not None and rule["type"] == "json":
            assert set(value) == set(rule["keys"]), (name, value)
    if method == "state":
        assert (args.peft, args.train_type) == ("none", "state")
        assert args.lora_config is None
    else:
        assert args.peft == method
        assert args.train_parts == ["time", "ln"]
    if method == "lora":
        assert args.lora_config == {"lora_load": "", "lora_r": 32, "lora_alpha": 64,
                                    "lora_dropout": 0.01}
    if method == "pissa":
        assert args.pissa_config == {"pissa_load": "", "pissa_init": "", "pissa_r": 16,
                                     "svd_niter": 4}
    if method == "disha":
        assert args.disha_config == {"mode": "bone", "load": "", "r": 64}


def test_each_json_config_is_one_argv_element(tmp_path: Path) -> None:
    argv = rwkv_peft.build_argv(profile.load(LORA_PROFILE), tmp_path / "d", tmp_path / "o")
    element = argv[argv.index("--lora_config") + 1]
    assert json.loads(element)["lora_alpha"] == 64
    assert argv[argv.index("--lora_config") + 2].startswith("--")


def test_a_hostile_profile_value_stays_one_inert_argv_element(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    hostile = f"'; rm -rf ~'$(touch {canary})`touch {canary}`.pth"
    prof_path = write_profile(tmp_path, model={"base_model": hostile})
    out = tmp_path / "out"
    result = print_command("--profile", str(prof_path), "--data-prefix", str(tmp_path / "d"),
                           "--out", str(out))
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    load_model = argv[argv.index("--load_model") + 1]
    assert load_model.endswith("/" + hostile)
    assert sum(hostile in a for a in argv) == 1
    assert not canary.exists() and not out.exists()
    # The element reaches a program verbatim when run without a shell.
    echoed = subprocess.run([sys.executable, "-c", "import sys; print(sys.argv[1])", load_model],
                            capture_output=True, text=True, check=True).stdout
    assert echoed.strip() == load_model and not canary.exists()


def test_print_command_runs_nothing_and_needs_no_checkout(tmp_path: Path) -> None:
    prof_path = write_profile(tmp_path, rwkv_peft={"checkout": str(tmp_path / "no-checkout"),
                                                   "python": str(tmp_path / "no-python")})
    out = tmp_path / "run"
    result = print_command("--profile", str(prof_path), "--data-prefix", str(tmp_path / "d"),
                           "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert argv[:2] == [str(tmp_path / "no-python"), str(tmp_path / "no-checkout/train.py")]
    assert not out.exists()


def test_print_command_after_a_checkpoint_resumes_with_a_loadable_adapter(tmp_path: Path) -> None:
    import torch

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"blocks.0.att.key.lora_A": torch.zeros(2, 4)}, out / "rwkv-1.pth")
    prof = write_profile(tmp_path, training={"epoch_count": 4, "epoch_save": 2})
    result = print_command("--profile", str(prof), "--data-prefix", str(tmp_path / "d"),
                           "--out", str(out), "--resume")
    assert result.returncode == 0, result.stderr
    args = parse_argv(json.loads(result.stdout))
    assert args.epoch_begin == 2 and args.epoch_count == 4 and args.my_exit == 3
    assert args.epoch_save == 1  # relative epoch 1 (= epoch 3, the last) must be saved
    assert args.lora_config["lora_load"] == str(out / "resume-from-rwkv-1.pth")
    assert not (out / "resume-from-rwkv-1.pth").exists()  # a dry run writes nothing


def test_a_pin_of_another_commit_is_refused(tmp_path: Path) -> None:
    pin = dict(PIN, commit="0123456789abcdef", commit_short="0123456")
    path = tmp_path / "rwkv_peft.yaml"
    path.write_text(yaml.safe_dump(pin))
    with pytest.raises(ConfigError, match="5b8aac9"):
        rwkv_peft.load_pin(path)


def test_an_unknown_flag_or_bad_value_is_caught_by_the_check() -> None:
    spec = PIN["arguments"]
    with pytest.raises(ConfigError, match="peft_config"):
        rwkv_peft.check_argv(["--peft_config", "{}"], spec)
    with pytest.raises(ConfigError, match="ctx_len"):
        rwkv_peft.check_argv(["--ctx_len", "1024.5"], spec)
    with pytest.raises(ConfigError, match="lora_config"):
        rwkv_peft.check_argv(["--lora_config", '{"lora_r": 8}'], spec)


@pytest.mark.parametrize(("tail", "code"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 75),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", 75),
    ("RuntimeError: Found no NVIDIA driver on your system.", 75),
    ("ModuleNotFoundError: No module named 'deepspeed'", 3),
    ("usage: train.py [-h]\ntrain.py: error: argument --ctx_len: invalid int value", 2),
    ("ValueError: something else", 1),
])
def test_child_failures_map_to_exit_codes(tail: str, code: int) -> None:
    rc = 2 if "usage" in tail else 1
    assert int(rwkv_peft.classify_failure(rc, tail).exit_code) == code


FAKE_TRAIN_PY = """
    # Stand-in for RWKV-PEFT's train.py: parses the same arguments, writes the same files.
    import argparse, json, os, signal, sys, time
    import torch
    p = argparse.ArgumentParser()
    for a in sys.argv[1:]:
        if a.startswith("--"):
            p.add_argument(a, nargs="*")
    args = p.parse_args()
    one = lambda name: getattr(args, name)[0]
    out = one("proj_dir")
    if os.environ.get("FAKE_TRAIN_FAIL"):
        print(os.environ["FAKE_TRAIN_FAIL"], file=sys.stderr)
        sys.exit(1)
    if os.environ.get("FAKE_TRAIN_SLEEP"):
        def stop(signum, frame):
            open(os.path.join(out, "child_got_sigterm"), "w").close()
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        open(os.path.join(out, "child_started"), "w").close()
        time.sleep(60)
        sys.exit(0)
    begin, count = int(one("epoch_begin")), int(one("epoch_count"))
    if begin > 0:  # RWKV-PEFT loads lora_load into the Lightning module: keys need model.
        loaded = torch.load(json.loads(one("lora_config"))["lora_load"])
        if not all(k.startswith("model.") for k in loaded):
            sys.exit("lora_load keys lack the model. prefix")
    with open(os.path.join(out, "loss_data.jsonl"), "w") as f:  # recreated per run
        pass
    with open(os.path.join(out, "train_log.txt"), "a") as f:
        f.write("NEW RUN x\\n" + json.dumps(sys.argv) + "\\n")
    for epoch in range(begin, count):
        with open(os.path.join(out, "loss_data.jsonl"), "a") as f:
            for step in range(3):
                f.write(json.dumps({"loss": 5.0 - epoch - step / 10, "t_cost": 2.0,
                                    "kt_s": 8.0}) + "\\n")
        sd = {f"blocks.0.att.{m}.lora_{x}": torch.zeros(2, 2) for m in ("key", "value")
              for x in "AB"}
        torch.save(sd, os.path.join(out, f"rwkv-{epoch}.pth"))
        if os.environ.get("FAKE_TRAIN_KILL_AFTER") == str(epoch):
            os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture(scope="module")
def tiny_binidx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten short synthetic documents (the stand-in train.py does not read them)."""
    import numpy as np

    from peftflow.dataset import binidx

    prefix = tmp_path_factory.mktemp("data") / "train_text_document"
    binidx.write(prefix, [np.arange(1, 5 + i, dtype=np.uint16) for i in range(10)])
    return prefix


def fake_checkout(tmp_path: Path) -> Path:
    checkout = tmp_path / "RWKV-PEFT"
    checkout.mkdir()
    (checkout / "train.py").write_text(textwrap.dedent(FAKE_TRAIN_PY))
    return checkout


def fake_argv(tmp_path: Path, tiny_binidx: Path) -> list[str]:
    base = tmp_path / "base.pth"
    base.write_bytes(b"not read by the wrapper")
    checkout = tmp_path / "RWKV-PEFT"
    prof = write_profile(tmp_path, model={"base_model": str(base)},
                         training={"epoch_steps": 3, "epoch_count": 2, "micro_bsz": 1},
                         rwkv_peft={"checkout": str(checkout if checkout.is_dir() else
                                                    fake_checkout(tmp_path)),
                                    "python": sys.executable})
    return [str(SCRIPT), "--profile", str(prof), "--data-prefix", str(tiny_binidx), "--out",
            str(tmp_path / "run")]


def fake_run(tmp_path: Path, tiny_binidx: Path, *extra: str,
             **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    result = subprocess.run([*fake_argv(tmp_path, tiny_binidx), *extra], capture_output=True,
                            text=True, timeout=120, env={**os.environ, **env})
    return result, tmp_path / "run"


def test_a_successful_child_run_maps_its_files_into_status(tmp_path: Path,
                                                           tiny_binidx: Path) -> None:
    result, out = fake_run(tmp_path, tiny_binidx)
    assert result.returncode == 0, result.stderr
    doc = json.loads((out / "status.json").read_text())
    names = {o["name"]: o["path"] for o in doc["outputs"]}
    assert names["adapter"] == str(out / "rwkv-1.pth")
    assert {"checkpoint:rwkv-0.pth", "checkpoint:rwkv-1.pth", "train_log", "loss_data",
            "loss_curve"} <= set(names)
    assert doc["metrics"]["backend"] == "rwkv-peft" and doc["metrics"]["steps"] == 6
    assert doc["tools"]["rwkv_peft_commit"].startswith("5b8aac9")


def test_a_child_out_of_memory_exits_75_with_a_failed_status(tmp_path: Path,
                                                             tiny_binidx: Path) -> None:
    result, out = fake_run(tmp_path, tiny_binidx,
                           FAKE_TRAIN_FAIL="torch.OutOfMemoryError: CUDA out of memory.")
    assert result.returncode == 75, result.stderr
    doc = json.loads((out / "status.json").read_text())
    assert (doc["status"], doc["exit_code"], doc["outputs"]) == ("failed", 75, [])


def test_a_missing_checkout_exits_3_and_names_the_fix(tmp_path: Path, tiny_binidx: Path,
                                                      smoke_base_model: Path) -> None:
    prof = write_profile(tmp_path, model={"base_model": str(smoke_base_model)},
                         rwkv_peft={"checkout": str(tmp_path / "nowhere")})
    result = subprocess.run([str(SCRIPT), "--profile", str(prof), "--data-prefix",
                             str(tiny_binidx), "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "peftflow doctor" in result.stderr and "Traceback" not in result.stderr


def test_a_killed_child_is_resumed_with_a_prefixed_adapter_and_merged_loss_data(
        tmp_path: Path, tiny_binidx: Path) -> None:
    killed, out = fake_run(tmp_path, tiny_binidx, FAKE_TRAIN_KILL_AFTER="0")
    assert killed.returncode == 130, killed.stderr
    first = (out / "loss_data.jsonl").read_text().splitlines()
    assert len(first) == 3
    resumed, _ = fake_run(tmp_path, tiny_binidx, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert '"--epoch_begin", "1"' in resumed.stderr  # the logged command
    lines = (out / "loss_data.jsonl").read_text().splitlines()
    assert len(lines) == 6 and lines[:3] == first
    assert json.loads(lines[3])["resumed_from_epoch"] == 0
    doc = json.loads((out / "status.json").read_text())
    assert doc["metrics"]["resumed_from_epoch"] == 0 and doc["metrics"]["steps"] == 6
    assert not (out / "loss_data.prev.jsonl").exists()


def test_sigterm_is_forwarded_to_the_child(tmp_path: Path, tiny_binidx: Path) -> None:
    out = tmp_path / "run"
    wrapper = subprocess.Popen(fake_argv(tmp_path, tiny_binidx), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FAKE_TRAIN_SLEEP": "1"})
    deadline = time.monotonic() + 60
    while not (out / "child_started").exists():
        assert wrapper.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    wrapper.send_signal(signal.SIGTERM)
    _, stderr = wrapper.communicate(timeout=45)
    assert wrapper.returncode == 130, stderr
    assert (out / "child_got_sigterm").exists()
    assert json.loads((out / "status.json").read_text())["exit_code"] == 130
