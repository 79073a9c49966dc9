"""Every unlearning and benchmark YAML runs through the real CLI at tiny size, and the benchmark's
``results.json`` keeps its contract; plus the protocol's sanity checks on real (small) runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from fake_datasets import write_cifar10, write_cifar100, write_mnist
from ltu_lightning.benchmark.tuning import grid_points
from test_configs_foundation import TINY

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
GRIDS = REPO / "experiments" / "tuning"
LTU_CONFIGS = sorted((CONFIGS / "unlearn").glob("ltu_*.yaml"))
ABLATIONS = sorted((CONFIGS / "unlearn" / "ablations").glob("*.yaml"))
BENCHMARKS = sorted((CONFIGS / "benchmark").glob("*.yaml"))
# a variant of a benchmark, layered on it: configs/benchmark/<benchmark>/<variant>.yaml
VARIANTS = sorted((CONFIGS / "benchmark").glob("*/*.yaml"))
FAKE = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "fashion_mnist": lambda root: write_mnist(root, "FashionMNIST"),
}
CIFAR = ("cifar10", "cifar100")


def dataset_of(config: Path) -> str:
    return yaml.safe_load(config.read_text())["data"]["init_args"]["dataset"]


def pretrain_tiny(run_ltu, root: Path, dataset: str, stem: str) -> list[str]:
    """Train a tiny original for ``stem``'s dataset in ``root``; return the extra data flags."""
    extra = []
    calm = []
    if dataset in FAKE:
        FAKE[dataset](root / "data")
        extra = ["--data.holdout", "0.2"]
        # two steps of the CIFAR recipe's lr 0.1 at batch 8 on random images give a diverged
        # original (train loss ~17) that no unlearning step survives; a real original is trained
        calm = ["--model.init_args.optimizer.init_args.lr", "0.001"]
    run_ltu(["fit", "--config", CONFIGS / "pretrain" / f"{stem}.yaml", *TINY, *extra, *calm])
    return extra


@pytest.mark.parametrize("config", LTU_CONFIGS, ids=lambda p: p.stem)
def test_every_ltu_config_runs_from_its_original(config, in_tmp, run_ltu, skip_md5):
    stem = config.stem.removeprefix("ltu_")
    dataset = dataset_of(config)
    extra = pretrain_tiny(run_ltu, in_tmp, dataset, stem)
    # A ResNet trained for two steps has BatchNorm running statistics that do not describe its
    # activations yet, so the default eval-mode BN (frozen statistics) blows the fake-data
    # forward up; batch statistics keep this smoke run of the config finite.
    bn = ["--model.init_args.bn_mode", "train"] if dataset in FAKE else []
    run_ltu(["fit", "--config", config, *TINY, *extra, *bn])
    root = in_tmp / yaml.safe_load(config.read_text())["trainer"]["default_root_dir"]
    assert (root / "checkpoints" / "last.ckpt").is_file()


def test_lur_cifar_config_runs_on_cifar_files(in_tmp, run_ltu, skip_md5):
    """LUR's CIFAR config (in no benchmark config yet, where the other baselines' CIFAR configs
    run) through its dataset fragment on small fake CIFAR-10 files, with the fragment's
    bf16-mixed precision."""
    write_cifar10(in_tmp / "data")
    # 16x16 images and one batch a stage, as the CIFAR benchmark test runs its rows
    small = [
        "--data.holdout",
        "0.2",
        "--data.image_size",
        "16",
        "--trainer.limit_train_batches",
        "1",
    ]
    calm = ["--model.init_args.optimizer.init_args.lr", "0.001"]  # see pretrain_tiny
    run_ltu(
        ["fit", "--config", CONFIGS / "pretrain" / "cifar10_resnet18.yaml", *TINY, *small, *calm]
    )
    method = ["--config", CONFIGS / "unlearn" / "lur_cifar_resnet18.yaml"]
    dataset = ["--config", CONFIGS / "unlearn" / "datasets" / "cifar10_resnet18.yaml"]
    run_ltu(["fit", *method, *dataset, *TINY, *small])
    assert (in_tmp / "runs/cifar10_resnet18/lur/checkpoints/best.ckpt").is_file()


