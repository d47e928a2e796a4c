"""A study's claims as tests, and verdicts computed from paired seeds.

Each study lists the papers' claims it tests as `Hypothesis` records: the claim (cited), the
estimand (a per-seed difference between paired arms: the same seed gives the same init where the
shapes allow and the same data order), and the sign the claim predicts for it. `verdict` turns
the per-seed differences into one of three outcomes:

  shown         the one-sided test in the predicted direction has p <= ALPHA;
  not shown     it does not, and the design could have reached ALPHA;
  inconclusive  too few paired seeds for the test to reach ALPHA at all (an exact sign-flip test
                of n seeds cannot go below 1 / 2**n), or a run is missing.

The test is an exact paired sign-flip permutation test of the mean difference (no assumption
about the distribution of the differences); the effect is reported with a 95% t interval of the
mean. A verdict says what these runs show at this budget, nothing about the paper's full setting.
"""

import dataclasses
import math

import numpy as np
from scipy import stats

ALPHA = 0.05
TEST = ('exact paired sign-flip permutation test of the mean difference, one-sided in the '
        'predicted direction; 95% t interval of the mean')
VERDICTS = ('shown', 'not shown', 'inconclusive')


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """claim: the paper's words or their gist, with the paper and the figure or section.
  estimand: what one seed's difference is, and its unit. direction: 'greater' or 'less', the
  sign of the mean difference that the claim predicts. replicate: what one paired difference
  belongs to, 'seed' unless the study pairs something else (the lesion study pairs unit
  positions of the nets of one seed)."""
  name: str
  claim: str
  estimand: str
  direction: str
  replicate: str = 'seed'

  def __post_init__(self):
    if self.direction not in ('greater', 'less'):
      raise ValueError(f'direction={self.direction!r} must be greater or less')


def min_p(n: int) -> float:
  """The smallest one-sided p an exact sign-flip test of n paired seeds can give."""
  return 2.0 ** -n


def verdict(hypothesis: Hypothesis, differences, expected: int | None = None,
            missing_why: str = 'did not finish') -> dict:
  """The verdict of `hypothesis` on the per-seed `differences` (NaN: a run that is missing or
  did not finish, or a seed the study excludes). expected: the number of seeds the design has
  (default: len(differences)); missing_why: why a seed's difference is NaN, for `why`.

  Returns the results.json record: name, claim, estimand, test, n_seeds, effect (the mean
  difference), ci_or_p ({'p', 'ci95'}), verdict and, where the verdict is inconclusive, why.
  """
  d = np.asarray(differences, np.float64)
  finite = d[np.isfinite(d)]
  n = len(finite)
  record = {'name': hypothesis.name, 'claim': hypothesis.claim, 'estimand': hypothesis.estimand,
            'direction': hypothesis.direction, 'test': TEST, 'n_seeds': n,
            **({'replicate': hypothesis.replicate} if hypothesis.replicate != 'seed' else {}),
            'effect': float(finite.mean()) if n else None,
            'differences': [float(x) for x in d]}
  missing = (expected or len(d)) - n
  p = ci = None
  if n >= 2:
    p = float(stats.permutation_test(
        (finite,), np.mean, permutation_type='samples', alternative=hypothesis.direction,
        n_resamples=math.inf).pvalue)
    if np.ptp(finite) > 0:
      interval = stats.ttest_1samp(finite, 0.0).confidence_interval(0.95)
      ci = [float(interval.low), float(interval.high)]
    else:
      ci = [float(finite[0])] * 2
  record['ci_or_p'] = {'p': p, 'ci95': ci}
  if missing:
    record['verdict'] = 'inconclusive'
    record['why'] = (f'{missing} of {expected or len(d)} paired {hypothesis.replicate}s '
                     f'{missing_why}')
  elif n < 1 or min_p(n) > ALPHA:
    record['verdict'] = 'inconclusive'
    record['why'] = (f'the test cannot go below p = {min_p(n):.3g} > {ALPHA} with {n}; '
                     f'{math.ceil(math.log2(1 / ALPHA))} or more seeds can')
  else:
    record['verdict'] = 'shown' if p <= ALPHA else 'not shown'
  return record


def describe(record: dict) -> str:
  """One line: the verdict and its numbers, as results.md prints it."""
  p, ci = record['ci_or_p']['p'], record['ci_or_p']['ci95']
  numbers = [f'effect {record["effect"]:+.3g}' if record['effect'] is not None else 'no effect',
             f'95% CI [{ci[0]:+.3g}, {ci[1]:+.3g}]' if ci else None,
             f'p = {p:.3g} ({record["direction"]})' if p is not None else None,
             f'{record["n_seeds"]} paired {record.get("replicate", "seed")}'
             f'{"s" if record["n_seeds"] != 1 else ""}']
  why = f'; {record["why"]}' if record.get('why') else ''
  return f'**{record["verdict"]}** ({", ".join(x for x in numbers if x)}{why})'


def markdown(records: list[dict]) -> str:
  """The hypotheses table of results.md: claim, estimand, verdict with its numbers."""
  lines = ['| claim | estimand | verdict |', '|---|---|---|']
  for r in records:
    cells = (r['claim'], r['estimand'], describe(r))
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines)
