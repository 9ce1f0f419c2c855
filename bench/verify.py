"""`fedonco verify RUN`: recompute every number a run reports from what the run bundle holds.

A run bundle is the directory `fedonco bench` writes (``runs/<run_id>/``: config.json,
versions.json, data/, results.json, one directory per method). For each method of results.json
this module recomputes, with the project's own code, and compares:

- hashes: ``final_model_sha256`` (``final_model.npz``), every released ``model.npz`` against its
  ``release.json`` (and a global release against ``final_model_sha256``), ``initial_model_sha256``
  (the seeded initial model rebuilt; public pretraining redone for a pretrained method), a local
  row's ``site_model_sha256``, and every data shard against the manifest's sha256 (a dataset the
  bundle does not hold, e.g. after the Ray engine, is regenerated from the seed into a temporary
  directory and its shards compared with ``data-manifest.json``);
- Dice: each released model evaluated on the test split (``common.evaluation``), per site and
  pooled, exactly as the server, the sites or the reference rows evaluated it;
- ε: a DP-SGD site's ε from its mechanism history (``common.training.dp``: the site's own
  accountant, and both neighbouring relations), the run's ε as the worst site's; a distributed-DP
  run's ε from its privacy ledger (``common.training.dp.skellam.epsilon_of``);
- the audit: every rung's AUC, bootstrap CI, TPR at each FPR with its Clopper–Pearson CI, per-site
  AUCs and DP-ceiling tests, recomputed by ``bench.audit_metrics`` from the per-candidate scores
  and membership labels the audit saved (``<method>/audit/audit_scores.npz``); the labels are
  checked against a fresh draw of the candidates, the scores against the attacker's own files;
  on a dataset with case ids (an import) the patient-level audit too, from the saved case ids
  (checked against the fresh draw's sample records).

Tolerances: hashes, counts, labels and strings exact; floats within ``RTOL`` relative (``ATOL``
absolute near 0). The summary says how many floats agreed bit for bit.
Exit status: 0 all checks agree, 1 any MISMATCH or MISSING, 2 unusable input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RTOL, ATOL = 1e-9, 1e-12
OK, MISMATCH, MISSING, SKIP = "OK", "MISMATCH", "MISSING", "SKIP"


class VerifyError(ValueError):
    """The input cannot be verified at all (not a run, an unreadable file): exit 2."""


# ----------------------------------------------------------------------------------------------
# comparing numbers
# ----------------------------------------------------------------------------------------------


def _is_num(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def close(a, b) -> bool:
    """Two floats agree within ``RTOL`` (``ATOL`` near 0); NaN agrees with NaN, None with None."""
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


def _identical(a, b) -> bool:
    return (a is None and b is None) or (
        _is_num(a) and _is_num(b) and (float(a) == float(b) or (np.isnan(a) and np.isnan(b)))
    )


def tree_diff(reported, recomputed, path: str = ""):
    """Compare two JSON-like trees leaf by leaf: floats with ``close``, everything else (counts,
    strings, booleans, None) exactly. Returns (mismatches as (path, reported, recomputed), leaves
    compared, float leaves compared, float leaves that are bit-identical)."""
    if isinstance(reported, dict) and isinstance(recomputed, dict):
        out, n, nf, same = [], 0, 0, 0
        for k in sorted(set(reported) | set(recomputed), key=str):
            if k not in reported or k not in recomputed:
                out.append(
                    (f"{path}.{k}", reported.get(k, "<absent>"), recomputed.get(k, "<absent>"))
                )
                n += 1
                continue
            o, c, f, s = tree_diff(reported[k], recomputed[k], f"{path}.{k}")
            out, n, nf, same = out + o, n + c, nf + f, same + s
        return out, n, nf, same
    if isinstance(reported, (list, tuple)) and isinstance(recomputed, (list, tuple)):
        if len(reported) != len(recomputed):
            return [(path, reported, recomputed)], 1, 0, 0
        out, n, nf, same = [], 0, 0, 0
        for i, (a, b) in enumerate(zip(reported, recomputed, strict=True)):
            o, c, f, s = tree_diff(a, b, f"{path}[{i}]")
            out, n, nf, same = out + o, n + c, nf + f, same + s
        return out, n, nf, same
    if isinstance(reported, bool) or isinstance(recomputed, bool):  # True is not 1 here
        same = type(reported) is type(recomputed) and reported == recomputed
        return ([] if same else [(path, reported, recomputed)]), 1, 0, 0
    ints = isinstance(reported, (int, np.integer)) and isinstance(recomputed, (int, np.integer))
    if ints or not (_is_num(reported) and _is_num(recomputed)):  # counts, strings: exact
        return ([] if reported == recomputed else [(path, reported, recomputed)]), 1, 0, 0
    ok = close(reported, recomputed)
    return (
        ([] if ok else [(path, reported, recomputed)]),
        1,
        1,
        int(_identical(reported, recomputed)),
    )


def _show(x, full: bool = False) -> str:
    if isinstance(x, str):
        return x if full or len(x) <= 16 else x[:12] + "…"
    if _is_num(x) and not isinstance(x, (int, np.integer)):
        return f"{float(x):.10g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_show(v, full) for v in x) + "]"
    return str(x)


@dataclass
class Check:
    status: str
    what: str
    reported: object = None
    recomputed: object = None
    note: str = ""

    def line(self) -> str:
        full = self.status != OK
        text = f"{self.status:8s} {self.what}"
        if self.status in (OK, MISMATCH):
            text += f": reported {_show(self.reported, full)}, recomputed {_show(self.recomputed, full)}"
        return text + (f" ({self.note})" if self.note else "")


class Report:
    """The checks made so far; each is printed as it is made (through tqdm, under the bar)."""

    def __init__(self, write=print) -> None:
        self.checks: list[Check] = []
        self.floats = self.identical = 0
        self.write = write

    def add(self, check: Check) -> bool:
        self.checks.append(check)
        self.write(check.line())
        return check.status == OK

    def exact(self, what: str, reported, recomputed, note: str = "") -> bool:
        return self.add(
            Check(OK if reported == recomputed else MISMATCH, what, reported, recomputed, note)
        )

    def number(self, what: str, reported, recomputed, note: str = "") -> bool:
        """A float (or a list of floats) within the tolerance."""
        diffs, _, nf, same = tree_diff(reported, recomputed)
        self.floats += nf
        self.identical += same
        if diffs and _is_num(reported) and _is_num(recomputed) and float(recomputed):
            rel = abs(float(reported) - float(recomputed)) / abs(float(recomputed))
            note = (note + "; " if note else "") + f"relative difference {rel:.2g}"
        return self.add(Check(MISMATCH if diffs else OK, what, reported, recomputed, note))

    def tree(self, what: str, reported, recomputed) -> bool:
        """Every leaf of two trees; one line: how many leaves, or the first that differs."""
        diffs, n, nf, same = tree_diff(reported, recomputed)
        self.floats += nf
        self.identical += same
        if not diffs:
            return self.add(Check(OK, what, f"{n} numbers", f"{n} numbers", "all within tolerance"))
        path, a, b = diffs[0]
        more = f"; {len(diffs) - 1} more" if len(diffs) > 1 else ""
        return self.add(
            Check(MISMATCH, f"{what} {path.lstrip('.')}", a, b, f"{len(diffs)} of {n} differ{more}")
        )

    def missing(self, what: str, note: str) -> bool:
        return self.add(Check(MISSING, what, note=note))

    def skip(self, what: str, note: str) -> None:
        self.add(Check(SKIP, what, note=note))

    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in (OK, MISMATCH, MISSING, SKIP)}

    def summary(self) -> str:
        c = self.counts()
        return (
            f"verify: {len(self.checks)} checks: {c[OK]} OK, {c[MISMATCH]} MISMATCH, "
            f"{c[MISSING]} MISSING, {c[SKIP]} SKIP; {self.identical} of {self.floats} "
            f"floats bit-identical (tolerance: relative {RTOL:g}, absolute {ATOL:g}; hashes, "
            "counts and labels exact)"
        )

    @property
    def failed(self) -> bool:
        c = self.counts()
        return bool(c[MISMATCH] or c[MISSING])


# ----------------------------------------------------------------------------------------------
# reading the bundle (anything unreadable is a VerifyError: exit 2, one line)
# ----------------------------------------------------------------------------------------------


def read_json(path: Path, what: str = ""):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VerifyError(f"{path}: not found{what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VerifyError(f"{path}: unreadable ({err})") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    from common.io import load_npz

    try:
        return load_npz(path)
    except FileNotFoundError:
        raise VerifyError(f"{path}: not found") from None
    except Exception as err:  # BadZipFile, zlib.error, a pickled array, ...: not a usable file
        raise VerifyError(f"{path}: unreadable .npz ({type(err).__name__}: {err})") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _cuda_devices(record):
    """The CUDA devices named anywhere in a method's ``device`` record (server, sites, bench)."""
    if isinstance(record, dict):
        for k, v in record.items():
            if k == "device" and isinstance(v, str) and v.startswith("cuda"):
                yield v
            else:
                yield from _cuda_devices(v)