def test_ablation_fragments_compose_with_the_ltu_config(in_tmp, run_ltu, capsys):
    """Each fragment switches its component in the resolved config; ``no_meta`` also runs."""
    base = CONFIGS / "unlearn" / "ltu_fmnist5k.yaml"
    assert ABLATIONS
    for fragment in ABLATIONS:
        run_ltu(["fit", "--config", base, "--config", fragment, "--print_config"])
        resolved = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        for key, value in yaml.safe_load(fragment.read_text())["model"]["init_args"].items():
            assert resolved[key] == value, (fragment.stem, key)
    pretrain_tiny(run_ltu, in_tmp, "fmnist5k", "fmnist5k")
    out = in_tmp / "runs" / "ablation"
    no_meta = CONFIGS / "unlearn" / "ablations" / "no_meta.yaml"
    run_ltu(
        ["fit", "--config", base, "--config", no_meta, *TINY, "--trainer.default_root_dir", out]
    )
    assert (out / "checkpoints" / "last.ckpt").is_file()


def _first_of_its_kind(methods: list[dict], i: int) -> bool:
    """Whether row ``i`` is the first of its method or the first of its access."""
    method, _, access = methods[i]["key"].partition(":")
    earlier = [m["key"].partition(":") for m in methods[:i]]
    return method not in {m for m, _, _ in earlier} or access not in {a for _, _, a in earlier}


def _layers(bench: Path) -> list[Path]:
    """The configs ``ltu benchmark`` is given for ``bench``: a variant comes after its base."""
    if bench.parent.name == "benchmark":
        return [bench]
    return [bench.parent.with_suffix(".yaml"), bench]


