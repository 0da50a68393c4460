"""The typed pair-pruning contract: settings validation and resolution, records, PairStats arithmetic."""

import pytest

from simwnw_hf.pruning import (PairPlan, PairStats, SimWnWSettings, TokenPruningSettings, pruning_record,
                               reported_ratios, settings_from_record)
from simwnw_hf.train.config import TrainConfig


@pytest.mark.parametrize("make, message", [
    (lambda: SimWnWSettings(block_size=0), "block_size must be a positive integer"),
    (lambda: SimWnWSettings(search_window=2.5), "search_window must be a positive integer"),
    (lambda: SimWnWSettings(psnr_threshold=float("nan")), "psnr_threshold must be a finite"),
    (lambda: SimWnWSettings(max_rings=-1), "max_rings"),
    (lambda: SimWnWSettings(wax_decision="pooled"), "unknown waxing decision 'pooled'; choose one of channel, spatial"),
    (lambda: SimWnWSettings(wax_peak="global"), "unknown waxing peak 'global'; choose one of channel, map"),
    (lambda: TrainConfig(simwnw=True, wax_decision="all"), "unknown waxing decision"),
    (lambda: TokenPruningSettings("tome"), "--token-pruning must be one of simwnw, simprune, evit"),
    (lambda: TokenPruningSettings("evit", keep_rate=1.5), "keep_rate"),
    (lambda: TokenPruningSettings("simprune", prune_layers=()), "prune_layers"),
    (lambda: TokenPruningSettings("simwnw", token_groups=0), "token_groups"),
    (lambda: TokenPruningSettings("simwnw", token_groups="four"), "token_groups must be 'auto' or a positive"),
    (lambda: TokenPruningSettings("simwnw", token_groups=True), "token_groups must be 'auto' or a positive"),
    (lambda: TokenPruningSettings("simwnw", token_groups=None), "token_groups must be 'auto' or a positive"),
    (lambda: TokenPruningSettings("simwnw", token_groups=2.5), "token_groups must be 'auto' or a positive"),
    (lambda: TokenPruningSettings("simwnw", group_call_tokens=-1.0), "group_call_tokens must be >= 0"),
    (lambda: TrainConfig(token_pruning="simwnw", token_groups="0"), "--token-groups must be 'auto' or a positive"),
    (lambda: TokenPruningSettings("simwnw", search_method="grid"), "search_method"),
])
def test_bad_settings_fail_with_one_line(make, message):
    with pytest.raises(ValueError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_resolution_fills_the_values_a_run_uses():
    assert SimWnWSettings().resolve(32) == SimWnWSettings(block_size=5, search_window=10)
    assert SimWnWSettings().resolve(224) == SimWnWSettings(block_size=30, search_window=60)
    assert SimWnWSettings(block_size=4, search_window=12).resolve(224) == SimWnWSettings(4, 20.0, 12)
    assert TokenPruningSettings("simwnw").resolve(16).search_window == 32
    assert TokenPruningSettings("evit").resolve(16).search_window is None  # not used by EViT
    cfg = TrainConfig(simwnw=True, image_size=32, max_rings=1)
    assert cfg.pruning == SimWnWSettings(block_size=5, search_window=10, max_rings=1)
    assert TrainConfig(token_pruning="simprune", prune_layers=(3, 1)).pruning.prune_layers == (1, 3)
    assert TrainConfig().pruning is None and TrainConfig().pruning_method is None
    assert TrainConfig(token_pruning="simwnw").pruning.token_groups == "auto"
    assert TrainConfig(token_pruning="simwnw", token_groups="3").pruning.token_groups == 3
    spatial = TrainConfig(simwnw=True, wax_decision="spatial", wax_peak="map", simwnw_executor="auto").pruning
    assert (spatial.wax_decision, spatial.wax_peak, spatial.executor) == ("spatial", "map", "auto")


def test_waxing_choices_are_the_mechanism_choices():
    from simwnw_hf.pruning import settings
    from simwnw_hf.simwnw import masks

    assert settings.WAX_DECISIONS == masks.WAX_DECISIONS and settings.WAX_PEAKS == masks.WAX_PEAKS


@pytest.mark.parametrize("settings, ratios", [
    (SimWnWSettings().resolve(32), ("removal_ratio",)),
    (TokenPruningSettings("simwnw").resolve(8), ("removal_ratio", "kept_token_ratio")),
    (TokenPruningSettings("simwnw", token_groups=3, group_call_tokens=5).resolve(8),
     ("removal_ratio", "kept_token_ratio")),
    (TokenPruningSettings("simprune"), ("kept_token_ratio",)),
    (TokenPruningSettings("evit"), ("kept_token_ratio",)),
])
def test_records_round_trip_and_name_their_ratios(settings, ratios):
    record = pruning_record(settings)
    assert record["method"] == settings.method and settings_from_record(record) == settings
    assert reported_ratios(record) == ratios == settings.ratios
    assert pruning_record(None) == {"method": None} and reported_ratios({"method": None}) == ()


def test_pair_stats_add_and_average_by_pairs():
    a = PairStats(pairs=2, dense_flops=10, pruned_flops=6, overhead_flops=1, removed_fraction_sum=0.8,
                  kept_token_fraction_sum=1.2)
    b = PairStats(pairs=6, dense_flops=30, pruned_flops=30, overhead_flops=0, removed_fraction_sum=0.0,
                  kept_token_fraction_sum=6.0)
    total = a + b
    assert total == PairStats.sum([a, b]) == PairStats.sum([PairStats(), a, b])
    assert total.pairs == 8 and total.removal_ratio == pytest.approx(0.1)            # 0.8 / 8
    assert total.kept_token_ratio == pytest.approx(7.2 / 8)
    assert total.flops_ratio == pytest.approx(37 / 40) and total.pruned
    assert PairStats().removal_ratio == 0.0 and PairStats().flops_ratio == 1.0 and not PairStats().pruned
    assert total.as_dict()["removal_ratio"] == pytest.approx(0.1)
    plan = PairPlan("simwnw", SimWnWSettings(), match=object(), overhead_flops=3.0, pairs=2)
    assert plan.stats == PairStats(overhead_flops=3.0) and not plan.in_network