# ----------------------------------------------------------------------------------------------
# one seed's run
# ----------------------------------------------------------------------------------------------


class SeedRun:
    """One seed's bundle (a single-seed run, or ``seed<N>/`` of a several-seed run)."""

    def __init__(self, sdir: Path, report: Report, cache_dir: Path, bar=None) -> None:
        from tqdm import tqdm

        from common.config import ConfigError, parse_config

        self.dir, self.report, self.cache_dir = Path(sdir), report, cache_dir
        self.bench_threads = 1  # torch's in the benchmark's own process (versions.json)
        self.bar = bar if bar is not None else tqdm(disable=True)
        self.results = read_json(
            sdir / "results.json",
            ": not a run directory (give the directory `fedonco bench` wrote, runs/<run_id>)",
        )
        if not isinstance(self.results, dict) or not isinstance(self.results.get("methods"), dict):
            raise VerifyError(f"{sdir / 'results.json'}: no 'methods': not a benchmark's results")
        self.configs = {}
        for name in ["config.json"] + sorted(p.name for p in sdir.glob("config-*.json")):
            try:
                self.configs[name] = parse_config(
                    read_json(sdir / name, ": not a bench run (config.json is missing)"),
                    str(sdir / name),
                )
            except ConfigError as err:
                why = " ".join(str(err).split())
                raise VerifyError(f"{sdir / name}: not a usable config ({why})") from None
        self.cfg = self.configs["config.json"]
        self.data_dir: Path | None = None
        self.manifest: dict | None = None
        self.test_ok = True

    # -- data ---------------------------------------------------------------------------------

    def check_data(self, stack: contextlib.ExitStack) -> None:
        """The dataset: its shards against the manifest's sha256 (the bundle's data/), or
        regenerated from the seed and compared with the recorded manifest (data-manifest.json)."""
        from common.data.store import DatasetIntegrityError, read_manifest

        r, here = self.report, self.dir / "data"
        try:
            if (here / "manifest.json").is_file():
                self.manifest, self.data_dir = read_manifest(here), here
                recorded = self.manifest
            elif (self.dir / "data-manifest.json").is_file():
                recorded = read_json(self.dir / "data-manifest.json")
                tmp = Path(
                    stack.enter_context(tempfile.TemporaryDirectory(prefix="fedonco-verify-"))
                )
                self.manifest, self.data_dir = self._regenerate(tmp / "data"), tmp / "data"
            else:
                r.missing(
                    f"seed {self.cfg.seed} data",
                    "neither data/manifest.json nor "
                    "data-manifest.json: Dice and the audit's labels cannot be checked",
                )
                self.test_ok = False
                return
        except DatasetIntegrityError as err:
            raise VerifyError(str(err)) from None
        mine = {e["file"]: e for e in self.manifest["shards"]}
        for entry in recorded["shards"]:
            what = f"data {entry['file']} sha256"
            path = self.data_dir / entry["file"]
            if entry["file"] not in mine:  # a regenerated subset: attacker split not rebuilt
                r.skip(what, "not regenerated (only train, holdout and test are)")
                continue
            if not path.is_file():
                ok = r.missing(what, f"{path} not found")
            else:
                ok = r.exact(what, entry["sha256"], file_sha256(path))
            if not ok and entry["split"] in ("test", "train", "holdout"):
                self.test_ok = False
        summary = self.results.get("data_summary")
        if summary is not None:
            r.tree(
                f"seed {self.cfg.seed} data_summary (per-site table)",
                summary,
                recorded.get("summary"),
            )

    def _regenerate(self, out: Path) -> dict:
        from common.data.diffusion.generate import build_dataset

        self.bar.set_description("regenerating the dataset")
        return build_dataset(
            self.cfg, out, workers=1, gallery=False, only_splits=["train", "holdout", "test"]
        )

    # -- one method -----------------------------------------------------------------------------

    def methods(self):
        """(name in results.json, method, its directory, its cell's config) for every method."""
        for name, entry in self.results["methods"].items():
            sweep = entry.get("sweep")
            if sweep:
                method, mdir, cfile = (
                    sweep["method"],
                    self.dir / name / sweep["method"],
                    f"config-{name}.json",
                )
            else:
                method, mdir, cfile = name, self.dir / name, "config.json"
            if cfile not in self.configs:
                raise VerifyError(f"{self.dir / cfile}: not found (the config of {name})")
            yield name, entry, method, mdir, self.configs[cfile]

    def check_method(self, name: str, entry: dict, method: str, mdir: Path, cfg) -> None:
        from common.methods import METHOD_NAMES

        if method not in METHOD_NAMES:
            raise VerifyError(f"{self.dir / 'results.json'}: unknown method {method!r}")
        if not mdir.is_dir():
            self.report.missing(f"{name}", f"{mdir} not found: nothing of it can be checked")
            return
        mcfg = cfg.for_method(method)
        self.bar.set_description(f"{name}: hashes")
        self.check_hashes(name, entry, method, mdir, mcfg)
        self.bar.update(1)
        self.bar.set_description(f"{name}: Dice")
        self.check_dice(name, entry, method, mdir, mcfg)
        self.bar.update(1)
        self.bar.set_description(f"{name}: ε")
        eps = self.check_dp(name, entry, method, mdir, mcfg)
        self.bar.update(1)
        self.bar.set_description(f"{name}: audit")
        self.check_audit(name, entry, mdir, cfg, eps)
        self.bar.update(1)

    def check_hashes(self, name: str, entry: dict, method: str, mdir: Path, mcfg) -> None:
        import torch

        from bench.audit import local_targets
        from common.model import get_params, state_sha256
        from common.training.pretrain import CACHE_ENV, initial_model

        r = self.report
        result = read_json(mdir / "result.json") if (mdir / "result.json").is_file() else {}
        final = mdir / "final_model.npz"
        targets = local_targets(mdir)
        if final.is_file():
            r.exact(
                f"{name} final_model_sha256 (final_model.npz)",
                entry["final_model_sha256"],
                state_sha256(read_npz(final)),
            )
        elif "all" not in targets:
            r.skip(
                f"{name} final_model_sha256",
                "the run keeps no file of this model (a reference row's unreleased average)",
            )
        for tag, rel in targets.items():
            info = read_json(mdir / rel / "release.json")
            h = state_sha256(read_npz(mdir / rel / "model.npz"))
            r.exact(
                f"{name} release {rel}/model.npz sha256 (release.json)",
                info.get("final_model_sha256"),
                h,
            )
            if tag == "all":
                r.exact(
                    f"{name} final_model_sha256 (released {rel}/model.npz)",
                    entry["final_model_sha256"],
                    h,
                )
            elif (result.get("site_model_sha256") or {}).get(tag) is not None:
                r.exact(
                    f"{name} site_model_sha256 {tag} (released {rel}/model.npz)",
                    result["site_model_sha256"][tag],
                    h,
                )
        if not targets:
            r.missing(f"{name} released model", f"no release.json under {mdir}")
        # the initial model: seeded weights (public pretraining redone, into a scratch cache)
        os.environ[CACHE_ENV] = str(self.cache_dir)
        torch.manual_seed(mcfg.seed)
        with torch_threads(self.bench_threads):  # pretraining runs in the benchmark's process
            initial = get_params(initial_model(mcfg, method))
        r.exact(
            f"{name} initial_model_sha256 (rebuilt from the seed)",
            entry["initial_model_sha256"],
            state_sha256(initial),
        )

    def _test(self, site: str):
        from common.data.loader import load_arrays
        from common.transforms import to_inputs

        images, masks, _, _ = load_arrays(self.data_dir, "test", site, self.manifest)
        return to_inputs(images, self.manifest["window"]), masks

    def check_dice(self, name: str, entry: dict, method: str, mdir: Path, mcfg) -> None:
        from bench.audit import local_targets
        from common.evaluation import evaluate_sums, summarize
        from common.methods import get_method
        from common.metrics import metrics_from_sums
        from common.release import load_release

        r = self.report
        if not self.test_ok:
            r.skip(f"{name} Dice", "the test split is missing or failed its hash check")
            return
        targets = local_targets(mdir)
        if not targets:
            r.skip(f"{name} Dice", "no released model to evaluate")
            return
        gpus = sorted(set(_cuda_devices(entry.get("device"))))
        if gpus:
            r.write(
                f"NOTE     {name} computed on {', '.join(gpus)}; verify evaluates on the CPU: "
                "Dice and CE may differ in the last bits, a pixel at the 0.5 threshold may flip"
            )
        models = {}
        for tag, rel in targets.items():
            try:
                models[tag] = load_release(mdir / rel)[0]
            except (KeyError, RuntimeError, ValueError) as err:  # wrong names or shapes
                r.add(
                    Check(
                        MISMATCH, f"{name} release {rel} loads", note=f"{type(err).__name__}: {err}"
                    )
                )
                return
        sites = mcfg.site_names
        test = {s: self._test(s) for s in sites}
        bs = mcfg.train.eval_batch_size
        # the evaluators' thread count: server and sites run with one, a reference row is
        # evaluated in the benchmark's own process
        threads = 1 if get_method(method).kind == "federated" else self.bench_threads
        with torch_threads(threads):
            if "all" in models:
                sums = {s: evaluate_sums(models["all"], *test[s], bs) for s in sites}
            else:
                sums = {s: evaluate_sums(models[s], *test[s], bs) for s in models}
            cross = {}
            if get_method(method).kind == "local":
                cross = {
                    s: {t: metrics_from_sums(evaluate_sums(m, *test[t], bs))["dice"] for t in sites}
                    for s, m in models.items()
                }
        got = summarize(sums)
        for key in ("dice", "dice_site_mean", "dice_global", "fp_rate_empty", "ce_loss"):
            value = got[key] if key == "dice_site_mean" else got["overall"][key]
            r.number(f"{name} {key}", entry[key], value)
        per_site = [got["per_site"][s]["dice"] if s in got["per_site"] else None for s in sites]
        for s, reported, value in zip(sites, entry["dice_per_site"], per_site, strict=True):
            r.number(f"{name} dice site {s}", reported, value)
        if cross:
            r.tree(
                f"{name} dice_cross (every site's model on every site)",
                entry.get("dice_cross"),
                cross,
            )
            mean = float(np.mean([np.nanmean(list(row.values())) for row in cross.values()]))
            r.number(f"{name} dice_all_sites", entry.get("dice_all_sites"), mean)

    # -- ε ----------------------------------------------------------------------------------------

    def check_dp(self, name: str, entry: dict, method: str, mdir: Path, mcfg) -> float | None:
        """Recompute the DP record; returns the recomputed ε (None without DP)."""
        from common.methods import get_method

        r, dp = self.report, entry.get("dp")
        if not get_method(method).dp:
            if entry.get("epsilon") is not None:
                r.exact(f"{name} epsilon (not a DP method)", entry["epsilon"], None)
            return None
        if not dp:
            r.missing(f"{name} dp", "a DP method without a DP record in results.json")
            return None
        r.number(f"{name} delta (config)", entry.get("delta"), mcfg.dp.delta)
        if get_method(method).distributed_dp:
            return self._check_ddp(name, entry, dp, mdir)
        return self._check_sites(name, entry, dp, mdir)

    def _check_sites(self, name: str, entry: dict, dp: dict, mdir: Path) -> float | None:
        from common.training.dp import DPConfigError, SiteAccountant
        from common.training.dp.accountant import epsilons_of, history_from_text

        r = self.report
        per_site, eps = dp.get("per_site") or {}, {}
        if not per_site:
            r.missing(f"{name} dp.per_site", "no per-site DP record")
            return None
        for site, rec in sorted(per_site.items()):
            what = f"{name} dp site {site}"
            if rec.get("history") is None:
                r.missing(f"{what} history", "no mechanism history: its ε cannot be recomputed")
                continue
            try:
                history = history_from_text(json.dumps(rec["history"]))
                acc = SiteAccountant(rec["accountant"], rec["adjacency"])
                acc.history = history
                eps[site] = acc.epsilon(float(rec["delta"]))
                by_adj = epsilons_of(history, float(rec["delta"]))
            except (DPConfigError, TypeError, ValueError) as err:
                r.add(Check(MISMATCH, f"{what} history", note=f"unusable: {err}"))
                continue
            r.number(
                f"{what} epsilon ({rec['adjacency']}, {rec['accountant']})",
                rec.get("epsilon"),
                eps[site],
            )
            for adj, value in by_adj.items():
                r.number(
                    f"{what} epsilon_by_adjacency {adj}",
                    (rec.get("epsilon_by_adjacency") or {}).get(adj),
                    value,
                )
            r.exact(f"{what} steps (sum of the history)", rec.get("steps"), acc.steps)
            state = mdir / "site-state" / mdir.name / f"site{site}" / "dp_accountant.json"
            if state.is_file():  # what the site itself saved after its last round
                saved = (read_json(state).get("accountant") or {}).get("history")
                r.exact(f"{what} history (the site's dp_accountant.json)", rec["history"], saved)
        if not eps:
            return None
        worst = max(eps, key=eps.get)
        r.number(f"{name} epsilon (worst site)", entry.get("epsilon"), eps[worst])
        r.number(f"{name} dp.epsilon (worst site)", dp.get("epsilon"), eps[worst])
        r.exact(f"{name} dp.worst_site", dp.get("worst_site"), worst)
        r.tree(
            f"{name} dp.epsilon_by_adjacency (worst site)",
            dp.get("epsilon_by_adjacency"),
            per_site[worst].get("epsilon_by_adjacency"),
        )
        return eps[worst]

    def _check_ddp(self, name: str, entry: dict, dp: dict, mdir: Path) -> float | None:
        from common.training.dp import DPConfigError
        from common.training.dp.adjacency import ADJACENCIES
        from common.training.dp.skellam import epsilon_of

        r, path = self.report, mdir / "privacy_ledger.jsonl"
        if not path.is_file():
            r.missing(f"{name} privacy ledger", f"{path} not found: ε cannot be recomputed")
            return None
        try:
            ledger = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError) as err:
            raise VerifyError(f"{path}: unreadable ({err})") from None
        r.exact(f"{name} dp.steps_accounted (ledger lines)", dp.get("steps_accounted"), len(ledger))
        history = read_json(mdir / "history.json") if (mdir / "history.json").is_file() else []
        kept = sum("ddp" in h for h in history)
        r.exact(
            f"{name} dp.releases_not_in_history",
            dp.get("releases_not_in_history"),
            len(ledger) - kept,
        )
        delta = float(entry["delta"])
        try:
            by_adj = {adj: epsilon_of(ledger, delta, adj) for adj in ADJACENCIES}
        except (DPConfigError, KeyError, TypeError, ValueError) as err:
            r.add(Check(MISMATCH, f"{name} privacy ledger", note=f"unusable: {err}"))
            return None
        for adj, value in by_adj.items():
            r.number(
                f"{name} dp.epsilon_by_adjacency {adj} (ledger)",
                (dp.get("epsilon_by_adjacency") or {}).get(adj),
                value,
            )
        eps = by_adj.get(dp.get("adjacency"))
        r.number(f"{name} epsilon ({dp.get('adjacency')}, ledger)", entry.get("epsilon"), eps)
        return eps

    # -- the audit ----------------------------------------------------------------------------------

    def check_audit(self, name: str, entry: dict, mdir: Path, cfg, eps: float | None) -> None:
        from bench.audit import AUDIT_SCORES, draw_candidates, load_audit_cases, load_audit_scores
        from bench.audit_metrics import audit_metrics

        r, mia = self.report, entry.get("mia")
        if not mia or not mia.get("attacks"):
            return
        path = mdir / "audit" / AUDIT_SCORES
        if not path.is_file():
            r.missing(
                f"{name} audit scores",
                f"{path} not found (a run before `fedonco verify` "
                "existed does not save them): the audit cannot be recomputed",
            )
            return
        try:
            scores, member, sites = load_audit_scores(path)
            cases = load_audit_cases(path)
        except Exception as err:
            raise VerifyError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
        targets = (mia.get("attack_info") or {}).get("targets") or []
        if self.test_ok and self.data_dir is not None:  # the labels: a fresh draw of the candidates
            _, _, fresh, fresh_sites, fresh_cases = draw_candidates(
                self.data_dir, cfg.mia.n_members, cfg.seed, cfg.mia.nonmember_ratio, with_cases=True
            )
            keep = np.ones(len(fresh), bool) if "all" in targets else np.isin(fresh_sites, targets)
            same = np.array_equal(fresh[keep], member) and np.array_equal(
                fresh_sites[keep].astype(str), sites
            )
            r.add(
                Check(
                    OK if same else MISMATCH,
                    f"{name} audit labels and sites (a fresh draw of the candidates)",
                    f"{int(member.sum())} members",
                    f"{int(fresh[keep].sum())} members",
                    "" if same else "the saved labels are not the candidates' memberships",
                )
            )
            if cases is not None:
                same = np.array_equal(fresh_cases[keep], cases)
                r.add(
                    Check(
                        OK if same else MISMATCH,
                        f"{name} audit case ids (the fresh draw's sample records)",
                        f"{len(set(cases.tolist()))} cases",
                        f"{len(set(fresh_cases[keep].tolist()))} cases",
                        "" if same else "the saved case ids are not the candidates' cases",
                    )
                )
        for tag in targets:  # the pooled scores are the attacker's own, target by target
            part_path = mdir / "audit" / tag / "scores.npz"
            if not part_path.is_file():
                r.missing(f"{name} attacker scores {tag}", f"{part_path} not found")
                continue
            part = read_npz(part_path)
            pick = np.ones(len(member), bool) if tag == "all" else sites == tag
            same = set(part) == set(scores) and all(
                np.array_equal(part[k], scores[k][pick]) for k in part
            )
            r.add(
                Check(
                    OK if same else MISMATCH,
                    f"{name} audit scores == the attacker's {tag}/scores.npz",
                    f"{len(part)} rungs",
                    f"{len(scores)} rungs",
                )
            )
        r.exact(f"{name} mia.n_members", mia.get("n_members"), int(member.sum()))
        r.exact(f"{name} mia.n_nonmembers", mia.get("n_nonmembers"), int((~member).sum()))
        epsilon = eps if eps is not None else entry.get("epsilon")
        rungs = {**mia.get("attacks", {}), **((mia.get("auditor") or {}).get("attacks") or {})}
        fresh_metrics = {}
        for rung, reported in rungs.items():
            self.bar.set_description(f"{name}: audit {rung}")
            if rung not in scores:
                r.missing(f"{name} mia {rung}", f"no scores for it in {path.name}")
                continue
            got = audit_metrics(
                scores[rung],
                member,
                sites=sites,
                epsilon=epsilon,
                delta=entry.get("delta"),
                n_boot=cfg.mia.bootstrap,
                seed=cfg.seed,
            )
            fresh_metrics[rung] = got
            what = f"{name} mia {rung}"
            r.number(f"{what} auc", reported.get("auc"), got["auc"])
            r.number(f"{what} auc_ci95 (bootstrap)", reported.get("auc_ci95"), got["auc_ci95"])
            for k, point in got["tpr"].items():
                rep = (reported.get("tpr") or {}).get(k)
                if point is None:
                    r.exact(f"{what} {k}", reported.get(k), None, "not estimable")
                    continue
                r.number(
                    f"{what} {k} [Clopper-Pearson 95%]",
                    [reported.get(k), *((rep or {}).get("tpr_ci95") or [None, None])],
                    [point["tpr"], *point["tpr_ci95"]],
                )
            r.tree(f"{what} every other number (per site, thresholds, DP ceiling)", reported, got)
        best = mia.get("attack")
        if best in fresh_metrics:
            keys = (
                "auc",
                "auc_ci95",
                "tpr_at_10pct_fpr",
                "tpr_at_1pct_fpr",
                "tpr_at_0.1pct_fpr",
                "tpr",
                "dp_ceiling",
            )
            r.tree(
                f"{name} mia headline (the quoted rung, {best})",
                {k: mia.get(k) for k in keys},
                {k: fresh_metrics[best].get(k) for k in keys},
            )
        aud = mia.get("auditor") or {}
        if aud.get("attack") in fresh_metrics:
            got = fresh_metrics[aud["attack"]]
            r.tree(
                f"{name} mia auditor headline ({aud['attack']})",
                {k: aud.get(k) for k in ("auc", "auc_ci95", "tpr_at_1pct_fpr")},
                {k: got.get(k) for k in ("auc", "auc_ci95", "tpr_at_1pct_fpr")},
            )
        self.check_patient_level(name, mia, scores, member, cases, cfg)
        self.check_whitebox(name, entry, mdir, cfg, epsilon)

    def check_whitebox(self, name: str, entry: dict, mdir: Path, cfg, epsilon) -> None:
        """The white-box audit's numbers (``mia.whitebox``) from its saved scores and labels."""
        from bench.audit import WHITEBOX_SCORES, load_audit_scores
        from bench.audit_metrics import audit_metrics

        r, wb = self.report, (entry.get("mia") or {}).get("whitebox")
        if not wb or not wb.get("attacks"):
            return
        path = mdir / "audit-whitebox" / WHITEBOX_SCORES
        if not path.is_file():
            r.missing(f"{name} white-box scores", f"{path} not found")
            return
        try:
            scores, member, sites = load_audit_scores(path)
        except Exception as err:
            raise VerifyError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
        fresh = {}
        for rung, reported in wb["attacks"].items():
            if rung not in scores:
                r.missing(f"{name} white-box {rung}", f"no scores for it in {path.name}")
                continue
            fresh[rung] = audit_metrics(
                scores[rung],
                member,
                sites=sites,
                epsilon=epsilon,
                delta=entry.get("delta"),
                n_boot=cfg.mia.bootstrap,
                seed=cfg.seed,
            )
            r.tree(f"{name} white-box {rung}", reported, fresh[rung])
        if wb.get("attack") in fresh:
            keys = ("auc", "auc_ci95", "tpr_at_1pct_fpr", "tpr_at_10pct_fpr", "tpr")
            r.tree(
                f"{name} white-box headline ({wb['attack']})",
                {k: wb.get(k) for k in keys},
                {k: fresh[wb["attack"]].get(k) for k in keys},
            )

    def check_patient_level(
        self, name: str, mia: dict, scores: dict, member: np.ndarray, cases: np.ndarray | None, cfg
    ) -> None:
        """The patient-level audit (``bench.audit.patient_audit``), recomputed from the saved
        scores and case ids; a run on a dataset without case ids has neither."""
        from bench.audit import patient_audit

        r, reported = self.report, mia.get("patient_level")
        what = f"{name} mia patient_level"
        if cases is None:
            if reported is not None:
                r.missing(what, "the saved scores hold no case ids")
            return
        if reported is None:
            r.add(
                Check(
                    MISMATCH,
                    what,
                    None,
                    "a patient-level audit",
                    "the saved scores hold case ids; results.json has no patient_level",
                )
            )
            return
        self.bar.set_description(f"{name}: audit per patient")
        try:
            got = patient_audit(scores, member, cases, mia.get("attack"), cfg)
        except ValueError as err:
            r.add(Check(MISMATCH, what, "a patient-level audit", str(err)))
            return
        r.tree(f"{what} (the quoted rung per case)", reported, got)


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------