@pytest.mark.parametrize(
    "bench", BENCHMARKS + VARIANTS, ids=lambda p: "/".join(p.relative_to(CONFIGS / "benchmark").with_suffix("").parts)
)  # fmt: skip
def test_every_benchmark_config_runs_and_writes_the_contract(bench, in_tmp, run_ltu, skip_md5):
    layers = _layers(bench)
    spec = {}
    for layer in layers:  # a later config's top-level keys replace the earlier's
        spec |= yaml.safe_load(layer.read_text())
    dataset = dataset_of(REPO / spec["original"])
    # TINY's flags as config keys (the data ones under init_args)
    flags = [a for a in TINY if a not in ("--data.batch_size", "--data.num_workers", "8", "0")]
    overrides = {
        k.removeprefix("--"): yaml.safe_load(v)
        for k, v in zip(flags[::2], flags[1::2], strict=True)
    }
    overrides |= {"data.init_args.batch_size": 8, "data.init_args.num_workers": 0}
    if dataset in FAKE:
        FAKE[dataset](in_tmp / "data")
        overrides["data.init_args.holdout"] = 0.2
    if dataset in CIFAR:
        # every row trains a ResNet-18: 16x16 images (2x2 at its last block) and one batch a
        # stage keep the CIFAR benchmarks' dozen stages within CI's budget
        overrides |= {"data.init_args.image_size": 16, "trainer.limit_train_batches": 1}
    # stage configs, and the config fragments a method composes after its stage config
    rows = [
        m["config"] if isinstance(m["config"], list) else [m["config"]] for m in spec["methods"]
    ]
    stages = [spec["original"], spec["retrain"], *(path for row in rows for path in row)]
    for path in stages:
        (in_tmp / path).parent.mkdir(parents=True, exist_ok=True)
        (in_tmp / path).write_text((REPO / path).read_text())
    out = in_tmp / "bench"
    # The demo benchmark, the smoke runs and the CIFAR benchmarks (every baseline through its
    # dataset fragment) run every method once and every access once (the demo's first row of
    # each method and of each access: the other rows compose the same configs); the others run
    # their first (each method's stage config is exercised on its own by the unlearning-config
    # tests) to keep CI short.
    every = bench.stem in ("fmnist5k", "digits", "mnist5k") or dataset in CIFAR
    methods = [m for i, m in enumerate(spec["methods"]) if _first_of_its_kind(spec["methods"], i)]
    methods = methods if every else spec["methods"][:1]
    only = ["--only", json.dumps([m["key"] for m in methods])]
    configs = [a for layer in layers for a in ("--config", layer)]
    run_ltu(["benchmark", *configs, "--out", out, "--seeds", "1", *only,
             "--overrides", json.dumps({**spec.get("overrides", {}), **overrides})])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    # --seeds 1 runs the first report seed (seed 0 when the config names no seed roles)
    assert results["benchmark"] == spec["name"]
    assert results["seeds"] == spec.get("report_seeds", [0])[:1]
    keys = {"original", "retrain", *(m["key"] for m in methods)}
    assert set(results["methods"]) == keys
    for key, entry in results["methods"].items():
        for metric in ("UA", "RA", "TA", "MIA", "avg_gap", "time_s", "rte"):
            assert set(entry[metric]) == {"mean", "std"}, (key, metric)
        assert entry["access"] == (key.split(":")[1] if ":" in key else None)
        # seeds whose kept epoch did not beat the starting model (0 for the reference models)
        assert entry["no_gain"] in range(len(results["seeds"]) + 1)
        if ":" not in key:
            assert entry["no_gain"] == 0
    assert results["methods"]["retrain"]["avg_gap"]["mean"] == 0.0  # against itself
    # images read, measured from the roles each fit's data module built (test split and
    # validation half left out): full access reads D_f and D_r, LTU on top of the retain subset
    # that a partial-access baseline reads, the auditor half of the holdout; with the same
    # access (partial+holdout) every baseline reads what LTU reads
    seed_root = out / f"seed_{results['seeds'][0]}"
    sizes = json.loads((seed_root / "split_manifest.json").read_text())["sizes"]
    read = {k: e["images_read"]["mean"] for k, e in results["methods"].items()}
    assert read["retrain"] == sizes["remaining"]
    if "ft:full" in read:
        assert read["ft:full"] == sizes["forget"] + sizes["remaining"]
    if "ltu:partial+holdout" in read and "ft:partial" in read:
        assert read["ltu:partial+holdout"] == read["ft:partial"] + sizes["holdout_audit"]
    matched = [f"{m}:partial+holdout" for m in ("ft", "rl", "neggrad_plus", "salun", "scrub")]
    for key in [k for k in matched if k in read]:
        assert read[key] == read["ltu:partial+holdout"], key
        assert read[key] == sizes["forget"] + sizes["retain_subset"] + sizes["holdout_audit"]
    for name in ("results.csv", "results.md", "avg_gap_vs_time.png", "metrics_bars.png"):
        assert (out / name).is_file()
    # Class-wise benchmarks report the remaining and forgotten classes apart (docs/protocol.md).
    class_wise = "data.init_args.forget_classes" in spec.get("overrides", {})
    md = (out / "results.md").read_text()
    assert "| collapsed | failed | no gain |" in md
    with (out / "results.csv").open() as f:
        table = {row["method"]: row for row in csv.DictReader(f)}
    assert set(table) == keys
    for key, row in table.items():
        assert float(row["avg_gap_mean"]) == pytest.approx(
            results["methods"][key]["avg_gap"]["mean"]
        )
        assert int(row["no_gain"]) == results["methods"][key]["no_gain"]
    assert ("| method | access | TA remaining classes | TA forgotten classes |" in md) == class_wise
    if class_wise:
        assert all("TA_forgotten_classes" in e for e in results["methods"].values())


