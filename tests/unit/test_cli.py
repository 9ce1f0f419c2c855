"""The `fedonco` CLI: every subcommand reaches its handler, `--help` explains, `-v` shows the
traceback of an error."""

import importlib

import pytest

from bench import cli

# command line -> (module, handler) it must reach; the required arguments are dummies (the
# handler is replaced, so nothing runs)
COMMANDS = {
    ("data", "--out", "x"): ("bench.data_cli", "run_data"),
    ("data", "import", "src", "--out", "x"): ("bench.data_cli", "run_data_import"),
    ("diffusion", "train", "--out", "x"): ("common.data.diffusion.train", "run_diffusion_train"),
    ("diffusion", "report", "--model", "m", "--out", "x"): (
        "common.data.diffusion.report",
        "run_diffusion_report",
    ),
    ("server", "--config", "c", "--data", "d"): ("server.campaign", "run_server_cmd"),
    ("client", "--config", "c", "--data", "d"): ("client.app", "run_client_cmd"),
    ("release", "serve", "--model", "m"): ("server.inference", "run_release_cmd"),
    (
        "attack",
        "--target",
        "t",
        "--pool",
        "p",
        "--candidates",
        "c",
        "--config",
        "c",
        "--out",
        "o",
    ): (
        "attacks.cli",
        "run_attack_cmd",
    ),
    (
        "attack-whitebox",
        "--release",
        "r",
        "--pool",
        "p",
        "--candidates",
        "c",
        "--config",
        "c",
        "--out",
        "o",
    ): ("attacks.cli", "run_whitebox_cmd"),
    ("bench",): ("bench.run", "run_bench"),
    ("threats",): ("bench.threats", "run_threats_cmd"),
    ("study", "heterogeneity"): ("bench.study", "run_study_cmd"),
    ("attack-inversion", "--view", "v", "--config", "c", "--out", "o"): (
        "attacks.cli",
        "run_inversion_cmd",
    ),
    ("certs", "--out", "x"): ("common.wire.tls", "run_certs_cmd"),
    ("health", "127.0.0.1:1"): ("common.wire.channel", "run_health_cmd"),
    ("judge", "--run-dir", "r", "--data", "d", "--release", "a", "--methods", "fedavg"): (
        "bench.judge",
        "run_judge_cmd",
    ),
    ("report", "docs", "r"): ("bench.results_doc", "run_report_docs"),
    ("verify", "runs/x"): ("bench.verify", "run_verify_cmd"),
}


@pytest.mark.parametrize("argv", list(COMMANDS), ids=lambda a: " ".join(a[:2]))
def test_every_command_reaches_its_handler(argv, monkeypatch):
    module, name = COMMANDS[argv]
    seen = []
    monkeypatch.setattr(importlib.import_module(module), name, lambda args: seen.append(args) or 7)
    assert cli.main(list(argv)) == 7 and len(seen) == 1


def test_every_command_is_covered_and_has_help(capsys):
    parser = cli.build_parser()
    commands = {a for a in parser._subparsers._group_actions[0].choices}
    assert commands == {argv[0] for argv in COMMANDS}
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        assert "usage: fedonco" in capsys.readouterr().out


def test_errors_are_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nope.toml")
    assert cli.main(["data", "--config", missing, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "fedonco data: error:" in err and "Traceback" not in err
    assert cli.main(["-v", "data", "--config", missing, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "fedonco data: error:" in err


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_count_below_one_is_refused_not_silently_run_once(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--profile", "smoke", "--seeds", value])
    assert exit_.value.code == 2
    assert "argument --seeds:" in capsys.readouterr().err


def test_an_unreachable_release_service_is_one_line_within_the_connect_timeout(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        "attack",
        "--target",
        f"127.0.0.1:{port}",
        "--pool",
        str(tmp_path),
        "--candidates",
        str(tmp_path / "c.npz"),
        "--config",
        "configs/smoke.toml",
        "--out",
        str(tmp_path / "o"),
        "--connect-timeout",
        "1",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"release service at 127.0.0.1:{port}: Describe failed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