def bench_threads(sdir: Path, write) -> int:
    """The torch thread count of the benchmark's own process (versions.json), with which its
    public pretraining and reference rows are recomputed; a NOTE where versions differ from the
    run's (floats may then differ in the last bits)."""
    import torch

    from common.versions import collect_versions

    path, here = sdir / "versions.json", torch.get_num_threads()
    if not path.is_file():
        write(f"NOTE     no versions.json: recomputing with this process's {here} torch threads")
        return here
    then, now = read_json(path), collect_versions()
    libs = then.get("libraries") or {}
    differ = [
        f"{k} {libs[k]} -> {now['libraries'].get(k)}"
        for k in sorted(libs)
        if libs[k] != now["libraries"].get(k)
    ]
    if then.get("python") != now["python"]:
        differ.append(f"python {then.get('python')} -> {now['python']}")
    if differ:
        write(
            "NOTE     versions differ from the run's (" + ", ".join(differ) + "): floats may "
            "differ in the last bits"
        )
    threads = then.get("torch_threads")
    if not isinstance(threads, int) or threads < 1:
        write(
            f"NOTE     versions.json does not record the benchmark's torch thread count: public "
            f"pretraining and the reference rows are recomputed with this process's {here}"
        )
        return here
    return threads


def seed_dirs(run_dir: Path) -> tuple[dict | None, list[Path]]:
    """(the several-seed summary or None, the seed bundles to verify)."""
    if not run_dir.exists():
        raise VerifyError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise VerifyError(f"{run_dir}: not a directory (give the run directory, runs/<run_id>)")
    top = read_json(
        run_dir / "results.json",
        ": not a run directory (give the directory `fedonco bench` wrote, runs/<run_id>)",
    )
    if isinstance(top, dict) and "seeds" in top:
        dirs = [run_dir / f"seed{s}" for s in top["seeds"]]
        for d in dirs:
            if not d.is_dir():
                raise VerifyError(f"{d}: not found (results.json lists seed {d.name[4:]})")
        return top, dirs
    return None, [run_dir]