def test_benchmark_refuses_to_clobber_results_without_overwrite(in_tmp, run_ltu):
    from conftest import LTURunError

    out = in_tmp / "bench"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(LTURunError) as err:
        run_ltu(["benchmark", "--config", CONFIGS / "benchmark" / "digits.yaml", "--out", out])
    assert err.value.code == 2 and "--overwrite" in err.value.stderr
    assert (out / "results.json").read_text() == "{}"


def test_overwrite_is_a_flag_with_an_optional_value():
    from ltu_lightning.benchmark.cli import build_parser

    config = ["--config", str(CONFIGS / "benchmark" / "digits.yaml")]
    parse = build_parser().parse_args
    assert parse(config).overwrite is False
    assert parse([*config, "--overwrite"]).overwrite is True  # what the refusal tells users
    assert parse([*config, "--overwrite", "false"]).overwrite is False


@pytest.mark.parametrize(
    "only",
    ["ltu:partial+holdout,nope:full", '["ltu:partial+holdout", "nope:full"]'],
    ids=["commas", "json"],
)
def test_only_takes_keys_by_commas_or_json_and_names_unknown_ones(
    only, in_tmp, run_ltu, monkeypatch
):
    from conftest import LTURunError

    monkeypatch.chdir(REPO)  # the benchmark's stage configs are relative to the checkout
    bench = CONFIGS / "benchmark" / "digits.yaml"
    with pytest.raises(LTURunError) as err:  # refused before any stage trains
        run_ltu(["benchmark", "--config", bench, "--out", in_tmp / "b", "--only", only])
    assert err.value.code == 2
    assert "unknown methods ['nope:full']" in err.value.stderr
    assert not (in_tmp / "b").exists()


def test_method_overrides_pin_one_row_before_the_tuned_values_and_name_unknown_rows(
    tmp_path, monkeypatch
):
    from ltu_lightning.benchmark.cli import _load_and_select, build_parser
    from ltu_lightning.errors import LTUError

    monkeypatch.chdir(REPO)  # the benchmark's stage configs are relative to the checkout
    base = ["--config", str(CONFIGS / "benchmark" / "fmnist5k.yaml")]
    classwise = ["--config", str(CONFIGS / "benchmark" / "fmnist5k" / "classwise.yaml")]
    tuned = tmp_path / "chosen.yaml"
    lr = "model.init_args.optimizer.init_args.lr"
    tuned.write_text(
        yaml.safe_dump({"ltu:partial+holdout": {lr: 0.5, "model.init_args.forget_loss": "mi"}})
    )
    plain = {m.key: m.overrides for m in _load_and_select(build_parser().parse_args(base)).methods}
    cfg = build_parser().parse_args([*base, *classwise])
    rows = {m.key: m.overrides for m in _load_and_select(cfg).methods}
    assert rows.keys() == plain.keys()  # the variant keeps every row of its base
    assert rows.pop("ltu:partial+holdout") == {
        **plain.pop("ltu:partial+holdout"),
        "model.init_args.forget_loss": "random_label",
    }
    assert rows == plain  # and pins nothing else
    cfg = build_parser().parse_args([*base, *classwise, "--tuned", str(tuned)])
    ltu = next(m for m in _load_and_select(cfg).methods if m.key == "ltu:partial+holdout")
    assert ltu.overrides[lr] == 0.5 and ltu.overrides["model.init_args.forget_loss"] == "mi"
    cfg = build_parser().parse_args([*base, "--method_overrides", '{"nope:full": {"a": 1}}'])
    with pytest.raises(LTUError, match=r"--method_overrides names methods \['nope:full'\]"):
        _load_and_select(cfg)


