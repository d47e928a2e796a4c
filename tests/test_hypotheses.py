"""The studies' verdicts: computed from paired seeds by an exact sign-flip test, three outcomes."""

import math

import pytest

from experiments import hypotheses

CLAIM = hypotheses.Hypothesis('deeper_plain_worse', 'plain nets degrade (2015 Fig. 6)',
                              'train error difference, points', 'greater')


def test_five_consistent_seeds_show_the_effect_at_the_smallest_p_the_test_has():
  record = hypotheses.verdict(CLAIM, [0.5, 1.0, 2.0, 3.0, 4.0])
  assert record['verdict'] == 'shown' and record['n_seeds'] == 5
  assert record['ci_or_p']['p'] == pytest.approx(1 / 32)  # Only the observed signs reach it.
  assert record['effect'] == pytest.approx(2.1)
  low, high = record['ci_or_p']['ci95']
  assert 0 < low < 2.1 < high


def test_one_seed_against_the_claim_is_not_shown():
  record = hypotheses.verdict(CLAIM, [1.0, 2.0, 3.0, 4.0, -5.0])
  assert record['verdict'] == 'not shown'
  assert record['ci_or_p']['p'] == pytest.approx(10 / 32)  # Sign patterns with a sum >= 5.


def test_the_direction_is_the_claims():
  less = hypotheses.Hypothesis('x', 'c', 'e', 'less')
  assert hypotheses.verdict(less, [-1.0, -2.0, -3.0, -4.0, -5.0])['verdict'] == 'shown'
  assert hypotheses.verdict(CLAIM, [-1.0, -2.0, -3.0, -4.0, -5.0])['verdict'] == 'not shown'


@pytest.mark.parametrize('differences, why', [
    ([1.0, 2.0, 3.0, 4.0], 'the test cannot go below p = 0.0625 > 0.05 with 4; 5 or more'),
    ([1.0, 2.0, 3.0, 4.0, 5.0, math.nan], '1 of 6 paired seeds did not finish'),
])
def test_too_few_seeds_or_a_missing_run_is_inconclusive_and_says_why(differences, why):
  record = hypotheses.verdict(CLAIM, differences)
  assert record['verdict'] == 'inconclusive'
  assert why in record['why']


def test_the_record_has_the_fields_results_json_promises():
  record = hypotheses.verdict(CLAIM, [1.0, 2.0, 3.0, 4.0, 5.0])
  assert {'claim', 'estimand', 'test', 'n_seeds', 'effect', 'ci_or_p', 'verdict'} <= set(record)
  assert record['verdict'] in hypotheses.VERDICTS
  assert 'shown' in hypotheses.markdown([record]) and 'p = 0.0312' in hypotheses.markdown([record])


def test_a_direction_that_is_no_direction_is_refused():
  with pytest.raises(ValueError, match='greater or less'):
    hypotheses.Hypothesis('x', 'c', 'e', 'up')
