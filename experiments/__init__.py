"""The papers' studies as one-command, resumable sweeps through resnet_jax.train.loop.

Each study is `python -m experiments.<study> --budget {smoke,cpu,paper} --results_dir DIR`; it
writes results.md, results.csv, PNG plots and a results.json manifest into DIR, and
`python -m experiments.report --results_dir DIR ...` copies them into docs/results.md.
"""