def _print(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)  # above the progress bar (on stderr, when a terminal)


def verify_run(run_dir: Path, write=_print) -> Report:
    """Verify a run directory (one seed, or every seed of a several-seed run); ``VerifyError``
    when it is not a usable run."""
    from tqdm import tqdm

    from bench.report import seed_summary

    run_dir = Path(run_dir)
    summary, dirs = seed_dirs(run_dir)
    with contextlib.ExitStack() as stack:
        cache = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="fedonco-verify-cache-"))
        )
        saved_cache = os.environ.get("FEDONCO_CACHE_DIR")
        stack.callback(
            lambda: (
                os.environ.__setitem__("FEDONCO_CACHE_DIR", saved_cache)
                if saved_cache is not None
                else os.environ.pop("FEDONCO_CACHE_DIR", None)
            )
        )
        report = Report(write)
        # every bundle's results and configs read first: an unusable one stops before any work
        runs = [SeedRun(sdir, report, cache) for sdir in dirs]
        total = sum(1 + 4 * len(s.results["methods"]) for s in runs)
        bar = stack.enter_context(
            tqdm(total=total, desc="verify", unit="step", disable=None, file=sys.stderr)
        )
        threads = bench_threads(dirs[0], report.write)
        for run in runs:
            run.bar, run.bench_threads = bar, threads
            if len(runs) > 1:
                report.write(f"== {run.dir.name} ==")
            bar.set_description(f"seed {run.cfg.seed}: data")
            run.check_data(stack)
            bar.update(1)
            for name, entry, method, mdir, cfg in list(run.methods()):
                try:
                    run.check_method(name, entry, method, mdir, cfg)
                except KeyError as err:
                    raise VerifyError(
                        f"{run.dir / 'results.json'}: {name} lacks {err}: not a "
                        "complete results file"
                    ) from None
        if summary is not None:
            per_seed = {int(r.results.get("seed", r.cfg.seed)): r.results for r in runs}
            again = seed_summary(per_seed)
            for m in sorted(set(summary["methods"]) | set(again)):
                report.tree(
                    f"summary {m} (mean ± sd over seeds)", summary["methods"].get(m), again.get(m)
                )
    return report


def run_verify_cmd(args) -> int:
    """``fedonco verify RUN``: 0 when every check agrees, 1 on any mismatch, 2 (``VerifyError``,
    a ``ValueError``: the CLI prints its one line) when RUN is not a usable run."""
    report = verify_run(Path(args.run))
    print(report.summary())
    return 1 if report.failed else 0
