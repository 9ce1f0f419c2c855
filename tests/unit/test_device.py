"""The device option (common/device.py, train.device, --device): resolution and validation, CPU runs
bit-identical to the runs before the option, batches moved to the model's device where they are
made, what a run records, and (on a machine with CUDA) one step of each kind on the GPU."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bench import cli
from bench.run import run_device
from common.config import ConfigError, load_profile, parse_config, with_device, with_overrides
from common.device import DeviceError, device_record, device_spec, resolve_device
from common.evaluation import evaluate_sums
from common.fl.simulate import simulate_method
from common.model import build_model, get_params, state_sha256
from common.training.ddp import DDPSite
from common.training.dp import DPSettings, SiteAccountant, dp_train_local
from common.training.local import train_local
from common.transforms import predict_probs
from common.versions import collect_versions

CUDA = torch.cuda.is_available()
SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "smoke.toml")

# ----------------------------------------------------------------------------------------------
# resolution and validation
# ----------------------------------------------------------------------------------------------


def test_cpu_and_auto_resolve_here_and_specs_are_normalised():
    assert resolve_device("cpu") == torch.device("cpu")
    assert device_spec(" CUDA:1 ") == "cuda:1" and device_spec("auto") == "auto"
    want = torch.device("cuda", 0) if CUDA else torch.device("cpu")
    assert resolve_device("auto") == want


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the no-CUDA error cannot happen")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_one_clear_line(spec):
    with pytest.raises(DeviceError, match="no CUDA") as err:
        resolve_device(spec)
    assert "\n" not in str(err.value) and "--device cpu" in str(err.value)


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda0", "", "mps", "meta", "cpu:0"])
def test_a_malformed_device_is_refused(bad):
    with pytest.raises(DeviceError, match="auto, cpu, cuda or cuda:N"):
        device_spec(bad)
    with pytest.raises(DeviceError):
        resolve_device(bad)


def test_config_default_is_cpu_validated_and_not_per_recipe():
    cfg = load_profile("smoke")
    assert cfg.train.device == "cpu"
    assert with_device(cfg, "AUTO").train.device == "auto"
    assert with_device(cfg, None) is cfg
    with pytest.raises(DeviceError):
        with_device(cfg, "gpu")
    data = cfg.model_dump(mode="json")
    with pytest.raises(ConfigError, match="train.device"):
        parse_config({**data, "train": {**data["train"], "device": "tpu"}})
    with pytest.raises(ConfigError, match="one for the whole run"):
        parse_config({**data, "recipes": {"dpsgd": {"train": {"device": "cpu"}}}})


def test_ray_cells_compute_on_what_they_reserve():
    cfg = load_profile("smoke")
    for spec, gpus, want in (
        ("auto", 1, "cuda"),
        ("cuda", 0.5, "cuda"),
        ("auto", 0, "cpu"),
        ("cpu", 0, "cpu"),
    ):
        got, device = run_device(with_device(cfg, spec), "ray", gpus)
        assert got.train.device == device == want
    for spec, gpus in (("cpu", 1), ("cuda", 0), ("cuda:1", 1)):
        with pytest.raises(DeviceError, match="--engine ray"):
            run_device(with_device(cfg, spec), "ray", gpus)
    got, device = run_device(with_device(cfg, "auto"), "local", 0)
    assert device == resolve_device("auto") and got.train.device == str(device)


@pytest.mark.skipif(CUDA, reason="this machine has CUDA: the no-CUDA error cannot happen")
@pytest.mark.parametrize(
    "argv",
    [
        ["client", "--config", SMOKE, "--data", "nowhere", "--site", "A", "--server", "x:1"],
        ["server", "--config", SMOKE, "--data", "nowhere", "--method", "fedavg", "--run-dir"],
        ["release", "serve", "--model", "nowhere"],
        [
            "attack",
            "--target",
            "127.0.0.1:1",
            "--pool",
            "p",
            "--candidates",
            "c",
            "--config",
            SMOKE,
            "--out",
            "o",
        ],
        ["bench", "--profile", "smoke", "--out"],
    ],
    ids=lambda a: a[0],
)
def test_every_command_refuses_cuda_without_cuda_before_it_starts(argv, tmp_path, capsys):
    if argv[-1] in ("--run-dir", "--out"):
        argv = [*argv, str(tmp_path / "out")]
    assert cli.main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fedonco {argv[0]}: error: device 'cuda' asked for") and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing started, nothing left behind


# ----------------------------------------------------------------------------------------------
# CPU: bit-identical to recorded hashes (the NCHW ones from before the device option)
# ----------------------------------------------------------------------------------------------

# state_sha256 of each computation below with torch 2.13.0+cpu, opacus 1.6.0 and one torch
# thread, per machine: float32 kernels round differently on another CPU (an AMD EPYC with
# AVX-512 gives other bits than the machine the first sets came from, also with
# ATEN_CPU_CAPABILITY=avx2), so a set is a regression check for the machine it was recorded on.
# "nchw": the model in NCHW (the layout before build_model's channels_last); "channels_last": the
# default layout since (other oneDNN kernels, so other float32 roundings).
# The first sets were recorded on the machine of the 2026-12-03 CI runs (its fingerprint was not
# recorded: None); their fed-dpsgd entries predate the simulator's exact mirror of secure
# aggregation (common/fl/simulate.py aggregation_layer, issue 27) and its DP noise drawn from the
# seeded site's NoiseSource, so on that machine the test now skips instead of failing, printing
# the hashes to record. On a machine whose fingerprint has
# a set, any moved bit fails; on an unknown machine the test skips and prints what to record.
# The same-run determinism test below runs on every machine.
REFERENCE_TORCH = "2.13.0"
REFERENCE = [
    (
        None,
        {
            "nchw": {
                "local": "3009a4025dc5d60525d503726d285abb7fd13ff9940b88966ccf424811e6bd72",
                "probs": "da336f70bbba3dd4a593afebac3e63055715d546d7948efc7c252e87c8827be9",
                "dpsgd": "b703841a39421fccd34573bd25ea8069107b9bf6d1138700e15e78d7949784bd",
                "ddp": "b082df537c26c9bf547829ee7b579b5b73c7a09c845f5fca1b92e08374aed033",
                "fed-fedavg": "db91ec88edf574e35088bb21acce6b4d59c11c4188cb89719b53d44122b91abf",
                "fed-dpsgd": "9e2a7561297479f5d1428808f87a752512667b6361cfb04090a90c32a41eb84d",
            },
            "channels_last": {
                "local": "69665ab869da12b5fa5f9ab071fe907b96ac135b4306d46a950c86c1a77ff00e",
                "probs": "8b88b3de8e6ffd7eded45af46ce405a8f21018196a3ea11bf48e6488d37068c8",
                "dpsgd": "cab5293fd561ac4e5988e4c0a17bdb1aa8e7e9c2782af1a6ed06e6382fd50e5e",
                "ddp": "b082df537c26c9bf547829ee7b579b5b73c7a09c845f5fca1b92e08374aed033",
                "fed-fedavg": "4cf0ead26e99b6459e3928824a531f8fbcf8d18c785c90da5ce09126f456a531",
                "fed-dpsgd": "aece694e4bc0fd4f335ff09ff55f1aacfac13f2aee8303fee970e285d54eeb0e",
            },
        },
    ),
    (
        "AuthenticAMD AMD EPYC AVX512",
        {
            "nchw": {  # recorded 2026-12-04 (fed-dpsgd: the simulator's seeded NoiseSource)
                "local": "aac2aa39413b913cd393002b45b08b8f2dc5e56c16662c063242e8127f24a297",
                "probs": "2c366ae18547a17c2c7e6303b6ecafe64f76e05a062fd91999aa659ba83cb17d",
                "dpsgd": "5400e8607e5f39f546675351c4f5a8e5461921bb9d638198bad0e1bca259db36",
                "ddp": "b082df537c26c9bf547829ee7b579b5b73c7a09c845f5fca1b92e08374aed033",
                "fed-fedavg": "3e52eea896c61bdec8bcbbbce0eb0f58a1721ee2b67bb280ab831bb4aa602552",
                "fed-dpsgd": "a77f01c034a693c3eac2481d107fc9455b260a4037a4cf687a423b2db4bf2ef9",
            },
            "channels_last": {
                "local": "0638e50f1e6397958cc0b7e99621d65ff2be8db752eca6471a8d3d79e90ae805",
                "probs": "dd1cdb6e06c2983a1670eb564e99c9c495ef7f63f466dcb5b1ea7f7557fb7c68",
                "dpsgd": "3888e6a320c80e41e2447512a89ee4cffbd205afc9be0dc6a9dea11f7d049b0d",
                "ddp": "b082df537c26c9bf547829ee7b579b5b73c7a09c845f5fca1b92e08374aed033",
                "fed-fedavg": "64e8e6905edae86bdd35870578ddac79c6ec73650a6648dc3e85652409e92b2a",
                "fed-dpsgd": "e294bc85ec3cc7efff4cf3ba224386127cc6854b43a0bd206020088a5732cde8",
            },
        },
    ),
    (
        "AuthenticAMD AMD EPYC AVX2",
        {
            "nchw": {  # recorded 2026-12-07 at 0030b1d
                "local": "7f6c50e4b86d2612a96f6c49ad48fcf3bf4eb951f32cceab4eec4c46bef6a527",
                "probs": "455922ddc2d6988d253e3109896fbf68f0b8ec107530148179674e6340620ccd",
                "dpsgd": "18a8b9f9e90525db6ec90a37a693c6eae6c26315adcc3f169b4e1cca3b000149",
                "ddp": "b082df537c26c9bf547829ee7b579b5b73c7a09c845f5fca1b92e08374aed033",
                "fed-fedavg": "6f381b994c716ff777ec12c86978a3154837dc92fe8adb764181de53677e9dcf",
                "fed-dpsgd": "cc916cac270eec1bbb149f50d955815b8b44a3cc3c12948f81a1f5d14c5e6f44",
            },
            "channels_last": {
                "local": "7a60fc175d609a1e2a98d234853daec140a1b78141fa6164e54dbfe6783f4080",
                "probs": "549c521c242bb812d3dfb5a245fc3f50ac982a30a0ace70928d290b8c3f46bb5",
                "dpsgd": "60a68e8dbd974bffa3b1e6155febe11908740d6fa9fa0d1073417cf62a306749",
                "ddp": "b082df537c26c9bf547829ee7b579b5b73c7a09c845f5fca1b92e08374aed033",
                "fed-fedavg": "7478870ecc145e911b187b769b22ba27aa718179b4c707ceb4ac1afae15e3eee",
                "fed-dpsgd": "f3ff909722543463bd507f8061f0211df818bec2654e04a3d1994b7dbc2659df",
            },
        },
    ),
]


def _machine() -> str:
    """Who rounds the floats: the CPU's vendor and model and the kernels torch dispatches to."""
    info = {}
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    cpu = f"{info.get('vendor_id', '?')} {info.get('model name', '?')}"
    return f"{cpu} {torch.backends.cpu.get_cpu_capability()}"


