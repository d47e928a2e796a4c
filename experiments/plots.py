"""The studies' figures (matplotlib, Agg backend): curves from metrics.jsonl and per-stage ratios."""

import contextlib
import os
import textwrap

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from resnet_jax.metrics import read_metrics  # noqa: E402


# docs/results/ commits the studies' figures, so each stays small.
MAX_PNG_BYTES = 300_000


def save(fig, path: str, dpi: int = 110) -> str:
  """Saves `fig` as a PNG under MAX_PNG_BYTES, lowering the resolution if it must; closes it.
  Atomically, as every file of a results folder: a full disk leaves the old figure whole."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    while True:
      fig.savefig(tmp, dpi=dpi, format='png')
      if os.path.getsize(tmp) <= MAX_PNG_BYTES or dpi <= 40:
        break
      dpi = int(dpi * 0.85)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise OSError(e.errno, e.strerror, path) from None
  finally:
    plt.close(fig)
  return os.path.basename(path)


def read_curves(workdir: str) -> dict:
  """{'train/loss': [(step, value)], 'train/error': ..., 'eval/error': ...} from metrics.jsonl."""
  out = {'train/loss': [], 'train/error': [], 'eval/error': [], 'eval/loss': []}
  for r in read_metrics(workdir):
    if 'train/loss' in r:
      out['train/loss'].append((r['step'], r['train/loss']))
      out['train/error'].append((r['step'], 100 * (1 - r['train/accuracy'])))
    if 'eval/accuracy' in r:
      out['eval/error'].append((r['step'], 100 * (1 - r['eval/accuracy'])))
      out['eval/loss'].append((r['step'], r['eval/loss']))
  return out


def seed_curve(workdirs: list[str], metric: str):
  """(steps, mean, lowest, highest) across runs (seeds) of one metric, at each step that every
  run logged; None if no run logged it."""
  per_run = [dict(read_curves(w)[metric]) for w in workdirs]
  per_run = [c for c in per_run if c]
  if not per_run:
    return None
  steps = sorted(set.intersection(*(set(c) for c in per_run)))
  values = np.array([[c[s] for s in steps] for c in per_run])
  return steps, values.mean(0), values.min(0), values.max(0)


def curves(rows: list[dict], *, group: str, panel: str, metrics, ylabel: str, title: str,
           path: str, panel_order=None, panel_label=str) -> str:
  """One subplot per value of `panel`, one colour per value of `group`, one line style per
  metric (metrics = [(metric, linestyle, label suffix)]): the mean across seeds, and a band from
  the lowest to the highest seed."""
  ok = [r for r in rows if r['status'] == 'ok']
  panels = panel_order or sorted({r[panel] for r in ok}, key=str)
  groups = list(dict.fromkeys(r[group] for r in ok))
  # Readable at README width (about 900 px at this dpi) for up to two panels.
  fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(min(9.0, 4.5 * max(1, len(panels))),
                                                           3.8), squeeze=False, sharey=True)
  colours = plt.get_cmap('tab10')
  for ax, value in zip(axes[0], panels):
    for i, g in enumerate(groups):
      workdirs = [r['workdir'] for r in ok if r[panel] == value and r[group] == g]
      for metric, style, suffix in metrics:
        curve = seed_curve(workdirs, metric)
        if curve:
          steps, mean, low, high = curve
          n = len(workdirs)
          ax.plot(steps, mean, linestyle=style, color=colours(i % 10), markersize=3,
                  marker='o' if len(steps) < 8 else None,
                  label=f'{g}{suffix}' + (f' (mean of {n})' if n > 1 else ''))
          if n > 1:
            ax.fill_between(steps, low, high, color=colours(i % 10), alpha=0.15, linewidth=0)
    ax.set_title(panel_label(value), fontsize=9)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel(ylabel)
  fig.suptitle(textwrap.fill(title, 100), fontsize=8)
  fig.tight_layout()
  return save(fig, path, dpi=100)


def curves_by_group(rows, *, group: str, panel: str, title: str, out_dir: str, series) -> list[str]:
  """One figure per (metric, y label, file name) of `series`: see `curves`."""
  return [curves(rows, group=group, panel=panel, metrics=[(metric, '-', '')], ylabel=ylabel,
                 title=title, path=os.path.join(out_dir, filename),
                 panel_label=lambda v: f'{panel} {v}')
          for metric, ylabel, filename in series]


def stage_ratios(records: list[dict], arm: str, arms: list, kind: str, ylabel: str, title: str,
                 path: str, stages=(1, 2, 3)) -> str:
  """One panel per stage: the per-stage ratio `kind`_s (probes.stage_ratios) of each arm against
  depth, the geometric mean over seeds with a band from the lowest to the highest seed; records
  are init measurements, `arm` their key that names the arm (e.g. 'placement')."""
  fig, axes = plt.subplots(1, len(stages), figsize=(9.0, 3.4), squeeze=False, sharey=True)
  colours = plt.get_cmap('tab10')
  ticks = sorted({r['depth'] for r in records})
  for ax, s in zip(axes[0], stages):
    for i, name in enumerate(arms):
      depths = sorted({r['depth'] for r in records if r[arm] == name and f'{kind}_{s}' in r})
      values = [[r[f'{kind}_{s}'] for r in records if r[arm] == name and r['depth'] == d]
                for d in depths]
      geo = [float(np.exp(np.mean(np.log(vs)))) for vs in values]
      ax.plot(depths, geo, marker='o', markersize=3, color=colours(i), label=name)
      ax.fill_between(depths, [min(v) for v in values], [max(v) for v in values],
                      color=colours(i), alpha=0.15, linewidth=0)
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xticks(ticks, [str(d) for d in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    # Labels at 1, 2 and 5 times the powers of ten only: labelled minor ticks overlap.
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axhline(1.0, color='black', linewidth=0.6)
    ax.set_title(f'stage {s}', fontsize=9)
    ax.set_xlabel('depth')
    ax.grid(alpha=0.3, which='both')
  axes[0][0].set_ylabel(ylabel)
  axes[0][0].legend(fontsize=7)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  return save(fig, path, dpi=100)
