"""Ray Tune sweeps over fr config keys: sweep files, search spaces, the per-trial TorchTrainer, results.

`fr.sweep.spec` reads and checks a sweep file, `fr.sweep.space` turns its `space` into Ray Tune domains,
`fr.sweep.trial` runs one trial (Ray Train workers around fr's own trainer), `fr.sweep.report` is the
listener that reports to Ray, `fr.sweep.results` writes the tables and plot, `fr.sweep.runner` ties them up.
"""