def _data(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    return x, (torch.rand(n, 1, size, size, generator=g) > 0.8).float()


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _steps(layout: str, monkeypatch) -> dict[str, str]:
    """One of each computation the device option touches, hashed: plain, DP and ddp local steps,
    predictions, and two small federations (plain and DP) through the simulator."""
    import common.model

    monkeypatch.setattr(common.model, "CHANNELS_LAST", layout == "channels_last")
    cpu = resolve_device("cpu")
    x, y = _data()
    got = {}
    m = build_model(base=4, seed=1).to(cpu)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    train_local(m, loader, epochs=2, lr=1e-2, seed=3, proximal_mu=0.1)
    got["local"] = state_sha256(get_params(m))
    got["probs"] = _digest(predict_probs(m, x, 3))
    m = build_model(base=4, norm="group", groups=2, seed=1).to(cpu)
    dp_train_local(
        m,
        list(zip(x, y, strict=True)),
        settings=DPSettings(),
        epochs=1,
        lr=1e-2,
        batch_size=4,
        seed=5,
        sigma=1.0,
        accountant=SiteAccountant("rdp"),
        proximal_mu=0.1,
    )
    got["dpsgd"] = state_sha256(get_params(m))
    m = build_model(base=4, norm="group", groups=2, seed=1).to(cpu)
    site = DDPSite(m)
    keys = sorted(k for k, _ in m.named_parameters())
    got["ddp"] = _digest(site.clipped_sum(x, y, keys, clip=1.0, scale=1000.0, chunk=3))
    site.close()
    cfg = with_overrides(
        load_profile("smoke"),
        **{
            "model.base": 4,
            "model.groups": 2,
            "train.rounds": 2,
            "train.local_epochs": 1,
            "train.batch_size": 4,
        },
    )
    sites = {s: TensorDataset(*_data(6, 16, i)) for i, s in enumerate("AB")}
    for method in ("fedavg", "dpsgd"):
        fed = simulate_method(cfg, method, sites, seed=11, device=cpu)
        got[f"fed-{method}"] = state_sha256(fed.global_params)
    return got


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_steps_are_bit_identical_run_to_run_on_this_machine(layout, one_thread, monkeypatch):
    """The science rule on any machine: the same seeds give the same bits twice in one process."""
    assert _steps(layout, monkeypatch) == _steps(layout, monkeypatch)


@pytest.mark.skipif(
    not torch.__version__.startswith(REFERENCE_TORCH),
    reason=f"reference hashes were computed with torch {REFERENCE_TORCH}",
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_steps_are_bit_identical_to_the_recorded_hashes(layout, one_thread, monkeypatch):
    got, machine = _steps(layout, monkeypatch), _machine()
    sets = [hashes.get(layout) for _, hashes in REFERENCE]
    if got in sets:
        return
    mine = [hashes[layout] for who, hashes in REFERENCE if who == machine and layout in hashes]
    if not mine:
        pytest.skip(f"no hashes recorded for {machine!r} ({layout}); to record: {got}")
    assert got == mine[0]


# ----------------------------------------------------------------------------------------------
# the batches really go to the model's device
# ----------------------------------------------------------------------------------------------


class Traced(torch.Tensor):
    """A tensor that records every ``.to(...)`` called on it and turns into a plain tensor there:
    a batch reaches the model as a plain tensor only if the code moved it."""

    moves: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if func is torch.Tensor.to:
            cls.moves.append(args[1] if len(args) > 1 else (kwargs or {}).get("device"))
            return out.as_subclass(torch.Tensor)
        return out


class Seen(nn.Module):
    """The U-Net, recording the kind and device of every batch it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append((type(x), x.device))
        return self.inner(x)


def _traced(n=8, size=16):
    x, y = _data(n, size)
    Traced.moves = []
    return x.as_subclass(Traced), y.as_subclass(Traced)


def _check(model: Seen, moves_per_batch: int) -> None:
    device = next(model.parameters()).device
    assert model.seen and all(kind is torch.Tensor and d == device for kind, d in model.seen)
    assert Traced.moves == [device] * (moves_per_batch * len(model.seen))


def test_local_training_moves_images_and_masks_to_the_model(one_thread):
    model = Seen(build_model(base=4, seed=1)).to(resolve_device("cpu"))
    x, y = _traced()
    train_local(model, DataLoader(TensorDataset(x, y), batch_size=4), epochs=1, lr=1e-2, seed=0)
    _check(model, 2)
    assert len(model.seen) == 2


def test_evaluation_moves_each_batch_to_the_model(one_thread):
    model = Seen(build_model(base=4, seed=1))
    x, y = _traced()
    sums = evaluate_sums(model, x, y[:, 0].numpy().astype(np.uint8), batch_size=3)
    _check(model, 1)
    assert len(model.seen) == 3 and sums["pixels"] == 8 * 16 * 16


def test_dp_sgd_moves_its_poisson_batches_to_the_model(one_thread):
    model = Seen(build_model(base=4, norm="group", groups=2, seed=1))
    x, y = _traced()
    dp_train_local(
        model,
        list(zip(x, y, strict=True)),
        settings=DPSettings(),
        epochs=1,
        lr=1e-2,
        batch_size=4,
        seed=5,
        sigma=1.0,
        accountant=SiteAccountant("rdp"),
    )
    _check(model, 2)


def test_ddp_moves_each_chunk_to_the_model(one_thread):
    model = Seen(build_model(base=4, norm="group", groups=2, seed=1))
    x, y = _traced()
    site = DDPSite(model)
    site.clipped_sum(x, y, sorted(k for k, _ in model.named_parameters()), 1.0, 100.0, chunk=3)
    site.close()
    _check(model, 2)
    assert len(model.seen) == 3


# ----------------------------------------------------------------------------------------------
# what a run records
# ----------------------------------------------------------------------------------------------


def test_a_cpu_run_records_no_gpu_name():
    assert device_record(torch.device("cpu")) == {"device": "cpu"}
    versions = collect_versions(torch.device("cpu"))
    assert versions["device"] == "cpu" and "gpu" not in versions
    assert versions["cuda_available"] == CUDA
    assert collect_versions("cuda")["device"] == "cuda" and "gpu" not in collect_versions("cuda")


@pytest.mark.parametrize("value", [None, "channels_last", "nchw"])
def test_the_layout_switch_sets_build_models_default_and_versions_records_it(value, monkeypatch):
    """FEDONCO_LAYOUT (a benchmark's A/B of the convolution layout, bench/perf/time_layout.py):
    every process of a run builds its model in the layout it names; versions.json says which."""
    import common.model

    monkeypatch.setattr(common.model, "CHANNELS_LAST", None)  # the default: read the variable
    if value is None:
        monkeypatch.delenv("FEDONCO_LAYOUT", raising=False)
    else:
        monkeypatch.setenv("FEDONCO_LAYOUT", value)
    conv = build_model(base=4, seed=1).enc1[3].weight  # 4 -> 4 channels: the layouts differ
    nhwc = conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert nhwc == (value != "nchw")
    assert collect_versions()["layout"] == (value or "channels_last")
    # an explicit argument wins over the variable
    assert build_model(base=4, seed=1, channels_last=False).enc1[3].weight.is_contiguous()


def test_a_misspelt_layout_is_one_clear_error(monkeypatch):
    import common.model

    monkeypatch.setattr(common.model, "CHANNELS_LAST", None)
    monkeypatch.setenv("FEDONCO_LAYOUT", "nhwc")
    with pytest.raises(
        DeviceError, match="FEDONCO_LAYOUT='nhwc': expected one of channels_last, nchw"
    ):
        build_model(base=4)
    assert "expected one of" in collect_versions()["layout"]


def test_every_command_refuses_a_misspelt_layout_before_it_starts(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("FEDONCO_LAYOUT", "nhwc")
    out = tmp_path / "runs"
    argv = ["bench", "--config", "configs/smoke.toml", "--dry-run", "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fedonco bench: error: FEDONCO_LAYOUT='nhwc': expected one of channels_last, nchw"
    assert not out.exists()  # nothing started, nothing written


# A child process that trains two DP-SGD steps and a plain step on a tiny model, then allocates
# and frees a 64 MiB and an 8 MiB tensor eight times; it prints the allocator in effect, the
# weights' hash and the page faults (ru_minflt) of the last four times.
_ALLOCATOR_CHILD = """
import json, resource, sys, torch
from common.device import keep_freed_memory
from common.model import build_model, get_params, state_sha256
from common.training.dp import DPSettings, SiteAccountant, dp_train_local
from common.training.local import train_local
allocator = keep_freed_memory()
torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
data = [(torch.rand(1, 16, 16, generator=g), (torch.rand(1, 16, 16, generator=g) > 0.8).float())
        for _ in range(8)]
dp = build_model(base=4, norm="group", groups=2, seed=0)
dp_train_local(dp, data, epochs=1, lr=1e-2, batch_size=4, seed=0, sigma=1.0,
               settings=DPSettings(), accountant=SiteAccountant("rdp"))
plain = build_model(base=4, seed=0)
x = torch.stack([d[0] for d in data]); y = torch.stack([d[1] for d in data])
train_local(plain, [(x[:4], y[:4]), (x[4:], y[4:])], epochs=1, lr=1e-2, seed=0)
faults = []
for _ in range(8):  # a step's pattern: big blocks allocated, written and freed, over and over
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a, b = torch.empty(16 << 20).fill_(1.0), torch.empty(2 << 20).fill_(1.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sum(faults[4:])  # once the heap holds the working set
print(json.dumps({"allocator": allocator, "faults": faults,
                  "dp": state_sha256(get_params(dp)), "plain": state_sha256(get_params(plain))}))
"""


def _allocator_child(value: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "FEDONCO_ALLOCATOR": value}
    done = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_CHILD], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc is not glibc's")
def test_keep_freed_memory_keeps_pages_and_changes_no_result():
    """FEDONCO_ALLOCATOR=keep (the default): blocks freed and allocated again, step after step,
    are not faulted in again (under the system allocator a 64 MiB block is mapped and unmapped
    every time: 16384 pages each); the trained weights are bit for bit those of the system
    allocator (speed only, never a result)."""
    keep, system = _allocator_child("keep"), _allocator_child("system")
    assert (keep["allocator"], system["allocator"]) == ("keep", "system")
    assert system["faults"] > 4 * 16000, system
    assert keep["faults"] < 1000, keep
    assert (keep["dp"], keep["plain"]) == (system["dp"], system["plain"])


def test_a_misspelt_allocator_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from common.device import keep_freed_memory

    monkeypatch.setenv("FEDONCO_ALLOCATOR", "jemalloc")
    with pytest.raises(DeviceError, match="FEDONCO_ALLOCATOR='jemalloc': expected one of keep"):
        keep_freed_memory()
    out = tmp_path / "runs"
    argv = ["bench", "--config", "configs/smoke.toml", "--dry-run", "--out", str(out)]
    assert cli.main(argv) == 2
    assert "FEDONCO_ALLOCATOR='jemalloc'" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# CUDA (skipped on a machine without it)
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="no CUDA on this machine")
def test_one_step_of_each_kind_on_cuda():
    cuda = resolve_device("cuda")
    x, y = _data()
    model = build_model(base=4, seed=1).to(cuda)
    m = train_local(
        model,
        DataLoader(TensorDataset(x, y), batch_size=4),
        epochs=1,
        lr=1e-2,
        seed=0,
        proximal_mu=0.1,
    )
    assert all(p.device.type == "cuda" for p in model.parameters()) and np.isfinite(m["loss"])
    probs = predict_probs(model, x, 3)
    assert probs.shape == (8, 1, 16, 16) and np.isfinite(probs).all()
    sums = evaluate_sums(model, x, y[:, 0].numpy().astype(np.uint8))
    assert all(np.isfinite(v) for v in sums.values())
    dp = build_model(base=4, norm="group", groups=2, seed=1).to(cuda)
    r = dp_train_local(
        dp,
        list(zip(x, y, strict=True)),
        settings=DPSettings(),
        epochs=1,
        lr=1e-2,
        batch_size=4,
        seed=5,
        sigma=1.0,
        accountant=SiteAccountant("rdp"),
    )
    assert all(p.device.type == "cuda" for p in dp.parameters()) and r["epsilon"] > 0
    assert all(np.isfinite(v).all() for v in get_params(dp).values())
    assert device_record(cuda)["gpu"]