def test_classwise_retrain_does_not_know_the_forgotten_class(in_tmp, run_ltu):
    """Sanity check of the protocol: a model retrained without class 0 scores UA ~ 100."""
    flags = ["--data.forget_classes", "[0]", "--data.forget_fraction", "null",
             "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "10"]  # fmt: skip
    run_ltu(["fit", "--config", CONFIGS / "retrain" / "digits.yaml", *flags])
    out = in_tmp / "retrain.json"
    run_ltu(["evaluate", "--config", CONFIGS / "retrain" / "digits.yaml", *flags[:4],
             "--ckpt_path", in_tmp / "runs/digits/retrain/checkpoints/last.ckpt", "--output", out])  # fmt: skip
    metrics = json.loads(out.read_text())
    assert metrics["UA"] > 95.0
    assert metrics["TA_forgotten_classes"] < 5.0 and metrics["TA_remaining_classes"] > 85.0


def test_grid_points_is_the_full_factorial():
    points = grid_points({"--a": [1, 2], "--b": ["x", "y", "z"]})
    assert len(points) == 6 and {"--a": 2, "--b": "z"} in points
    assert grid_points({}) == [{}]


@pytest.mark.parametrize("grid", sorted(GRIDS.glob("*.yaml")), ids=lambda p: p.stem)
def test_tuning_grids_name_benchmark_methods_and_valid_flags(grid, run_ltu, capsys):
    """Each grid names methods of a benchmark config, and every flag value is accepted by
    that method's stage config (checked by LightningCLI's own parser via --print_config)."""
    methods = {
        m["key"]: m
        for bench in [*BENCHMARKS, *sorted((REPO / "experiments" / "benchmarks").glob("*.yaml"))]
        for m in yaml.safe_load(bench.read_text())["methods"]
    }
    for key, flags in yaml.safe_load(grid.read_text()).items():
        assert key in methods, (grid.stem, key)
        point = [str(x) for flag, values in flags.items() for x in (flag, values[0])]
        config = methods[key]["config"]
        configs = [
            a
            for c in ([config] if isinstance(config, str) else config)
            for a in ("--config", REPO / c)
        ]
        run_ltu(["fit", *configs, *point, "--print_config"])
        resolved = yaml.safe_load(capsys.readouterr().out)
        for flag, values in flags.items():
            node = resolved
            for part in flag.removeprefix("--").split("."):
                node = node[part]
            assert _resolves_to(node, values[0]), (grid.stem, key, flag)


def _resolves_to(resolved: object, given: object) -> bool:
    """A grid value against LightningCLI's resolved config: a JSON string (a whole optimizer, a
    callback list) is compared by its fields; the resolved side also lists the defaults."""
    if isinstance(given, str) and given[:1] in "[{":
        given = yaml.safe_load(given)
    if isinstance(given, dict):
        return isinstance(resolved, dict) and all(
            k in resolved and _resolves_to(resolved[k], v) for k, v in given.items()
        )
    if isinstance(given, list):
        return (
            isinstance(resolved, list)
            and len(resolved) == len(given)
            and all(_resolves_to(r, g) for r, g in zip(resolved, given, strict=True))
        )
    return resolved == given


def test_full_fashion_mnist_rows_run_the_values_searched_on_fmnist5k():
    """The second report benchmark tests fmnist5k's chosen settings on data they were not chosen
    on: the same rows, each with fmnist5k's overrides, on the full Fashion-MNIST."""
    small = yaml.safe_load((CONFIGS / "benchmark" / "fmnist5k.yaml").read_text())["methods"]
    full = yaml.safe_load((CONFIGS / "benchmark" / "fashion_mnist.yaml").read_text())["methods"]
    assert [row["key"] for row in full] == [row["key"] for row in small]
    for mine, theirs in zip(full, small, strict=True):
        configs = [theirs["config"]] if isinstance(theirs["config"], str) else theirs["config"]
        expected = [c for c in configs if not c.endswith("datasets/fmnist5k.yaml")]
        assert mine["config"] == [*expected, "configs/unlearn/datasets/fashion_mnist.yaml"]
        # the dataset overlay sets access: partial, so a row of another access names its own
        access = mine["key"].split(":")[1]
        assert mine["overrides"].get("data.init_args.access", "partial") == access
        assert {k: v for k, v in mine["overrides"].items() if k != "data.init_args.access"} == {
            k: v for k, v in theirs.get("overrides", {}).items() if k != "data.init_args.access"
        }
